"""The FPN of the authors' release (detectron2's RetinaNet-style FPN).

It differs from Model Garden's FPN, whose numbers it must reproduce for the
released weights: the lateral and the upsampled top-down features are
averaged (`fuse_type: avg`, the release's TensorMask config) or summed;
convolutions have biases and no norm; P6 is a stride-2 3x3 conv of C5 (the
backbone's 2048 channels, not P5) and P7 one of relu(P6), each padded by
one pixel on every side. Layer names follow the release's parameters
(`fpn_lateral3`, `fpn_output3`, `top_block_p6`, ...). Registered as decoder
type "detectron2_fpn".

The output convs (3x3, stride 1) are `layers.Conv3x3`, which with
`winograd_at_inference` run as Winograd F(4x4, 3x3) when not training,
where `ops.winograd_pays_off`; the weights and checkpoints are Conv2D's.
"""

import tensorflow as tf
import tf_keras

from official.modeling import hyperparams
from official.vision.modeling.decoders import factory
from official.vision.ops import spatial_transform_ops
from tensormask_tf import layers

FUSE_TYPES = ("avg", "sum")


def detectron2_fpn(input_specs: dict[str, tf.TensorShape], min_level: int,
                   max_level: int, num_filters: int = 256,
                   fuse_type: str = "avg",
                   l2_regularizer: tf_keras.regularizers.Regularizer | None
                   = None, winograd_at_inference: bool = True
                   ) -> tf_keras.Model:
  """Builds the FPN on backbone features C{min_level}..C5.

  Args:
    input_specs: {str(level): [N, H_k, W_k, C_k]} of the backbone, with
      levels min_level..5 (H_k, W_k halving per level; the model takes any
      H_k, W_k, so an input of any multiple of 32).
    min_level: finest output level (2 for TensorMask).
    max_level: coarsest output level; levels above 5 come from C5 (P6)
      and relu(P{k-1}) (P7 and up).
    num_filters: output channels of every level.
    fuse_type: "avg" or "sum" of the lateral and top-down features.
    l2_regularizer: kernel regularizer.
    winograd_at_inference: let the output convs run as Winograd F(4x4, 3x3)
      when not training, where it is faster on the CPU (`layers.Conv3x3`;
      False on GPUs and TPUs).

  Returns:
    A Keras model {str(level): [N, H_k, W_k, num_filters]} for
    min_level..max_level, with `output_specs`.
  """
  if fuse_type not in FUSE_TYPES:
    raise ValueError(f"detectron2_fpn: fuse_type must be one of {FUSE_TYPES}, "
                     f"got {fuse_type!r}.")
  backbone_levels = sorted(int(level) for level in input_specs)
  if min_level < backbone_levels[0] or backbone_levels[-1] != 5 or (
      max_level < 5):
    raise ValueError(
        f"detectron2_fpn: levels {min_level}..{max_level} need backbone "
        f"levels {min_level}..5, got {backbone_levels}.")
  inputs = {str(level): tf_keras.Input(
      shape=[None, None, input_specs[str(level)][-1]],
      batch_size=input_specs[str(level)][0]) for level in range(min_level, 6)}

  def conv(filters, kernel_size, strides, name):
    return tf_keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="valid",
        kernel_initializer=tf_keras.initializers.HeUniform(),
        kernel_regularizer=l2_regularizer, name=name)

  def padded_conv3x3(x, strides, name):
    # The same ZeroPadding2D either way: the model's layers, and so its
    # checkpoints, do not depend on the conv's class.
    x = tf_keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    if strides == 1:
      return layers.Conv3x3(
          num_filters, padding="valid",
          winograd_at_inference=winograd_at_inference,
          kernel_initializer=tf_keras.initializers.HeUniform(),
          kernel_regularizer=l2_regularizer, name=name)(x)
    return conv(num_filters, 3, strides, name)(x)

  outputs = {}
  top_down = None
  for level in range(5, min_level - 1, -1):
    lateral = conv(num_filters, 1, 1, f"fpn_lateral{level}")(
        inputs[str(level)])
    if top_down is None:
      fused = lateral
    else:
      # Nearest 2x as reshape + tile (Model Garden's), not UpSampling2D:
      # the same values, and its gradient compiles under XLA, where
      # ResizeNearestNeighborGrad has no CPU kernel (TPU training).
      upsampled = tf_keras.layers.Lambda(
          lambda x: spatial_transform_ops.nearest_upsampling(x, 2),
          name=f"fpn_upsample{level}")(top_down)
      fused = tf_keras.layers.Add(name=f"fpn_fuse{level}")(
          [lateral, upsampled])
      if fuse_type == "avg":
        fused = tf_keras.layers.Rescaling(0.5, name=f"fpn_avg{level}")(fused)
    # The top-down path carries the fused features, before the output conv.
    top_down = fused
    outputs[str(level)] = padded_conv3x3(fused, 1, f"fpn_output{level}")
  previous = inputs["5"]
  for level in range(6, max_level + 1):
    if level > 6:
      previous = tf_keras.layers.ReLU(name=f"top_block_p{level}_relu")(
          previous)
    previous = padded_conv3x3(previous, 2, f"top_block_p{level}")
    outputs[str(level)] = previous
  outputs = {str(level): outputs[str(level)]
             for level in range(min_level, max_level + 1)}
  model = tf_keras.Model(inputs=inputs, outputs=outputs, name="detectron2_fpn")
  model.output_specs = {level: tensor.get_shape()
                        for level, tensor in outputs.items()}
  return model


@factory.register_decoder_builder("detectron2_fpn")
def build_detectron2_fpn(input_specs: dict[str, tf.TensorShape],
                         model_config: hyperparams.Config,
                         l2_regularizer: tf_keras.regularizers.Regularizer |
                         None = None) -> tf_keras.Model:
  """Model Garden decoder builder of `decoder.type: detectron2_fpn`."""
  config = model_config.decoder.get()
  return detectron2_fpn(input_specs, model_config.min_level,
                        model_config.max_level,
                        num_filters=config.num_filters,
                        fuse_type=config.fuse_type,
                        l2_regularizer=l2_regularizer,
                        winograd_at_inference=config.winograd_at_inference)
