"""Builds a TensorMask model from its config with Model Garden's factories."""

import tensorflow as tf
import tf_keras

from official.vision.modeling.backbones import factory as backbone_factory
from official.vision.modeling.decoders import factory as decoder_factory
from tensormask_tf.configs import tensormask_config
from tensormask_tf.modeling import detection_generator
from tensormask_tf.modeling import tensormask_model
# Registers backbone type "msra_resnet" and decoder type "detectron2_fpn".
from tensormask_tf.modeling.backbones import msra_resnet  # noqa: F401
from tensormask_tf.modeling.decoders import detectron2_fpn  # noqa: F401
from tensormask_tf.modeling.heads import tensormask_head
from tensormask_tf.ops import windows as windows_lib


def window_spec(model_config: tensormask_config.TensorMaskModel
                ) -> windows_lib.WindowSpec:
  """The window layout the model's config describes."""
  return windows_lib.WindowSpec(
      min_level=model_config.min_level, max_level=model_config.max_level,
      base_sides=tuple(model_config.windows.base_sides),
      min_level_stride=2**model_config.min_level,
      # The feature-pyramid heads predict S x S masks on each level's grid.
      masks_on_min_level_grid=model_config.head.head_type == "bipyramid")


def size_divisibility(model_config: tensormask_config.TensorMaskModel) -> int:
  """What the input's height and width must be multiples of.

  32 (the C5 stride) for the release's `detectron2_fpn`: its padded stride-2
  convolutions give P6 and P7 grids of ceil(H / 64) and ceil(H / 128), the
  grids the windows assume, as the release pads images to multiples of 32.
  2**max_level for Model Garden's FPN.
  """
  if model_config.decoder.type == "detectron2_fpn":
    return 2**min(model_config.max_level, 5)
  return 2**model_config.max_level


def padded_input_size(model_config: tensormask_config.TensorMaskModel
                      ) -> tuple[int, int]:
  """The model input's (height, width): `input_size` (what images are
  resized to fit) rounded up to `size_divisibility`, as the parser pads."""
  divisor = size_divisibility(model_config)
  return tuple(-(-int(v) // divisor) * divisor
               for v in model_config.input_size[:2])


def runs_at_any_size(model_config: tensormask_config.TensorMaskModel) -> bool:
  """Whether the built model takes any input size (multiples of
  `size_divisibility`), not only `input_size`: the release's backbone and
  FPN do; Model Garden's are built for one size."""
  return (model_config.backbone.type == "msra_resnet"
          and model_config.decoder.type == "detectron2_fpn")


def build_tensormask_model(
    input_specs: tf_keras.layers.InputSpec,
    model_config: tensormask_config.TensorMaskModel,
    l2_regularizer: tf_keras.regularizers.Regularizer | None = None,
) -> tensormask_model.TensorMaskModel:
  """Builds ResNet + FPN + TensorMask head.

  Args:
    input_specs: spec of the image batch, [N, H, W, 3] with H and W
      multiples of `size_divisibility(model_config)`.
    model_config: the model config.
    l2_regularizer: optional kernel regularizer.

  Returns:
    The (built) TensorMaskModel.
  """
  height, width = input_specs.shape[1:3]
  divisor = size_divisibility(model_config)
  if (height is not None and height % divisor) or (
      width is not None and width % divisor):
    raise ValueError(
        f"input size {height}x{width} must be a multiple of {divisor} for "
        f"decoder {model_config.decoder.type!r} (factory.size_divisibility), "
        "so every pyramid level has a whole grid.")
  spec = window_spec(model_config)  # Validates the window sides.
  backbone = backbone_factory.build_backbone(
      input_specs=input_specs, backbone_config=model_config.backbone,
      norm_activation_config=model_config.norm_activation,
      l2_regularizer=l2_regularizer)
  decoder = decoder_factory.build_decoder(
      input_specs=backbone.output_specs, model_config=model_config,
      l2_regularizer=l2_regularizer)
  head_config = model_config.head
  head = tensormask_head.TensorMaskHead(
      min_level=model_config.min_level, max_level=model_config.max_level,
      num_classes=model_config.num_classes, mask_sides=spec.mask_sides,
      head_type=head_config.head_type, num_convs=head_config.num_convs,
      class_filters=head_config.class_filters,
      box_filters=head_config.box_filters,
      mask_filters=head_config.mask_filters,
      prior_prob=head_config.prior_prob, mask_pad=head_config.mask_pad,
      upscale_factor=head_config.upscale_factor,
      upscale_interpolation=head_config.upscale_interpolation,
      ops_backend=model_config.ops_backend,
      winograd_at_inference=head_config.winograd_at_inference,
      winograd_in_training=head_config.winograd_in_training,
      kernel_regularizer=l2_regularizer)
  model = tensormask_model.TensorMaskModel(backbone, decoder, head)
  model(tf_keras.Input(shape=input_specs.shape[1:],
                       batch_size=input_specs.shape[0]))
  return model


def detect(model: tensormask_model.TensorMaskModel, images,
           model_config: tensormask_config.TensorMaskModel,
           training: bool = False) -> dict:
  """Runs the model and the configured post-processing on a batch.

  Returns generate_detections' outputs (window-relative masks; see
  detection_generator.paste_window_masks). The images' height and width may
  be known only at run time (a graph traced for any size).
  """
  outputs = model(images, training=training)
  run_time = tf.shape(images)
  image_size = tuple(images.shape[i] if images.shape[i] is not None
                     else run_time[i] for i in (1, 2))
  return postprocess(model, outputs, image_size, model_config)


def postprocess(model: tensormask_model.TensorMaskModel, outputs: dict,
                image_size: tuple[int, int],
                model_config: tensormask_config.TensorMaskModel,
                image_sizes=None) -> dict:
  """The configured post-processing of the model's outputs on a batch of
  (padded) input size `image_size` (height, width: ints, or scalar int32
  tensors for a size known only at run time); `image_sizes` [N, 2] are the
  images' sizes inside it (image_info[:, 1]), None for all of it."""
  generator = model_config.detection_generator
  return detection_generator.generate_detections(
      outputs,
      lambda level, a, indices: model.head.mask_logits(
          outputs["mask_features"], level, a, indices),
      window_spec(model_config), tuple(image_size),
      model_config.num_classes,
      score_threshold=generator.score_threshold,
      pre_nms_top_k=generator.pre_nms_top_k,
      nms_iou_threshold=generator.nms_iou_threshold,
      image_sizes=image_sizes,
      max_detections=generator.max_detections,
      mask_size=generator.mask_size)
