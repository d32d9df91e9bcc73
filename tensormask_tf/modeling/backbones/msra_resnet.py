"""The MSRA ResNet of the authors' release (detectron2's ResNet, frozen BN).

Model Garden's ResNet differs from the network the released TensorMask
weights were trained with in ways that change every number:
- the stride of a bottleneck's first block sits in its first 1x1 conv (the
  MSRA/Caffe2 layout, detectron2's STRIDE_IN_1X1), not in the 3x3;
- padding is explicit and symmetric (stem 7x7 pad 3, max-pool 3x3/2 pad 1,
  3x3 pad 1), where Model Garden's 'same' pads stride-2 convs asymmetrically;
- batch norm is frozen: a fixed per-channel affine from the checkpoint's
  statistics, `(x - mean) / sqrt(var + 1e-5) * gamma + beta`;
- the stem and the first `freeze_at - 1` stages are not trained (the
  release's FREEZE_AT = 2: stem and res2).
The bottlenecks' 3x3 convs (all stride 1 in this layout) are
`layers.Conv3x3`, which with `winograd_at_inference` runs them as Winograd
F(4x4, 3x3) when not training, where `ops.winograd_pays_off`; training runs
them as tf.nn.conv2d, and the weights and checkpoints are Conv2D's.
Layer names follow the release's parameter names (`res3_0_conv1`,
`res3_0_conv1_norm`, `stem_conv1`, ...), which the checkpoint converter maps
one to one. Registered as backbone type "msra_resnet".
"""

import tensorflow as tf
import tf_keras

from official.modeling import hyperparams
from official.vision.modeling.backbones import factory
from tensormask_tf import layers

# Bottleneck blocks per stage res2..res5.
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
FROZEN_BN_EPSILON = 1e-5


@tf_keras.utils.register_keras_serializable(package="TensorMask")
class FrozenBatchNorm(tf_keras.layers.Layer):
  """Batch norm with fixed statistics and affine (none of it trained).

  `y = x * scale + offset`, scale = gamma / sqrt(moving_variance + eps),
  offset = beta - moving_mean * scale: detectron2's FrozenBatchNorm2d (its
  training form; its eval form rounds differently in float32 only).
  """

  def __init__(self, epsilon: float = FROZEN_BN_EPSILON, **kwargs):
    super().__init__(**kwargs)
    self._epsilon = epsilon

  def build(self, input_shape):
    channels = int(input_shape[-1])
    make = lambda name, init: self.add_weight(  # noqa: E731
        name=name, shape=[channels], initializer=init, trainable=False)
    self.gamma = make("gamma", "ones")
    self.beta = make("beta", "zeros")
    self.moving_mean = make("moving_mean", "zeros")
    self.moving_variance = make("moving_variance", "ones")
    super().build(input_shape)

  def call(self, inputs: tf.Tensor) -> tf.Tensor:
    scale = self.gamma * tf.math.rsqrt(self.moving_variance + self._epsilon)
    offset = self.beta - self.moving_mean * scale
    return inputs * tf.cast(scale, inputs.dtype) + tf.cast(offset,
                                                           inputs.dtype)

  def get_config(self) -> dict:
    return {**super().get_config(), "epsilon": self._epsilon}


class _Builder:
  """Builds the functional graph; conv + frozen BN units named as the
  release's parameters."""

  def __init__(self, freeze_at: int,
               l2_regularizer: tf_keras.regularizers.Regularizer | None,
               winograd_at_inference: bool):
    self._freeze_at = freeze_at
    self._regularizer = l2_regularizer
    self._winograd_at_inference = winograd_at_inference

  def conv_norm(self, x, filters: int, kernel_size: int, strides: int,
                name: str, stage: int, relu: bool):
    """Explicitly padded conv (no bias) + frozen BN (+ ReLU); `stage` 1 is
    the stem, 2..5 res2..res5, not trained when stage <= freeze_at.

    A stride-1 3x3 conv is a `layers.Conv3x3` ("valid" after the same
    ZeroPadding2D: the model's layers, and so its checkpoints, unchanged).
    """
    trainable = stage > self._freeze_at
    padding = (kernel_size - 1) // 2
    if padding:
      x = tf_keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    kwargs = dict(
        padding="valid", use_bias=False, trainable=trainable,
        kernel_initializer=tf_keras.initializers.VarianceScaling(
            2.0, mode="fan_out", distribution="untruncated_normal"),
        kernel_regularizer=self._regularizer if trainable else None,
        name=name)
    if kernel_size == 3 and strides == 1:
      conv = layers.Conv3x3(
          filters, winograd_at_inference=self._winograd_at_inference,
          **kwargs)
    else:
      conv = tf_keras.layers.Conv2D(filters, kernel_size, strides=strides,
                                    **kwargs)
    x = conv(x)
    x = FrozenBatchNorm(name=f"{name}_norm")(x)
    return tf_keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x

  def bottleneck(self, x, stage: int, index: int, bottleneck_filters: int,
                 filters: int, strides: int):
    name = f"res{stage}_{index}"
    if index == 0:
      shortcut = self.conv_norm(x, filters, 1, strides, f"{name}_shortcut",
                                stage, relu=False)
    else:
      shortcut = x
    # MSRA layout: the stride in the first 1x1 conv.
    y = self.conv_norm(x, bottleneck_filters, 1, strides, f"{name}_conv1",
                       stage, relu=True)
    y = self.conv_norm(y, bottleneck_filters, 3, 1, f"{name}_conv2", stage,
                       relu=True)
    y = self.conv_norm(y, filters, 1, 1, f"{name}_conv3", stage, relu=False)
    y = tf_keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return tf_keras.layers.ReLU(name=f"{name}_out")(y)


def msra_resnet(input_specs: tf_keras.layers.InputSpec, model_id: int = 50,
                freeze_at: int = 2,
                l2_regularizer: tf_keras.regularizers.Regularizer | None = None,
                winograd_at_inference: bool = True) -> tf_keras.Model:
  """The release's ResNet-50/101 bottom-up network.

  Args:
    input_specs: spec of the image batch [N, H, W, 3] (RGB normalized by
      Model Garden's `normalize_image`; the converter folds the release's
      BGR order and unit std into the stem's weights).
    model_id: depth, 50 or 101.
    freeze_at: 0 trains everything, 1 freezes the stem, k >= 2 the stem and
      res2..res{k} (the release's FREEZE_AT).
    l2_regularizer: kernel regularizer of the trained convs.
    winograd_at_inference: let the bottlenecks' 3x3 convs run as Winograd
      F(4x4, 3x3) when not training, where it is faster on the CPU
      (`layers.Conv3x3`; False on GPUs and TPUs).

  Returns:
    A Keras model {"2": C2 [N, H/4, W/4, 256], "3": C3 (512 channels),
    "4": C4 (1024), "5": C5 [N, H/32, W/32, 2048]} for any H and W; its
    `output_specs` the same shapes with unknown H and W.
  """
  if model_id not in BLOCKS:
    raise ValueError(f"msra_resnet: model_id must be one of {sorted(BLOCKS)}, "
                     f"got {model_id}.")
  if not 0 <= freeze_at <= 5:
    raise ValueError(f"msra_resnet: freeze_at must be in 0..5, got "
                     f"{freeze_at}.")
  builder = _Builder(freeze_at, l2_regularizer, winograd_at_inference)
  # Any height and width (multiples of 32): the model runs at each image's
  # own padded size, as the release does (serving.predictor).
  inputs = tf_keras.Input(shape=[None, None, input_specs.shape[-1]],
                          batch_size=input_specs.shape[0])
  x = builder.conv_norm(inputs, 64, 7, 2, "stem_conv1", 1, relu=True)
  # Zero padding equals the release's -inf padding after a ReLU.
  x = tf_keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
  x = tf_keras.layers.MaxPool2D(3, 2, padding="valid", name="stem_pool")(x)
  endpoints = {}
  for i, blocks in enumerate(BLOCKS[model_id]):
    stage = i + 2
    filters = 256 * 2**i
    for index in range(blocks):
      strides = 2 if index == 0 and stage > 2 else 1
      x = builder.bottleneck(x, stage, index, filters // 4, filters, strides)
    endpoints[str(stage)] = x
  model = tf_keras.Model(inputs=inputs, outputs=endpoints,
                         name=f"msra_resnet{model_id}")
  model.output_specs = {level: tensor.get_shape()
                        for level, tensor in endpoints.items()}
  return model


@factory.register_backbone_builder("msra_resnet")
def build_msra_resnet(input_specs: tf_keras.layers.InputSpec,
                      backbone_config: hyperparams.Config,
                      norm_activation_config: hyperparams.Config,
                      l2_regularizer: tf_keras.regularizers.Regularizer | None
                      = None) -> tf_keras.Model:
  """Model Garden backbone builder of `type: msra_resnet` (norm_activation
  is unused: the norm is frozen, the activation ReLU)."""
  del norm_activation_config
  config = backbone_config.get()
  return msra_resnet(input_specs, model_id=config.model_id,
                     freeze_at=config.freeze_at,
                     l2_regularizer=l2_regularizer,
                     winograd_at_inference=config.winograd_at_inference)
