"""TensorMask experiments, registered with Model Garden's `exp_factory`.

- `tensormask`: the bare task with defaults (set data paths yourself).
- `tensormask_r50_fpn_coco_1x`, `tensormask_r50_fpn_coco_6x`,
  `tensormask_r101_fpn_coco_6x`: the COCO recipe of docs/training.md.
- `tensormask_shapes`: a half-width ResNet-18 on the synthetic shapes
  dataset at 128 px, sized to train on a 2-core CPU in minutes (the
  quickstart).
- `tensormask_shapes_large` and `tensormask_shapes_large_<head>`: the rows
  of the paper's Tables 1 and 2 (the mask representations' ablations) on the
  `shapes_large` dataset at 192 px; `ABLATION_EXPERIMENTS` lists them and
  `scripts/run_ablations.py` runs them (docs/ablations.md).

Paths are relative to `COCO_DIR` / `SHAPES_DIR` / `SHAPES_LARGE_DIR`;
override them with
`--params_override` or a YAML file in `configs/`.
"""

import os

from official.core import config_definitions as cfg
from official.core import exp_factory
from official.modeling import hyperparams
from official.modeling import optimization
from tensormask_tf.configs import tensormask_config as tm_cfg

COCO_DIR = "coco"
COCO_TRAIN_EXAMPLES = 118287
SHAPES_DIR = "data/shapes"
SHAPES_LARGE_DIR = "data/shapes_large"

_RESTRICTIONS = ["task.train_data.is_training != None",
                 "task.validation_data.is_training != None"]


def _sgd_stepwise(base_lr: float, boundaries: list[int], warmup_steps: int
                  ) -> optimization.OptimizationConfig:
  """SGD momentum 0.9, LR x0.1 at each boundary, linear warm-up from 0."""
  return optimization.OptimizationConfig({
      "optimizer": {"type": "sgd", "sgd": {"momentum": 0.9}},
      "learning_rate": {
          "type": "stepwise",
          "stepwise": {"boundaries": boundaries,
                       "values": [base_lr * 0.1**i
                                  for i in range(len(boundaries) + 1)]}},
      "warmup": {"type": "linear",
                 "linear": {"warmup_steps": warmup_steps,
                            "warmup_learning_rate": 0.0}},
  })


@exp_factory.register_config_factory("tensormask")
def tensormask() -> cfg.ExperimentConfig:
  """The task with its defaults."""
  return cfg.ExperimentConfig(task=tm_cfg.TensorMaskTask(),
                              restrictions=list(_RESTRICTIONS))


def _coco(depth: int, schedule: int) -> cfg.ExperimentConfig:
  """docs/training.md: batch 16, LR 0.02, 90k steps per "1x"; 6x adds jitter."""
  batch_size, eval_batch_size = 16, 8
  steps = 90_000 * schedule
  boundaries = [60_000, 80_000] if schedule == 1 else [480_000, 520_000]
  # The release's 80 contiguous classes, class k being COCO category id
  # COCO_CATEGORY_IDS[k] (parser, evaluator, export); natural masks (the
  # default detection_generator.mask_size 0).
  # Orientation buckets (parser.orientation_buckets): an 800x1333 image
  # padded to 800x1344 (multiples of the release's size divisibility, 32),
  # a 1333x800 one to 1344x800; a square input holding both would be
  # 1344x1344, 1.7x the pixels of either bucket.
  model = tm_cfg.TensorMaskModel(
      num_classes=len(tm_cfg.COCO_CATEGORY_IDS),
      category_ids=list(tm_cfg.COCO_CATEGORY_IDS),
      input_size=[800, 1344, 3])
  # The release's network (its weights convert one to one,
  # scripts/convert_detectron2_checkpoint.py): MSRA ResNet with frozen BN,
  # stem and res2 untrained; FPN averaging lateral and top-down features.
  model.backbone = tm_cfg.Backbone(
      type="msra_resnet", msra_resnet=tm_cfg.MsraResNet(model_id=depth))
  model.decoder = tm_cfg.Decoder(
      type="detectron2_fpn", detectron2_fpn=tm_cfg.Detectron2FPN())
  # On the CPU (train.prepare_params turns it off for GPUs and TPUs): the
  # step 1.2x faster, docs/benchmarks.md.
  model.head.winograd_in_training = True
  train_parser = tm_cfg.Parser(short_side=800, long_side=1333,
                               aug_rand_hflip=True, orientation_buckets=True)
  if schedule > 1:  # Short side jittered over 640..800.
    train_parser.aug_scale_min = 0.8
  return cfg.ExperimentConfig(
      task=tm_cfg.TensorMaskTask(
          model=model,
          losses=tm_cfg.Losses(l2_weight_decay=1e-4),
          init_checkpoint_modules="backbone",
          annotation_file=os.path.join(COCO_DIR, "annotations",
                                       "instances_val2017.json"),
          train_data=tm_cfg.DataConfig(
              input_path=os.path.join(COCO_DIR, "tfrecords", "train*"), is_training=True,
              global_batch_size=batch_size, parser=train_parser),
          validation_data=tm_cfg.DataConfig(
              input_path=os.path.join(COCO_DIR, "tfrecords", "val*"), is_training=False,
              global_batch_size=eval_batch_size, drop_remainder=False,
              parser=tm_cfg.Parser(short_side=800, long_side=1333,
                                   orientation_buckets=True))),
      trainer=cfg.TrainerConfig(
          train_steps=steps,
          # The whole split, whatever the batch size (val2017's 5000
          # images would lose the remainder of 5000 // batch otherwise).
          validation_steps=-1,
          validation_interval=5000, steps_per_loop=100, summary_interval=100,
          checkpoint_interval=5000,
          optimizer_config=_sgd_stepwise(0.02, boundaries, 1000)),
      restrictions=list(_RESTRICTIONS))


@exp_factory.register_config_factory("tensormask_r50_fpn_coco_1x")
def tensormask_r50_fpn_coco_1x() -> cfg.ExperimentConfig:
  return _coco(50, 1)


@exp_factory.register_config_factory("tensormask_r50_fpn_coco_6x")
def tensormask_r50_fpn_coco_6x() -> cfg.ExperimentConfig:
  return _coco(50, 6)


@exp_factory.register_config_factory("tensormask_r101_fpn_coco_6x")
def tensormask_r101_fpn_coco_6x() -> cfg.ExperimentConfig:
  return _coco(101, 6)


@exp_factory.register_config_factory("tensormask_shapes")
def tensormask_shapes() -> cfg.ExperimentConfig:
  """Half-width ResNet-18 + small FPN and heads on 128-px shapes images,
  on CPU."""
  model = tm_cfg.TensorMaskModel(num_classes=4, input_size=[128, 128, 3],
                                 min_level=2, max_level=5)
  # Masks resampled to 64 x 64: fixed output shapes.
  model.detection_generator.mask_size = 64
  model.backbone.resnet.model_id = 18
  # Half-width ResNet-18 (32..256 channels): the full-width backbone was
  # 53% of the step on a 2-core CPU (its backward 39%), and the half-width
  # step is 1.6-2.2x faster; 4 classes of flat shapes need no more.
  model.backbone.resnet.depth_multiplier = 0.5
  model.decoder.fpn.num_filters = 64
  model.windows.base_sides = [24, 40]
  model.head.override({"num_convs": 2, "class_filters": 64,
                       "box_filters": 32, "mask_filters": 32})
  model.norm_activation.norm_momentum = 0.9
  # 1000 steps at 3e-3 reach the mask AP of 1800 at 1e-3 (0.513-0.533 in
  # three runs against 0.517, both half width) in 0.56x the steps.
  batch_size, train_steps = 8, 1000
  parser = tm_cfg.Parser(mask_caps=[32, 16, 8, 8])
  return cfg.ExperimentConfig(
      runtime=cfg.RuntimeConfig(distribution_strategy="one_device",
                                num_gpus=0),
      task=tm_cfg.TensorMaskTask(
          model=model,
          losses=tm_cfg.Losses(l2_weight_decay=0.0),  # AdamW decays.
          annotation_file=os.path.join(SHAPES_DIR, "val.json"),
          train_data=tm_cfg.DataConfig(
              input_path=os.path.join(SHAPES_DIR, "tfrecords", "train*"),
              is_training=True, global_batch_size=batch_size,
              parser=parser.replace(aug_rand_hflip=True)),
          validation_data=tm_cfg.DataConfig(
              input_path=os.path.join(SHAPES_DIR, "tfrecords", "val*"),
              is_training=False, global_batch_size=batch_size,
              drop_remainder=False, parser=parser)),
      trainer=cfg.TrainerConfig(
          train_steps=train_steps, validation_steps=-1,
          validation_interval=train_steps, steps_per_loop=100,
          summary_interval=100, checkpoint_interval=500,
          optimizer_config=optimization.OptimizationConfig({
              "optimizer": {"type": "adamw", "adamw": {
                  "weight_decay_rate": 1e-4,
                  "exclude_from_weight_decay": ["bias", "beta", "gamma"]}},
              "learning_rate": {"type": "cosine", "cosine": {
                  "initial_learning_rate": 3e-3,
                  "decay_steps": train_steps}},
              "warmup": {"type": "linear", "linear": {
                  "warmup_steps": 100, "warmup_learning_rate": 0.0}},
          })),
      restrictions=list(_RESTRICTIONS))


def _shapes_large(head_type: str = "bipyramid",
                  base_sides: tuple[int, ...] = (44, 60),
                  upscale_factor: float = 1,
                  interpolation: str = "bilinear") -> cfg.ExperimentConfig:
  """One row of Table 1 or 2 on 192-px `shapes_large` images, P2..P4.

  Window sides 60 px at P2 (stride 4) are the paper's V x U = 15 x 15 (44
  px: 11 x 11); P4's 240-px windows hold the largest objects, so higher
  levels would hold none. Sized for about 5 minutes of training on a
  2-core CPU (docs/ablations.md).
  """
  params = tensormask_shapes()
  model = params.task.model
  model.input_size = [192, 192, 3]
  model.max_level = 4
  # Table 2 was measured with the full-width ResNet-18 at 1e-3 (below).
  model.backbone.resnet.depth_multiplier = 1.0
  model.windows.base_sides = list(base_sides)
  model.head.override({"head_type": head_type,
                       "upscale_factor": upscale_factor,
                       "upscale_interpolation": interpolation})
  train_steps = 500
  params.override({
      "task": {
          "annotation_file": os.path.join(SHAPES_LARGE_DIR, "val.json"),
          "train_data": {
              "input_path": os.path.join(SHAPES_LARGE_DIR, "tfrecords",
                                         "train*"),
              "parser": {"mask_caps": [32, 16, 8]}},
          "validation_data": {
              "input_path": os.path.join(SHAPES_LARGE_DIR, "tfrecords",
                                         "val*"),
              "parser": {"mask_caps": [32, 16, 8]}}},
      "trainer": {
          "train_steps": train_steps, "validation_interval": train_steps,
          "checkpoint_interval": train_steps,
          "optimizer_config": {
              "learning_rate": {"cosine": {"initial_learning_rate": 1e-3,
                                           "decay_steps": train_steps}},
              "warmup": {"linear": {"warmup_steps": 50}}}}},
      is_strict=True)
  return params


# Tables 1 and 2's rows (docs/ablations.md): the feature-pyramid heads
# predict one window size, 15 x 15, as in the paper's Table 1 and 2a-2c:
# the simple heads directly, the upscale heads from (15/lam) x (15/lam)
# (lam 1.5: 10 x 10, 3: 5 x 5, 5: 3 x 3).
ABLATION_EXPERIMENTS = {
    "tensormask_shapes_large": dict(),  # Bipyramid, 15 x 15 and 11 x 11.
    "tensormask_shapes_large_bipyramid_15": dict(base_sides=(60,)),
    **{f"tensormask_shapes_large_simple_{representation}":
       dict(head_type=f"simple_{representation}", base_sides=(60,))
       for representation in ("natural", "aligned")},
    **{f"tensormask_shapes_large_upscale_{representation}{suffix}_lam{lam}":
       dict(head_type=f"upscale_{representation}", base_sides=(60,),
            upscale_factor=lam, interpolation=interpolation)
       for lam in (1.5, 3, 5)
       for representation, interpolation, suffix in (
           ("natural", "bilinear", ""), ("aligned", "bilinear", ""),
           ("aligned", "nearest", "_nearest"))},
}

for _name, _kwargs in ABLATION_EXPERIMENTS.items():
  exp_factory.register_config_factory(_name)(
      lambda kwargs=_kwargs: _shapes_large(**kwargs))


def load_experiment(model_dir: str | None = None,
                    experiment: str | None = None,
                    config_files: tuple[str, ...] = (),
                    params_override: str = "") -> cfg.ExperimentConfig:
  """A run's experiment: `<model_dir>/params.yaml` (what train.py saved),
  or the registered `experiment`; then the YAML files and the overrides, in
  that order, on either.

  Raises:
    FileNotFoundError: no params.yaml in model_dir, or a missing YAML file.
    ValueError: neither model_dir nor experiment, both, or an unknown
      experiment.
  """
  if model_dir and experiment:
    raise ValueError(
        "give an experiment only without a model_dir: the run's params.yaml "
        "names its experiment (override it with config files or "
        "params_override)")
  if model_dir:
    path = os.path.join(model_dir, "params.yaml")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} does not exist: is {model_dir} a "
                              "training run's model_dir?")
    params = hyperparams.override_params_dict(
        exp_factory.get_exp_config("tensormask"), path, is_strict=False)
  elif not experiment:
    raise ValueError("give a model_dir or an experiment")
  else:
    try:
      params = exp_factory.get_exp_config(experiment)
    except LookupError as e:  # Model Garden's registry raises LookupError.
      raise ValueError(f"unknown experiment {experiment!r}") from e
  for path in config_files:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"config file {path} does not exist")
    params = hyperparams.override_params_dict(params, path, is_strict=True)
  return hyperparams.override_params_dict(params, params_override,
                                          is_strict=True)
