"""Tests of the tf.data parser: boxes, masks and classes survive decoding,
resizing and flipping, and label_windows sees the right ground truth."""

import numpy as np
import pytest
import tensorflow as tf

from official.vision.dataloaders import tf_example_decoder
from tensormask_tf.configs import tensormask_config
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
  _assert_positives_decode_to(labels, (2 * SIZE, 2 * SIZE),
                              2 * _object_boxes(objects[2]), 1e-3)


def _object_boxes(objects) -> np.ndarray:
  """[G, 4] pixel boxes of the generator's object masks."""
  return np.array([[r.min(), c.min(), r.max() + 1, c.max() + 1] for r, c in
                   (np.nonzero(m) for _, m in objects)], np.float64)


def _assert_positives_decode_to(labels, image_size, boxes, atol):
  """Every positive window's box targets decode to one of `boxes`."""
  windows = windows_lib.generate_windows(SPEC, image_size)
  for level in SPEC.levels:
    positive = labels[f"class_targets_{level}"].numpy().reshape(-1) >= 0
    deltas = labels[f"box_targets_{level}"].numpy().reshape(-1, 4)[positive]
    found = window_targets.decode_window_boxes(
        tf.constant(deltas), tf.constant(windows[level][positive])).numpy()
    for box in found:
      assert np.min(np.abs(boxes - box).max(axis=1)) < atol


def _two_tone(data):
  """The record with its image bright on the left half, dark on the right:
  a parsed image's top-left pixel says whether it was flipped."""
  data = dict(data)
  image = np.zeros((SIZE, SIZE, 3), np.uint8)
  image[:, :SIZE // 2] = 255
  data["image"] = tf.constant(image)
  return data


@pytest.mark.parametrize("short_side", [0, SIZE // 2])
def test_flip_and_scale_jitter_are_independent(shapes, short_side):
  # Model Garden's flip and scale jitter both default to op seed 1, and
  # two random ops with one seed draw the same numbers: every image would
  # be flipped exactly when its scale is in the lower half of the range.
  decoded, _ = shapes
  parser = tensormask_input.Parser(
      (SIZE, SIZE), SPEC, CAPS, aug_rand_hflip=True, aug_scale_min=0.5,
      aug_scale_max=1.0, short_side=short_side, long_side=SIZE)
  dataset = tf.data.Dataset.from_tensors(_two_tone(decoded[0])).repeat(
      200).map(parser._parse_train_data)
  flipped, scales = [], []
  for image, labels in dataset:
    flipped.append(bool(image[0, 0, 0] < 0))
    scales.append(float(labels["image_info"][2, 0]))
  flipped, scales = np.array(flipped), np.array(scales) / (
      (short_side or SIZE) / SIZE)  # In units of the unjittered scale.
  assert scales.min() < 0.6 and scales.max() > 0.9  # Covers [0.5, 1].
  low, high = scales < 0.74, scales > 0.76
  assert 0.3 < flipped.mean() < 0.7
  for scale_range in (low, high):
    assert 0.1 < (flipped & scale_range).mean()
    assert 0.1 < (~flipped & scale_range).mean()


def test_short_side_jitter_scales_image_boxes_and_masks_together(shapes):
  # docs/training.md's "short-side scale jitter 640..800", at this test's size.
  decoded, objects = shapes
  parser = tensormask_input.Parser(
      (2 * SIZE, 2 * SIZE), SPEC, CAPS, short_side=SIZE, long_side=2 * SIZE,
      aug_scale_min=0.8, aug_scale_max=1.6)
  boxes = _object_boxes(objects[2])
  sides = set()
  for _ in range(5):
    image, labels = parser._parse_train_data(decoded[2])
    info = labels["image_info"].numpy()
    scaled = info[1].astype(int)
    sides.add(scaled[0])
    assert 0.8 * SIZE - 1 <= scaled[0] <= 1.6 * SIZE + 1
    np.testing.assert_allclose(info[2], info[1] / info[0], rtol=1e-6)
    assert not np.asarray(image)[scaled[0]:].any()  # The padding.
    _assert_positives_decode_to(labels, (2 * SIZE, 2 * SIZE),
                                boxes * info[2, 0], 1e-2)
  assert len(sides) > 1


def test_masks_end_where_a_scaled_up_crop_ends(shapes):
  # A jitter above 1 crops the scaled image to output_size (56) and pads
  # it to the stride multiple (64): the masks must not reach into the pad.
  decoded, _ = shapes
  parser = tensormask_input.Parser((56, 56), SPEC, CAPS, aug_scale_min=1.5,
                                   aug_scale_max=1.5)
  windows = windows_lib.generate_windows(SPEC, parser.padded_size)
  grid = {k: -(-parser.padded_size[1] // SPEC.stride(k)) for k in SPEC.levels}
  in_pad = 0
  for data in decoded:
    _, labels = parser._parse_train_data(data)
    for level in SPEC.levels:
      for a in range(SPEC.num_sizes):
        key = lambda what: window_labeler.mask_label_key(level, a, what)
        valid = labels[key("valid")].numpy() > 0
        for (y, x), target in zip(labels[key("indices")].numpy()[valid],
                                  labels[key("targets")].numpy()[valid]):
          box = windows[level][(y * grid[level] + x) * SPEC.num_sizes + a]
          pixel = (box[2] - box[0]) / target.shape[0]
          rows = box[0] + pixel * np.arange(target.shape[0])
          cols = box[1] + pixel * np.arange(target.shape[1])
          pad = (rows[:, None] >= 56) | (cols[None, :] >= 56)
          in_pad += pad.sum()
          assert not target[pad].any()
  assert in_pad > 0  # Some positive windows do reach into the pad.


@pytest.mark.parametrize("key,value,message", [
    ("groundtruth_classes", lambda n: np.full(n, 9), "class ids are outside"
     " 1..4"),
    ("groundtruth_classes", lambda n: np.arange(n), "class ids are outside"),
    ("groundtruth_is_crowd", lambda n: np.zeros(n + 1, bool),
     "crowd flags disagree"),
    ("groundtruth_instance_masks",
     lambda n: np.zeros((n, SIZE, SIZE + 2), np.float32),
     "masks are not the size of its image"),
    ("groundtruth_instance_masks",
     lambda n: np.full((n, SIZE, SIZE), 255.0, np.float32),
     "values outside 0..1 \\(0/255 masks\\? set the decoder's "
     "mask_binarize_threshold"),
])
def test_inconsistent_records_name_the_record(shapes, key, value, message):
  decoded, _ = shapes
  data = dict(decoded[1])
  data[key] = tf.constant(value(int(tf.shape(data["groundtruth_boxes"])[0])))
  parser = tensormask_input.Parser((SIZE, SIZE), SPEC, CAPS, num_classes=4)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f"(?s){message}.*source_id:.*2"):
    parser._parse_eval_data(data)


def test_category_ids_map_to_the_models_classes(shapes):
  # COCO's 80 ids: the records' ids 1, 90, 6 and 13 are classes 0, 79, 5
  # and 11; id 12 is not one of them and fails naming the record.
  decoded, objects = shapes
  coco_ids = tensormask_config.COCO_CATEGORY_IDS
  classes = [0, 79, 5, 11]  # of the generator's categories 0..3
  parser = tensormask_input.Parser((SIZE, SIZE), SPEC, CAPS, num_classes=80,
                                   category_ids=coco_ids)
  for data, objs in zip(decoded, objects):
    data = dict(data)
    data["groundtruth_classes"] = tf.constant(
        [coco_ids[classes[c]] for c, _ in objs], tf.int64)
    _, labels = parser._parse_eval_data(data)
    _assert_same_labels(labels, _direct_labels(
        [(classes[c], m) for c, m in objs]))
  assert {1, 90} <= {coco_ids[classes[c]] for objs in objects for c, _ in objs}
  data = dict(decoded[1])
  data["groundtruth_classes"] = tf.constant(
      [12] + [1] * (len(objects[1]) - 1), tf.int64)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="(?s)class ids are not in the model's category_ids"
                     ".*source_id:.*2"):
    parser._parse_eval_data(data)
  with pytest.raises(ValueError, match="79 category_ids for num_classes 80"):
    tensormask_input.Parser((SIZE, SIZE), SPEC, CAPS, num_classes=80,
                            category_ids=coco_ids[1:])


@pytest.mark.parametrize("short_side,height,width", [
    (64, 30, 41),  # 64 x 87; Model Garden's masks were 64 x 86
    (64, 31, 58),  # 64 x 120; were 64 x 119
    (0, 30, 41),   # fit to 128 x 128: 94 x 128 (row 1 was 128 x 128)
])
def test_masks_cover_exactly_the_resized_image(short_side, height, width):
  _, info = tensormask_input.resize_image(
      tf.zeros([height, width, 3]), (128, 128), (128, 128), short_side,
      128 if short_side else 0)
  info = info.numpy()
  if short_side:
    scale = min(short_side / min(height, width), 128 / max(height, width))
  else:
    scale = min(128 / height, 128 / width)
  extent = np.round(np.array([height, width]) * scale).astype(int)
  np.testing.assert_array_equal(info[1], extent)
  rows, cols = np.mgrid[:height, :width]
  masks = np.stack([np.ones((height, width)), cols % 2, rows % 3 == 0,
                    (rows * 7 + cols * 3) % 5 < 2]).astype(np.float32)
  got = tensormask_input.resize_masks(tf.constant(masks), tf.constant(info),
                                      (128, 128)).numpy()
  # Nearest neighbour with half-pixel centres, in float64 (checked to be
  # away from ties, where float32 could round the other way).
  source = []
  for size, new in zip((height, width), extent):
    position = (np.arange(new) + 0.5) * size / new
    assert np.abs(position - np.round(position)).min() > 1e-4
    source.append(np.minimum(np.floor(position).astype(int), size - 1))
  want = np.zeros((len(masks), 128, 128), np.float32)
  want[:, :extent[0], :extent[1]] = masks[:, source[0]][:, :, source[1]]
  np.testing.assert_array_equal(got, want)


def test_masks_of_an_image_without_objects_resize_to_none():
  _, info = tensormask_input.resize_image(tf.zeros([30, 41, 3]), (128, 128),
                                          (128, 128), 64, 128)
  got = tensormask_input.resize_masks(tf.zeros([0, 5, 5]), info, (128, 128))
  assert got.shape == (0, 128, 128)


def test_mask_targets_ring_sits_at_the_image_not_the_padding(shapes):
  # The release's mask targets read the edge pixel once more beyond the
  # image (a replicated ring), then 0. A 64 x 64 image padded to 128 x 128
  # with an 8 x 8 object in its bottom-right corner: its centred P2 window
  # [54, 54, 66, 66] has cells on rows (and columns) 54..57, 58..61, 62..65
  # holding 2, 4 and 2 object rows + 1 ring row: the corner cell has 4 object
  # and 5 ring pixels of 16 (a 1), which the padding would make a 0.
  from tests import test_training_targets  # pylint: disable=g-import-not-at-top
  decoded, _ = shapes
  data = dict(decoded[0])
  mask = np.zeros((1, SIZE, SIZE), np.float32)
  mask[0, SIZE - 8:, SIZE - 8:] = 1.0
  data["groundtruth_instance_masks"] = tf.constant(mask)
  data["groundtruth_boxes"] = tf.constant([[(SIZE - 8) / SIZE] * 2 + [1.0] * 2])
  data["groundtruth_classes"] = tf.constant([1], tf.int64)
  data["groundtruth_is_crowd"] = tf.constant([False])
  parser = tensormask_input.Parser((2 * SIZE, 2 * SIZE), SPEC, CAPS,
                                   short_side=SIZE, long_side=SIZE)
  _, labels = parser._parse_eval_data(data)
  np.testing.assert_array_equal(labels["image_info"][1], [SIZE, SIZE])
  padded = np.pad(mask[0], [[0, SIZE], [0, SIZE]])
  windows = windows_lib.generate_windows(SPEC, (2 * SIZE, 2 * SIZE))
  checked = 0
  for level in SPEC.levels:
    grid_w = 2 * SIZE // SPEC.stride(level)
    for a in range(SPEC.num_sizes):
      key = lambda what: window_labeler.mask_label_key(level, a, what)
      side = SPEC.mask_sides[a] * SPEC.upscale(level)
      for j in np.flatnonzero(labels[key("valid")].numpy()):
        y, x = labels[key("indices")].numpy()[j]
        box = windows[level].reshape(-1, SPEC.num_sizes, 4)[y * grid_w + x, a]
        want = test_training_targets._release_mask_target(
            padded, (SIZE, SIZE), box, side)
        np.testing.assert_array_equal(labels[key("targets")].numpy()[j], want)
        if level == 2 and a == 0 and (y, x) == (15, 15):
          np.testing.assert_array_equal(want, [[0, 1, 0], [1, 1, 1],
                                               [0, 1, 1]])
          checked += 1
  assert checked == 1


@pytest.mark.parametrize("size,short_side,long_side,expected", [
    ((1024, 1536), 800, 1333, (800, 1200)),  # shrinking: PIL's wider filter
    ((256, 384), 800, 1333, (800, 1200)),  # enlarging
    ((480, 1600), 800, 1333, (400, 1333)),  # the long side binds
])
def test_short_side_resize_is_the_releases(size, short_side, long_side,
                                           expected):
  # The release resizes uint8 images with PIL's bilinear filter (detectron2's
  # ResizeShortestEdge): ours within PIL's rounding to uint8, at the sizes
  # detectron2 computes (int(side * scale + 0.5)).
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  # A smooth picture with edges, as photos have (noise would alias).
  yy, xx = np.mgrid[0:size[0], 0:size[1]] / 37.0
  base = 127 + 80 * np.sin(yy) * np.cos(xx * 1.3)
  image = np.clip(base[..., None] + rng.normal(0, 3, (*size, 3)) +
                  60 * ((yy + xx) % 4 > 2)[..., None], 0, 255).astype(np.uint8)
  scale = short_side / min(size)
  if max(size) * scale > long_side:
    scale = long_side / max(size)
  height, width = (int(v * scale + 0.5) for v in size)
  assert (height, width) == expected
  release = np.asarray(Image.fromarray(image).resize((width, height),
                                                     Image.BILINEAR))
  ours, info = tensormask_input.resize_short_side(
      tf.constant(image, tf.float32), short_side, long_side, (1344, 1344))
  np.testing.assert_array_equal(info.numpy()[1], expected)
  assert np.all(ours.numpy()[height:] == 0) and np.all(
      ours.numpy()[:, width:] == 0)
  difference = np.abs(ours.numpy()[:height, :width] - release)
  assert difference.max() <= 1.0 + 1e-3, difference.max()
