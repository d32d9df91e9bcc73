"""The TensorMask Keras model: backbone, FPN decoder and TensorMask head."""

from typing import Any, Mapping

import tensorflow as tf
import tf_keras

from tensormask_tf.modeling.heads import tensormask_head


@tf_keras.utils.register_keras_serializable(package="TensorMask")
class TensorMaskModel(tf_keras.Model):
  """Backbone + decoder (FPN, P{min_level}..P{max_level}) + TensorMask head.

  `call(images)` returns the head's per-level class logits, box deltas and
  mask features; masks come from `head.mask_logits` at the windows that need
  them (training: positives; inference: kept detections).
  """

  def __init__(self, backbone: tf_keras.Model, decoder: tf_keras.Model,
               head: tensormask_head.TensorMaskHead, **kwargs):
    super().__init__(**kwargs)
    self._config_dict = {"backbone": backbone, "decoder": decoder,
                         "head": head}
    self.backbone = backbone
    self.decoder = decoder
    self.head = head

  def call(self, images: tf.Tensor, training: bool | None = None
           ) -> dict[str, dict[str, tf.Tensor]]:
    """Runs the network.

    Args:
      images: [N, H, W, 3] normalized images, H and W multiples of the
        coarsest stride.
      training: Keras training flag.

    Returns:
      {"class_outputs": {str(level): [N, H_k, W_k, A*K]},
       "box_outputs": {str(level): [N, H_k, W_k, A*4]},
       "mask_features": {str(level): [N, Hm, Wm, C]}}.
    """
    features = self.decoder(self.backbone(images, training=training),
                            training=training)
    class_outputs, box_outputs, mask_features = self.head(features,
                                                          training=training)
    return {"class_outputs": class_outputs, "box_outputs": box_outputs,
            "mask_features": mask_features}

  @property
  def checkpoint_items(self) -> Mapping[str, Any]:
    return {"backbone": self.backbone, "decoder": self.decoder,
            "head": self.head}

  def get_config(self) -> dict:
    return self._config_dict

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)
