"""Trains and/or evaluates a TensorMask experiment.

    python scripts/train.py --flagfile=configs/tensormask_shapes.flags
    python scripts/train.py --experiment=tensormask_r50_fpn_coco_1x \
        --config_file=configs/tensormask_r50_fpn_coco_1x.yaml \
        --model_dir=/tmp/tm --mode=train_and_eval

Exits non-zero with a one-line message on a bad experiment, config, override
or missing data.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from tensormask_tf import train  # noqa: E402


def main(argv):
  try:
    train.main(argv)
  except (train.ConfigError, train.InputDataError, FileNotFoundError) as e:
    # Only the first line: gin appends its call stack to the message.
    sys.exit(f"train.py: error: {str(e).splitlines()[0]}")


if __name__ == "__main__":
  train.define_flags()
  flags.mark_flags_as_required(["experiment", "mode", "model_dir"])
  app.run(main)
