"""Shared pytest setup: the package's environment defaults apply before TF loads."""

import pytest

import tensormask_tf  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL, TF_USE_LEGACY_KERAS)


@pytest.fixture(scope="session")
def shapes_records(tmp_path_factory):
  """A tiny shapes dataset at 128 px: 8 train and 4 val images, as COCO
  JSON + TFRecords. Returns {"root", "train", "val", "val_json"}."""
  from tensormask_tf.data import coco_tfrecord  # pylint: disable=g-import-not-at-top
  from tensormask_tf.data import shapes_dataset  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("shapes_records")
  out = {"root": str(root)}
  for split, count, seed in (("train", 8, 0), ("val", 4, 1)):
    json_path = shapes_dataset.write_shapes_dataset(
        str(root), split, count, height=128, width=128, max_objects=3,
        seed=seed)
    coco_tfrecord.write_coco_tfrecords(
        json_path, str(root / split), str(root / "tfrecords" / split), 2)
    out[split] = str(root / "tfrecords" / f"{split}*")
    out[f"{split}_json"] = json_path
  return out


@pytest.fixture(scope="session")
def release_checkpoint_seed38():
  """The release reference checkpoint (tests/release_checkpoint.py, seed
  38: the one behind tests/data/detectron2_reference/), generated once per
  session: {detectron2 key: float32 array}, 36.6M values. Do not modify."""
  from tests import release_checkpoint  # pylint: disable=g-import-not-at-top
  return release_checkpoint.build(38)
