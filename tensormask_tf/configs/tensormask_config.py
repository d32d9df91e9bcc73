"""TensorMask's model, data and task configs, Model Garden dataclasses.

Overridable from YAML or `--params_override` like any Model Garden config;
the registered experiments are in `experiments.py`.
"""

import dataclasses

from official.core import config_definitions as cfg
from official.modeling import hyperparams
from official.vision.configs import backbones
from official.vision.configs import common
from official.vision.configs import decoders

# COCO's 80 object categories: ids 1..90 without the 10 that no 2017
# annotation uses. The release's contiguous class k is COCO_CATEGORY_IDS[k].
COCO_CATEGORY_IDS = tuple(
    i for i in range(1, 91)
    if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))

@dataclasses.dataclass
class MsraResNet(hyperparams.Config):
  """The release's ResNet (modeling/backbones/msra_resnet.py): stride in the
  first 1x1 conv, explicit padding, frozen BN; `freeze_at` 2 leaves the stem
  and res2 untrained (the release's FREEZE_AT).

  winograd_at_inference: run the bottlenecks' 3x3 convolutions as Winograd
    F(4x4, 3x3) when not training, where it is faster on the CPU
    (tensormask_tf/layers/conv3x3.py); `train.prepare_params` turns it off
    for runtimes with GPUs or TPUs. Training runs them directly.
  """
  model_id: int = 50
  freeze_at: int = 2
  winograd_at_inference: bool = True


@dataclasses.dataclass
class Backbone(backbones.Backbone):
  """Model Garden's backbones plus `msra_resnet`."""
  msra_resnet: MsraResNet = dataclasses.field(default_factory=MsraResNet)


@dataclasses.dataclass
class Detectron2FPN(hyperparams.Config):
  """The release's FPN (modeling/decoders/detectron2_fpn.py): lateral and
  top-down features averaged ("avg") or summed ("sum"), no norm, P6 from C5,
  P7 from relu(P6).

  winograd_at_inference: the output convolutions (3x3, stride 1) as
    Winograd F(4x4, 3x3), as MsraResNet's.
  """
  num_filters: int = 256
  fuse_type: str = "avg"
  winograd_at_inference: bool = True


@dataclasses.dataclass
class Decoder(decoders.Decoder):
  """Model Garden's decoders plus `detectron2_fpn`."""
  detectron2_fpn: Detectron2FPN = dataclasses.field(
      default_factory=Detectron2FPN)


@dataclasses.dataclass
class Windows(hyperparams.Config):
  """Window sides in pixels at min_level, one per window size (docs/model.md: 44,
  60); each level doubles them. Sides must be multiples of the min_level
  stride."""
  base_sides: list[int] = dataclasses.field(default_factory=lambda: [44, 60])


@dataclasses.dataclass
class TensorMaskHead(hyperparams.Config):
  """The heads.

  head_type: "bipyramid" (the tensor bipyramid of docs/model.md) or one of the
    baseline heads of the paper's Fig. 6 on a plain feature pyramid:
    "simple_natural", "simple_aligned", "upscale_natural", "upscale_aligned"
    (the latter two predict masks `upscale_factor` times coarser and upscale
    them, by any lam >= 1 that leaves a whole number of coarse pixels, e.g.
    1.5 for 15 x 15 masks; `upscale_interpolation` "bilinear" or
    "nearest").
  winograd_at_inference: run the head's 3x3 convolutions as Winograd
    F(4x4, 3x3) when not training, on the grids where it is faster on the
    CPU (tensormask_tf/layers/conv3x3.py); `train.prepare_params` turns it
    off for runtimes with GPUs or TPUs.
  winograd_in_training: the same in training steps (forward and backward;
    the COCO experiments' step 1.2x faster on the CPU, docs/benchmarks.md);
    also turned off for GPUs and TPUs.
  """
  head_type: str = "bipyramid"
  num_convs: int = 4
  class_filters: int = 256
  box_filters: int = 128
  mask_filters: int = 128
  prior_prob: float = 0.01
  mask_pad: float = -6.0
  upscale_factor: float = 1
  upscale_interpolation: str = "bilinear"
  winograd_at_inference: bool = True
  winograd_in_training: bool = False


@dataclasses.dataclass
class DetectionGenerator(hyperparams.Config):
  """Inference post-processing (docs/model.md, the release's; see
  modeling/detection_generator.py).

  mask_size: 0 returns each detection's natural M x M mask over its window
    (M = S * 2**k: the release's masks, exactly); R > 0 resamples every
    mask to R x R (fixed output shapes, coarser masks at high levels).
  """
  score_threshold: float = 0.05
  pre_nms_top_k: int = 6000
  nms_iou_threshold: float = 0.5
  max_detections: int = 100
  mask_size: int = 0


@dataclasses.dataclass
class TensorMaskModel(hyperparams.Config):
  """One dataclass that describes the whole model.

  category_ids: the dataset's category id of each class k = 0..K-1 (the
    records' class ids, the evaluator's and exported detections' ids); the
    empty list means k + 1. See `category_ids()`.
  """
  num_classes: int = 80
  category_ids: list[int] = dataclasses.field(default_factory=list)
  # Multiples of 2**max_level: an 800x1333 image padded to the P7 stride.
  input_size: list[int] = dataclasses.field(
      default_factory=lambda: [896, 1408, 3])
  min_level: int = 2
  max_level: int = 7
  windows: Windows = dataclasses.field(default_factory=Windows)
  backbone: Backbone = dataclasses.field(
      default_factory=lambda: Backbone(
          type="resnet", resnet=backbones.ResNet(model_id=50)))
  decoder: Decoder = dataclasses.field(
      default_factory=lambda: Decoder(
          type="fpn", fpn=decoders.FPN(num_filters=256)))
  head: TensorMaskHead = dataclasses.field(default_factory=TensorMaskHead)
  detection_generator: DetectionGenerator = dataclasses.field(
      default_factory=DetectionGenerator)
  norm_activation: common.NormActivation = dataclasses.field(
      default_factory=lambda: common.NormActivation(activation="relu"))
  # Backend of swap_align2nat: "auto", "tf" or "custom". An XLA-compiled
  # step must use "tf" (tensormask_tf/ops/backend.py).
  ops_backend: str = "auto"


@dataclasses.dataclass
class Parser(hyperparams.Config):
  """Input resizing, augmentation and mask labels.

  Images are resized to fit `model.input_size` (keeping the aspect ratio)
  or, when `short_side` > 0, so their short side is `short_side` and their
  long side at most `long_side` (Mask R-CNN style); then padded to
  `model.input_size`. `aug_scale_min/max` jitter that scale in training.
  `mask_caps[i]` is the most positive windows per window size and image
  whose masks are learned at level min_level + i (the last value repeats
  for higher levels).

  `orientation_buckets` (needs `short_side` > 0 and a model that
  `factory.runs_at_any_size`): images at least as wide as tall are padded
  to `model.input_size` as (short, long) sides, taller ones to its
  transpose, and each batch holds one orientation; every step still has
  one of two static shapes, and no image is padded past its own bucket
  (tensormask_tf/dataloaders/tensormask_input.py).
  """
  short_side: int = 0
  long_side: int = 0
  orientation_buckets: bool = False
  aug_rand_hflip: bool = False
  aug_scale_min: float = 1.0
  aug_scale_max: float = 1.0
  mask_caps: list[int] = dataclasses.field(
      default_factory=lambda: [128, 64, 32, 16])


@dataclasses.dataclass
class DataConfig(cfg.DataConfig):
  """A split of Model Garden TF-Example TFRecords (with instance masks)."""
  input_path: str = ""
  global_batch_size: int = 0
  is_training: bool = False
  dtype: str = "float32"
  decoder: common.DataDecoder = dataclasses.field(
      default_factory=common.DataDecoder)
  parser: Parser = dataclasses.field(default_factory=Parser)
  shuffle_buffer_size: int = 1000
  file_type: str = "tfrecord"


@dataclasses.dataclass
class Losses(hyperparams.Config):
  """docs/model.md's losses; `l2_weight_decay` is the SGD weight decay.

  `static_mask_shapes`: compute the masks of every row of the mask caps
  (padding rows included, static shapes) rather than the positives' only;
  needed by XLA and TPUs, and set by `train.prepare_params` under
  `runtime.enable_xla`. Same loss either way.
  """
  focal_loss_alpha: float = 0.3
  focal_loss_gamma: float = 3.0
  mask_positive_weight: float = 1.5
  l2_weight_decay: float = 1e-4
  static_mask_shapes: bool = False


@dataclasses.dataclass
class TensorMaskTask(cfg.TaskConfig):
  """The `tensormask` task: model, data, losses and evaluation.

  annotation_file: COCO instances JSON of the validation split (COCO box
    and mask AP need it; without it evaluation reports losses only).
  allow_image_summary: whether evaluation writes TensorBoard pictures of
    the predicted masks (`num_summary_images` of the first batch).
  """
  model: TensorMaskModel = dataclasses.field(default_factory=TensorMaskModel)
  train_data: DataConfig = dataclasses.field(
      default_factory=lambda: DataConfig(is_training=True))
  # Evaluation sees every image: no partial last batch dropped.
  validation_data: DataConfig = dataclasses.field(
      default_factory=lambda: DataConfig(is_training=False,
                                         drop_remainder=False))
  losses: Losses = dataclasses.field(default_factory=Losses)
  init_checkpoint_modules: str = "all"  # "all" or "backbone"
  annotation_file: str | None = None
  use_coco_metrics: bool = True
  allow_image_summary: bool = True
  num_summary_images: int = 4


def category_ids(model: TensorMaskModel) -> list[int]:
  """The category id of each class 0..K-1: `model.category_ids`, or
  1..K when it is empty.

  Raises:
    ValueError: a list whose length is not num_classes, or with repeated
      or non-positive ids.
  """
  ids = [int(i) for i in model.category_ids]
  if not ids:
    return list(range(1, model.num_classes + 1))
  if len(ids) != model.num_classes:
    raise ValueError(
        f"model.category_ids has {len(ids)} ids but model.num_classes is "
        f"{model.num_classes}: give one category id per class (or none for "
        "ids 1..num_classes)")
  repeated = sorted({i for i in ids if ids.count(i) > 1})
  if repeated:
    raise ValueError(f"model.category_ids repeats ids {repeated}")
  if min(ids) < 1:
    raise ValueError("model.category_ids must be positive, got "
                     f"{[i for i in ids if i < 1]}")
  return ids
