"""Converts the authors' detectron2 TensorMask weights into a model_dir.

    python scripts/convert_detectron2_checkpoint.py \
        --checkpoint=model_final.pkl --output_dir=runs/tensormask_r50_1x_release

A TensorMask model (the release's model zoo `.pkl`, or a detectron2 run's
`.pth` where torch is installed) becomes a model_dir: `params.yaml` (the
COCO experiment of its depth, with the file's classes and window sizes) and a
TF checkpoint, which `scripts/predict.py --model_dir`,
`scripts/export_saved_model.py --model_dir` and `scripts/train.py` (to
fine-tune: `--params_override=task.init_checkpoint=<output_dir>,
task.init_checkpoint_modules=all`) take as they are. An MSRA ImageNet
backbone (`R-50.pkl`, `R-101.pkl`) becomes a backbone checkpoint for the
COCO experiments' `task.init_checkpoint`.
A file that is not exactly the model (missing, unexpected or misshapen
keys) is refused with the keys named, and nothing is written.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tensormask_tf import registry_imports  # noqa: E402,F401
from tensormask_tf import convert  # noqa: E402

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "detectron2 .pkl/.pth, or an MSRA ImageNet .pkl.",
    required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None,
                                  "Where to write (must be new or empty).",
                                  required=True)
_EXPERIMENT = flags.DEFINE_string(
    "experiment", None,
    "The registered experiment written to params.yaml (default: "
    "tensormask_r50_fpn_coco_1x or tensormask_r101_fpn_coco_6x by depth).")
_PARAMS_OVERRIDE = flags.DEFINE_string(
    "params_override", "", "key=value overrides of that experiment.")


def main(_):
  try:
    report = convert.convert(_CHECKPOINT.value, _OUTPUT_DIR.value,
                             _EXPERIMENT.value, _PARAMS_OVERRIDE.value)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f"convert_detectron2_checkpoint.py: error: {e}")
  print(report)


if __name__ == "__main__":
  app.run(main)
