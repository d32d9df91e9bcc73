"""The checkpoint converter's driver: a detectron2 TensorMask checkpoint ->
a model_dir (params.yaml + TF checkpoint), or an MSRA ImageNet backbone ->
a backbone checkpoint. `scripts/convert_detectron2_checkpoint.py` is its
command line; the weight mapping is `modeling/detectron2_converter.py`.
"""

import os

import tensorflow as tf
import tf_keras

from official.core import train_utils
from tensormask_tf.configs import experiments
from tensormask_tf.modeling import detectron2_converter as converter
from tensormask_tf.modeling.backbones import msra_resnet
from tensormask_tf.tasks import tensormask as tensormask_task

DEFAULT_EXPERIMENTS = {50: "tensormask_r50_fpn_coco_1x",
                       101: "tensormask_r101_fpn_coco_6x"}


def convert(checkpoint: str, output_dir: str, experiment: str | None = None,
            params_override: str = "") -> str:
  """Converts `checkpoint` into `output_dir`; returns a report of what was
  written and how to use it.

  Args:
    checkpoint: a detectron2 TensorMask `.pkl` (or `.pth` with torch), or an
      MSRA/Caffe2 ImageNet ResNet `.pkl`.
    output_dir: a new or empty directory.
    experiment: the registered experiment whose config goes to params.yaml
      (default by depth: DEFAULT_EXPERIMENTS); it must use the
      `msra_resnet` backbone.
    params_override: overrides of that experiment.

  Raises:
    FileNotFoundError, ValueError (converter.CheckpointMismatchError for
    keys that are not the model's), FileExistsError; nothing is written
    then.
  """
  params = converter.read_checkpoint(checkpoint)
  if not any(key.startswith("backbone.") for key in params):
    params = converter.caffe2_to_detectron2_names(params)
  layout = converter.release_layout(params, checkpoint)
  converter.output_is_free(output_dir)
  experiment = experiment or DEFAULT_EXPERIMENTS[layout.depth]
  config = experiments.load_experiment(experiment=experiment,
                                       params_override=params_override)
  model_config = config.task.model
  if model_config.backbone.type != "msra_resnet":
    raise ValueError(f"experiment {experiment!r} has backbone "
                     f"{model_config.backbone.type!r}; the release's weights "
                     "need 'msra_resnet'")
  model_config.backbone.msra_resnet.model_id = layout.depth
  if not layout.has_head:
    backbone = msra_resnet.msra_resnet(
        tf_keras.layers.InputSpec(shape=[None, None, None, 3]),
        model_id=layout.depth,
        freeze_at=model_config.backbone.msra_resnet.freeze_at)
    converter.assign_release_weights(None, backbone, params, checkpoint)
    path = tf.train.Checkpoint(backbone=backbone).save(
        os.path.join(output_dir, "ckpt"))
    return (f"wrote the ResNet-{layout.depth} backbone to {path}; train "
            f"with --params_override=task.init_checkpoint={output_dir},"
            "task.init_checkpoint_modules=backbone")
  if layout.num_classes != model_config.num_classes:
    # Another dataset than COCO: class k is category id k + 1.
    model_config.num_classes = layout.num_classes
    model_config.category_ids = []
  model_config.windows.base_sides = [
      side * 2**model_config.min_level for side in layout.mask_sides]
  model = tensormask_task.TensorMaskTask(config.task).build_model()
  converter.assign_release_weights(model, None, params, checkpoint)
  tf.io.gfile.makedirs(output_dir)
  train_utils.serialize_config(config, output_dir)
  # Under "model" for predict.py, export and train.py's resumption; under
  # backbone/decoder/head for task.init_checkpoint (the same variables).
  path = tf.train.Checkpoint(model=model, **model.checkpoint_items).save(
      os.path.join(output_dir, "ckpt"))
  return (f"wrote {output_dir}/params.yaml and {path} (ResNet-{layout.depth}, "
          f"{layout.num_classes} classes, mask sides {layout.mask_sides}); "
          f"predict.py and export_saved_model.py take --model_dir={output_dir}"
          f"; fine-tune with --params_override=task.init_checkpoint="
          f"{output_dir},task.init_checkpoint_modules=all")
