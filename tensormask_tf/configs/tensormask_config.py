"""The TensorMask model config (SPEC.md 3), a Model Garden dataclass.

Overridable from YAML like any Model Garden config; experiment and task
configs build on it.
"""

import dataclasses

from official.modeling import hyperparams
from official.vision.configs import backbones
from official.vision.configs import common
from official.vision.configs import decoders

@dataclasses.dataclass
class Windows(hyperparams.Config):
  """Window sides in pixels at min_level, one per window size (SPEC: 44,
  60); each level doubles them. Sides must be multiples of the min_level
  stride."""
  base_sides: list[int] = dataclasses.field(default_factory=lambda: [44, 60])


@dataclasses.dataclass
class TensorMaskHead(hyperparams.Config):
  """The heads.

  head_type: "bipyramid" (the tensor bipyramid of SPEC.md 3) or one of the
    baseline heads of the paper's Fig. 6 on a plain feature pyramid:
    "simple_natural", "simple_aligned", "upscale_natural", "upscale_aligned"
    (the latter two predict masks `upscale_factor` times coarser and upscale
    them; `upscale_interpolation` "bilinear" or "nearest").
  """
  head_type: str = "bipyramid"
  num_convs: int = 4
  class_filters: int = 256
  box_filters: int = 128
  mask_filters: int = 128
  prior_prob: float = 0.01
  mask_pad: float = -6.0
  upscale_factor: int = 1
  upscale_interpolation: str = "bilinear"


@dataclasses.dataclass
class DetectionGenerator(hyperparams.Config):
  """Inference post-processing (SPEC.md 3); masks are returned over each
  detection's window at mask_size x mask_size."""
  score_threshold: float = 0.05
  pre_nms_top_k: int = 6000
  nms_iou_threshold: float = 0.5
  max_detections: int = 100
  mask_size: int = 64


@dataclasses.dataclass
class TensorMaskModel(hyperparams.Config):
  """One dataclass that describes the whole model."""
  num_classes: int = 80
  input_size: list[int] = dataclasses.field(default_factory=lambda: [800, 1344, 3])
  min_level: int = 2
  max_level: int = 7
  windows: Windows = dataclasses.field(default_factory=Windows)
  backbone: backbones.Backbone = dataclasses.field(
      default_factory=lambda: backbones.Backbone(
          type="resnet", resnet=backbones.ResNet(model_id=50)))
  decoder: decoders.Decoder = dataclasses.field(
      default_factory=lambda: decoders.Decoder(
          type="fpn", fpn=decoders.FPN(num_filters=256)))
  head: TensorMaskHead = dataclasses.field(default_factory=TensorMaskHead)
  detection_generator: DetectionGenerator = dataclasses.field(
      default_factory=DetectionGenerator)
  norm_activation: common.NormActivation = dataclasses.field(
      default_factory=lambda: common.NormActivation(activation="relu"))
  # Backend of swap_align2nat: "auto", "tf" or "custom". An XLA-compiled
  # step must use "tf" (tensormask_tf/ops/backend.py).
  ops_backend: str = "auto"
