"""Tests of the tf.data parser: boxes, masks and classes survive decoding,
resizing and flipping, and label_windows sees the right ground truth."""

import numpy as np
import pytest
import tensorflow as tf

from official.vision.dataloaders import tf_example_decoder
from tensormask_tf.data import coco_tfrecord
from tensormask_tf.data import shapes_dataset
from tensormask_tf.dataloaders import tensormask_input
from tensormask_tf.ops import window_labeler
from tensormask_tf.ops import window_targets
from tensormask_tf.ops import windows as windows_lib

SIZE = 64
SPEC = windows_lib.WindowSpec(min_level=2, max_level=4, base_sides=(12, 20))
CAPS = {2: 64, 3: 64, 4: 64}  # Large enough that no positive is dropped.


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  """Decoded records of 4 shapes images and the generator's own objects."""
  root = tmp_path_factory.mktemp("shapes")
  json_path = shapes_dataset.write_shapes_dataset(
      str(root), "train", 4, height=SIZE, width=SIZE, seed=3)
  rng = np.random.RandomState(3)
  objects = [shapes_dataset.generate_image(SIZE, SIZE, 4, rng)[1]
             for _ in range(4)]
  paths = coco_tfrecord.write_coco_tfrecords(
      json_path, str(root / "train"), str(root / "rec"), num_shards=1)
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
  decoded = sorted((decoder.decode(r) for r in tf.data.TFRecordDataset(paths)),
                   key=lambda d: int(d["source_id"]))
  return decoded, objects


def _direct_labels(objects, scale=1.0, flip=False):
  masks = np.stack([m for _, m in objects]).astype(np.float32)
  if flip:
    masks = masks[:, :, ::-1]
  if scale != 1.0:
    masks = np.repeat(np.repeat(masks, int(scale), 1), int(scale), 2)
  boxes = []
  for m in masks:
    rows, cols = np.nonzero(m)
    boxes.append([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1])
  size = int(SIZE * scale)
  return window_labeler.label_windows(
      SPEC, (size, size), np.array(boxes, np.float32),
      [c for c, _ in objects], masks, CAPS)


def _assert_same_labels(got, want):
  for level in SPEC.levels:
    np.testing.assert_array_equal(got[f"class_targets_{level}"],
                                  want[f"class_targets_{level}"])
    np.testing.assert_allclose(got[f"box_targets_{level}"],
                               want[f"box_targets_{level}"], atol=1e-4)
    for a in range(SPEC.num_sizes):
      key = lambda what: window_labeler.mask_label_key(level, a, what)

      def by_cell(labels):
        valid = labels[key("valid")].numpy() > 0
        cells = [tuple(c) for c in labels[key("indices")].numpy()[valid]]
        targets = labels[key("targets")].numpy()[valid]
        return dict(zip(cells, targets))

      got_cells, want_cells = by_cell(got), by_cell(want)
      assert got_cells.keys() == want_cells.keys()
      for cell in got_cells:
        np.testing.assert_array_equal(got_cells[cell], want_cells[cell])
  assert float(got["num_positives"]) == float(want["num_positives"]) > 0


def test_eval_parse_keeps_the_ground_truth(shapes):
  decoded, objects = shapes
  parser = tensormask_input.Parser((SIZE, SIZE), SPEC, CAPS)
  for data, objs in zip(decoded, objects):
    image, labels = parser._parse_eval_data(data)
    assert image.shape == (SIZE, SIZE, 3)
    _assert_same_labels(labels, _direct_labels(objs))


def test_resize_scales_boxes_and_masks(shapes):
  decoded, objects = shapes
  parser = tensormask_input.Parser((2 * SIZE, 2 * SIZE), SPEC, CAPS)
  image, labels = parser._parse_eval_data(decoded[0])
  assert image.shape == (2 * SIZE, 2 * SIZE, 3)
  np.testing.assert_allclose(labels["image_info"][2], [2.0, 2.0])
  _assert_same_labels(labels, _direct_labels(objects[0], scale=2.0))


def test_flip_flips_image_boxes_and_masks_together(shapes):
  decoded, objects = shapes
  parser = tensormask_input.Parser((SIZE, SIZE), SPEC, CAPS,
                                   aug_rand_hflip=True, aug_flip_prob=1.0)
  plain = tensormask_input.Parser((SIZE, SIZE), SPEC, CAPS)
  for data, objs in zip(decoded, objects):
    image, labels = parser._parse_train_data(data)
    unflipped, _ = plain._parse_eval_data(data)
    np.testing.assert_allclose(image, unflipped[:, ::-1], atol=1e-6)
    _assert_same_labels(labels, _direct_labels(objs, flip=True))


def test_masks_disagreeing_with_boxes_name_the_record(shapes):
  decoded, _ = shapes
  data = dict(decoded[1])
  data["groundtruth_instance_masks"] = data["groundtruth_instance_masks"][:0]
  parser = tensormask_input.Parser((SIZE, SIZE), SPEC, CAPS)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="(?s)disagree with its box count; source_id:.*2"):
    parser._parse_eval_data(data)


def test_image_without_objects_gives_no_positives(shapes):
  decoded, _ = shapes
  data = dict(decoded[0])
  for key in ("groundtruth_classes", "groundtruth_is_crowd",
              "groundtruth_boxes", "groundtruth_instance_masks"):
    data[key] = data[key][:0]
  _, labels = tensormask_input.Parser((SIZE, SIZE), SPEC, CAPS
                                      )._parse_eval_data(data)
  assert float(labels["num_positives"]) == 0
  assert (labels["class_targets_2"].numpy() == -1).all()


def test_box_targets_decode_to_scaled_boxes(shapes):
  decoded, objects = shapes
  parser = tensormask_input.Parser((2 * SIZE, 2 * SIZE), SPEC, CAPS)
  _, labels = parser._parse_eval_data(decoded[2])
  windows = windows_lib.generate_windows(SPEC, (2 * SIZE, 2 * SIZE))
  boxes = []
  for m in (m for _, m in objects[2]):
    rows, cols = np.nonzero(m)
    boxes.append(2 * np.array([rows.min(), cols.min(), rows.max() + 1,
                               cols.max() + 1]))
  for level in SPEC.levels:
    positive = labels[f"class_targets_{level}"].numpy().reshape(-1) >= 0
    deltas = labels[f"box_targets_{level}"].numpy().reshape(-1, 4)[positive]
    decoded_boxes = window_targets.decode_window_boxes(
        tf.constant(deltas), tf.constant(windows[level][positive])).numpy()
    for box in decoded_boxes:
      assert np.min(np.abs(np.array(boxes) - box).max(axis=1)) < 1e-3
