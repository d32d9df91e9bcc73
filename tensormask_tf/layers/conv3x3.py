"""A stride-1 3x3 convolution layer that runs as Winograd F(4x4, 3x3) where
that is faster on the CPU."""

import tensorflow as tf
import tf_keras

from tensormask_tf import ops

# Winograd's transforms amplify rounding: low-precision compute stays direct.
_WINOGRAD_DTYPES = (tf.float32, tf.float64)
# Conv2D arguments the layer fixes (stride-1 3x3 NHWC).
_FIXED_ARGUMENTS = ("kernel_size", "strides", "dilation_rate", "groups",
                    "data_format")
_PADDINGS = ("same", "valid")


@tf_keras.utils.register_keras_serializable(package="TensorMask")
class Conv3x3(tf_keras.layers.Conv2D):
  """`Conv2D(filters, 3, padding=padding)`, the same weights and checkpoints.

  When not training, with `winograd_at_inference`, a float32/float64 input
  and a grid and channel counts where `ops.winograd_pays_off`, the
  convolution runs as `ops.winograd_conv3x3` (2.2x faster for 256 channels
  on the P2 grid of an 896x1408 input on the CPU; its float32 results differ
  from tf.nn.conv2d's by ~1e-5 of the largest output). With
  `winograd_in_training` training runs it too, differentiated through its
  transforms and matrix products (2.0x faster forward and backward for the
  4 x 256-channel class tower on that grid, scripts/bench_model.py
  --sections train_profile; it holds the transformed tiles for the
  backward, ~2.25x its input); otherwise training runs tf.nn.conv2d.
  """

  def __init__(self, filters: int, padding: str = "same",
               winograd_at_inference: bool = True,
               winograd_in_training: bool = False, **kwargs):
    """Initializes the layer.

    Args:
      filters: output channels F.
      padding: "same" (zero padding 1) or "valid" (none: for inputs that
        are padded already, as the release's backbone and FPN pad theirs
        with a ZeroPadding2D layer).
      winograd_at_inference: allow the Winograd form when not training
        (set False on GPUs and TPUs, whose own convolutions are faster).
      winograd_in_training: allow it when training too (CPU only, as
        winograd_at_inference).
      **kwargs: other keyword arguments of `tf_keras.layers.Conv2D`
        (activation, initializers, regularizers, name, ...), not its
        kernel_size, strides, dilation_rate, groups or data_format.
    """
    fixed = set(_FIXED_ARGUMENTS) & set(kwargs)
    if fixed:
      raise ValueError(f"Conv3x3: {sorted(fixed)} cannot be set: the layer "
                       "is a stride-1 3x3 NHWC convolution.")
    if padding not in _PADDINGS:
      raise ValueError(f"Conv3x3: padding must be one of {_PADDINGS}, got "
                       f"{padding!r}.")
    super().__init__(filters, 3, padding=padding, **kwargs)
    self._winograd_at_inference = winograd_at_inference
    self._winograd_in_training = winograd_in_training

  def convolve(self, inputs: tf.Tensor, kernel: tf.Tensor,
               training: bool | None = None) -> tf.Tensor:
    """conv3x3 of `inputs` [N, H, W, C] with `kernel` [3, 3, C, F], no bias,
    with the layer's padding.

    The algorithm choice of `call`, for callers that convolve with this
    layer's kernel (or one derived from it) outside `call`.
    """
    _, height, width, channels = inputs.shape
    padding = self.padding.upper()
    if padding == "VALID":  # The rule is about the output's grid.
      height, width = (None if v is None else v - 2 for v in (height, width))
    # A symbolic `training` tensor gets the direct form, right either way.
    static = training is None or isinstance(training, (bool, int))
    allowed = static and (self._winograd_in_training if training
                          else self._winograd_at_inference)
    if (allowed and inputs.dtype in _WINOGRAD_DTYPES
        and ops.winograd_pays_off(height, width, channels, kernel.shape[-1])):
      return ops.winograd_conv3x3(inputs, kernel, padding)
    return tf.nn.conv2d(inputs, kernel, 1, padding)

  def call(self, inputs: tf.Tensor, training: bool | None = None
           ) -> tf.Tensor:
    outputs = self.convolve(inputs, self.kernel, training)
    if self.use_bias:
      outputs = tf.nn.bias_add(outputs, self.bias)
    if self.activation is not None:
      outputs = self.activation(outputs)
    return outputs

  def get_config(self) -> dict:
    config = super().get_config()
    for key in _FIXED_ARGUMENTS:
      config.pop(key)
    config["winograd_at_inference"] = self._winograd_at_inference
    config["winograd_in_training"] = self._winograd_in_training
    return config
