"""Keras layer wrapping the dense `swap_align2nat` op for model code."""

import tensorflow as tf
import tf_keras

from tensormask_tf import ops
from tensormask_tf.ops import backend as backend_lib
from tensormask_tf.ops import mask_representation


@tf_keras.utils.register_keras_serializable(package="TensorMask")
class SwapAlign2Nat(tf_keras.layers.Layer):
  """Aligned masks on a fine grid -> natural masks on a `lam` times coarser one.

  Input `[N, H, W, S*S]`, output `[N, ceil(H/lam), ceil(W/lam), (lam*S)**2]`
  (docs/ops.md). H, W and S*S must be static (the op's tap tables
  are built from them); N may be unknown. The layer has no weights.
  """

  def __init__(self, lam: int, pad: float = ops.DEFAULT_PAD,
               backend: str = "auto", **kwargs):
    """Initializes the layer.

    Args:
      lam: Python int >= 1, the window upscale factor (2**k at level k).
      pad: value read for taps outside the input; -6.0 is sigmoid ~ 0.
      backend: "auto", "tf" or "custom" (tensormask_tf/ops/backend.py); a
        model compiled with XLA is built with "tf".
      **kwargs: other keyword arguments of `tf_keras.layers.Layer`.
    """
    super().__init__(**kwargs)
    # Fail at construction, not at the first call, on a bad configuration.
    mask_representation.check_lam(lam, type(self).__name__)
    mask_representation.check_pad(pad, type(self).__name__)
    if backend not in backend_lib.BACKENDS:
      raise ValueError(f"{type(self).__name__}: backend must be one of "
                       f"{backend_lib.BACKENDS}, got {backend!r}.")
    self._config_dict = {"lam": lam, "pad": pad, "backend": backend}

  def call(self, inputs: tf.Tensor) -> tf.Tensor:
    return ops.swap_align2nat(inputs, self._config_dict["lam"],
                              pad=self._config_dict["pad"],
                              backend=self._config_dict["backend"])

  def compute_output_shape(self, input_shape) -> tf.TensorShape:
    input_shape = tf.TensorShape(input_shape)
    lam = self._config_dict["lam"]
    batch, height, width, channels = input_shape.as_list()
    window = int(round(channels**0.5)) if channels is not None else None

    def coarse(size):
      return None if size is None else -(-size // lam)

    return tf.TensorShape([
        batch, coarse(height), coarse(width),
        None if window is None else (lam * window)**2])

  def get_config(self) -> dict:
    return {**super().get_config(), **self._config_dict}
