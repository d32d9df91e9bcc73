"""Converts COCO instances JSON + images into TFRecords (Model Garden format).

(Flag names avoid those that Model Garden's converter module registers.)

    python scripts/create_coco_tfrecord.py \
      --annotations_file=instances_train2017.json --images_dir=train2017 \
      --output_prefix=/data/coco/train --shards=256
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from tensormask_tf.data import coco_tfrecord  # noqa: E402

_ANNOTATIONS = flags.DEFINE_string("annotations_file", None,
                                   "COCO instances JSON.", required=True)
_IMAGE_DIR = flags.DEFINE_string("images_dir", None, "Directory of the images.",
                                 required=True)
_OUTPUT = flags.DEFINE_string("output_prefix", None,
                              "Output path prefix of the shards.",
                              required=True)
_SHARDS = flags.DEFINE_integer("shards", 8, "Number of output shards.",
                               lower_bound=1)


def main(_):
  try:
    paths = coco_tfrecord.write_coco_tfrecords(
        _ANNOTATIONS.value, _IMAGE_DIR.value, _OUTPUT.value, _SHARDS.value)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"create_coco_tfrecord: {e}")
  print(f"wrote {len(paths)} shards: {paths[0]} ...")


if __name__ == "__main__":
  app.run(main)
