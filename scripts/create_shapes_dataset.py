"""Writes the synthetic shapes dataset: COCO JSON + PNGs + TFRecords.

    python scripts/create_shapes_dataset.py --output_dir=/tmp/shapes
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from tensormask_tf.data import coco_tfrecord  # noqa: E402
from tensormask_tf.data import shapes_dataset  # noqa: E402

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write.",
                                  required=True)
_NUM_TRAIN = flags.DEFINE_integer("num_train", 200, "Training images.")
_NUM_VAL = flags.DEFINE_integer("num_val", 50, "Validation images.")
_SIZE = flags.DEFINE_integer("size", 128, "Image height and width.")
_MAX_OBJECTS = flags.DEFINE_integer("max_objects", 4, "Objects per image.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (val uses seed + 1).")
_VARIANT = flags.DEFINE_enum(
    "variant", "shapes", list(shapes_dataset.VARIANTS),
    "shapes: the quickstart's; shapes_large: the Table 2 ablations' "
    "(docs/ablations.md).")
_SHARDS = flags.DEFINE_integer("shards", 2, "TFRecord shards per split.",
                               lower_bound=1)


def main(_):
  for split, count, seed in (("train", _NUM_TRAIN.value, _SEED.value),
                             ("val", _NUM_VAL.value, _SEED.value + 1)):
    json_path = shapes_dataset.write_shapes_dataset(
        _OUTPUT_DIR.value, split, count, height=_SIZE.value,
        width=_SIZE.value, max_objects=_MAX_OBJECTS.value, seed=seed,
        variant=_VARIANT.value)
    paths = coco_tfrecord.write_coco_tfrecords(
        json_path, os.path.join(_OUTPUT_DIR.value, split),
        os.path.join(_OUTPUT_DIR.value, "tfrecords", split), _SHARDS.value)
    print(f"{split}: {count} images, {json_path}, {len(paths)} shards")


if __name__ == "__main__":
  app.run(main)
