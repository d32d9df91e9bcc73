"""Joins the shards of a sharded predict.py run into one detections.json.

    # on each of 4 machines (or 4 processes), i = 0..3, one shared folder:
    python scripts/predict.py --model_dir=runs/tensormask_shapes \
        --image='data/shapes/val/*.png' --output_dir=/tmp/predictions \
        --num_shards=4 --shard_index=i
    # when all have finished:
    python scripts/merge_predictions.py --output_dir=/tmp/predictions

Reads <output_dir>/detections-0000i-of-0000N.jsonl of every shard i,
checks that each holds exactly its images (those whose index in the sorted
--image list is i modulo N, each once; their headers give N and the
list's length) and writes <output_dir>/detections.json with all the
entries in image order, as one unsharded run writes it. A missing shard,
a shard with images missing (not finished, or failed: rerun its command)
or of another run is named, and nothing is written (exit status 1).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tensormask_tf.serving import batch_prediction  # noqa: E402

_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "The folder of the shards' journals (predict.py's "
    "--output_dir); detections.json is written there.", required=True)


def main(_):
  try:
    shards, images, entries = batch_prediction.merge(_OUTPUT_DIR.value)
  except batch_prediction.JournalError as e:
    sys.exit(f"merge_predictions.py: error: {e}")
  print(f"{shards} shards, {images} images, {entries} detections -> "
        f"{os.path.join(_OUTPUT_DIR.value, 'detections.json')}")


if __name__ == "__main__":
  app.run(main)
