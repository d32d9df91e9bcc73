"""Tests of the per-image window labels and the batch loss assembly."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tensormask_tf import losses
from tensormask_tf.ops import window_labeler
from tensormask_tf.ops import window_targets
from tensormask_tf.ops import windows as windows_lib
from tests import test_windows

SPEC = windows_lib.WindowSpec(min_level=2, max_level=4, base_sides=(12, 20))
SIZE = (64, 64)
CAPS = {2: 16, 3: 16, 4: 16}


def _scene():
  masks = np.zeros((3, 64, 64), np.float32)
  masks[0, 10:20, 10:22] = 1
  masks[1, 30:50, 30:46] = 1
  masks[1, 30:34, 30:34] = 0  # A notch, so targets are not just boxes.
  masks[2, 2:6, 2:6] = 1
  boxes = np.array([[10, 10, 20, 22], [30, 30, 50, 46], [2, 2, 6, 6]],
                   np.float32)
  return boxes, masks


def _flat(labels, key):
  return np.concatenate([labels[f"{key}_{k}"].numpy().reshape(-1, *(
      [4] if key == "box_targets" else [])) for k in SPEC.levels])


def test_labels_follow_the_assignment_rule_and_targets():
  boxes, masks = _scene()
  classes = np.array([1, 2, -1])  # The third is padding.
  labels = window_labeler.label_windows(SPEC, SIZE, boxes, classes, masks,
                                        CAPS, seed=0)
  windows = np.concatenate([w for _, w in sorted(
      windows_lib.generate_windows(SPEC, SIZE).items())])
  units = np.concatenate([u for _, u in sorted(
      windows_lib.unit_lengths(SPEC, SIZE).items())])
  matched, positive = test_windows._assign_loops(
      boxes[:2], windows, units, SPEC.min_window_size)
  want_classes = np.where(np.array(positive) == 1, classes[matched], -1)
  got_classes = _flat(labels, "class_targets")
  np.testing.assert_array_equal(got_classes, want_classes)
  assert float(labels["num_positives"]) == sum(positive) > 0
  # Box targets decode back to the matched boxes at positives, zero elsewhere.
  deltas = _flat(labels, "box_targets")
  pos = got_classes >= 0
  decoded = window_targets.decode_window_boxes(tf.constant(deltas[pos]),
                                               tf.constant(windows[pos]))
  np.testing.assert_allclose(decoded, boxes[np.array(matched)[pos]], atol=1e-3)
  assert not deltas[~pos].any()
  # Mask targets of every kept positive equal the block-average reference.
  checked = 0
  for level in SPEC.levels:
    grid_w = SIZE[1] // SPEC.stride(level)
    level_windows = windows_lib.generate_windows(SPEC, SIZE)[level].reshape(
        -1, 2, 4)
    level_classes = labels[f"class_targets_{level}"].numpy().reshape(-1, 2)
    for a in range(2):
      key = lambda what: window_labeler.mask_label_key(level, a, what)
      valid = labels[key("valid")].numpy()
      cells = labels[key("indices")].numpy()
      side = SPEC.mask_sides[a] * SPEC.upscale(level)
      assert int(valid.sum()) == int((level_classes[:, a] >= 0).sum())
      for j in np.flatnonzero(valid):
        cell = cells[j, 0] * grid_w + cells[j, 1]
        assert level_classes[cell, a] >= 0
        box = level_windows[cell, a]
        gt = matched[_window_index(level, cell, a)]
        want = test_windows._mask_targets_reference(masks[gt], box, side,
                                                    SPEC.min_level_stride)
        np.testing.assert_array_equal(labels[key("targets")].numpy()[j], want)
        checked += 1
  assert checked == sum(positive)


def _window_index(level, cell, a):
  """Index of window (cell, a) of a level among all levels' windows."""
  before = sum((SIZE[0] // SPEC.stride(k)) * (SIZE[1] // SPEC.stride(k)) * 2
               for k in SPEC.levels if k < level)
  return before + cell * 2 + a


def test_crowd_and_padding_never_make_positives():
  boxes, masks = _scene()
  labels = window_labeler.label_windows(
      SPEC, SIZE, boxes, [1, -1, 0], masks, CAPS,
      gt_is_crowd=[True, False, True])
  assert float(labels["num_positives"]) == 0
  assert (_flat(labels, "class_targets") == -1).all()
  for level in SPEC.levels:
    for a in range(2):
      key = window_labeler.mask_label_key(level, a, "valid")
      assert not labels[key].numpy().any()


def test_cap_keeps_a_weighted_sample_and_counts_the_rest():
  boxes, masks = _scene()
  full = window_labeler.label_windows(SPEC, SIZE, boxes, [1, 2, 0], masks,
                                      CAPS, seed=0)
  capped = window_labeler.label_windows(SPEC, SIZE, boxes, [1, 2, 0], masks,
                                        {2: 1, 3: 1, 4: 1}, seed=0)
  want_dropped = 0
  for level in SPEC.levels:
    for a in range(2):
      key = window_labeler.mask_label_key(level, a, "valid")
      n = int(full[key].numpy().sum())
      assert capped[key].shape == (1,)
      assert int(np.count_nonzero(capped[key].numpy())) == min(n, 1)
      # The kept window stands for all n: its mask loss has weight n, so
      # the loss estimates the sum over every positive without bias.
      assert float(capped[key].numpy().sum()) == n
      want_dropped += max(n - 1, 0)
  assert want_dropped > 0
  assert float(capped["num_mask_positives_dropped"]) == want_dropped
  assert float(full["num_mask_positives_dropped"]) == 0


def test_batch_losses_match_a_numpy_computation():
  rng = np.random.RandomState(0)
  batch, num_classes, levels = 2, 3, [2, 3]
  grids = {2: 4, 3: 2}
  outputs = {"class_outputs": {}, "box_outputs": {}}
  labels = {"num_positives": np.array([2.0, 1.0], np.float32)}
  dense_masks, want = {}, {"class": 0.0, "box": 0.0, "mask": 0.0}
  for level in levels:
    g = grids[level]
    logits = rng.randn(batch, g, g, 2 * num_classes).astype(np.float32)
    deltas = rng.randn(batch, g, g, 8).astype(np.float32)
    classes = rng.randint(-1, num_classes, (batch, g, g, 2))
    box_t = rng.randn(batch, g, g, 8).astype(np.float32)
    outputs["class_outputs"][str(level)] = tf.constant(logits)
    outputs["box_outputs"][str(level)] = tf.constant(deltas)
    labels[f"class_targets_{level}"] = classes
    labels[f"box_targets_{level}"] = box_t
    one_hot = np.eye(num_classes)[np.maximum(classes, 0)] * (
        classes >= 0)[..., None]
    x = logits.reshape(batch, g, g, 2, num_classes).astype(np.float64)
    x_t = np.where(one_hot == 1, x, -x)
    want["class"] += np.sum(np.logaddexp(0, -3 * x_t) / 3 *
                            np.where(one_hot == 1, 0.3, 0.7))
    want["box"] += np.sum(np.abs(deltas.reshape(batch, g, g, 2, 4) -
                                 box_t.reshape(batch, g, g, 2, 4)).sum(-1) *
                          (classes >= 0))
    for a in range(2):
      side = 2 + a
      dense = rng.randn(batch, g, g, side, side).astype(np.float32)
      dense_masks[(level, a)] = dense
      cells = rng.randint(0, g, (batch, 3, 2)).astype(np.int32)
      valid = rng.randint(0, 2, (batch, 3)).astype(np.float32)
      targets = (rng.uniform(size=(batch, 3, side, side)) < 0.5).astype(
          np.float32)
      labels[f"mask_indices_{level}_{a}"] = cells
      labels[f"mask_valid_{level}_{a}"] = valid
      labels[f"mask_targets_{level}_{a}"] = targets
      for n in range(batch):
        for j in range(3):
          z = dense[n, cells[n, j, 0], cells[n, j, 1]].astype(np.float64)
          t = targets[n, j]
          bce = np.logaddexp(0, z) - z * t
          want["mask"] += valid[n, j] * np.sum(
              bce * 2.0 / side**2 * np.where(t == 1, 1.5, 1.0))

  def mask_fn(windows):
    return [tf.gather_nd(dense_masks[(level, a)], indices)
            for level, a, indices in windows]

  got = losses.tensormask_losses(outputs, labels, mask_fn, levels, 2,
                                 num_classes)
  for name in ("class", "box", "mask"):
    np.testing.assert_allclose(float(got[f"{name}_loss"]), want[name] / 3.0,
                               rtol=1e-5)
  np.testing.assert_allclose(float(got["total_loss"]),
                             sum(want.values()) / 3.0, rtol=1e-5)


def test_labels_have_static_shapes_when_traced():
  # A dataset-fed, XLA-compiled step needs every label shape static.
  boxes, masks = _scene()
  fn = tf.function(lambda b, c, m: window_labeler.label_windows(
      SPEC, SIZE, b, c, m, CAPS))
  labels = fn.get_concrete_function(
      tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32),
      tf.TensorSpec([None, *SIZE])).structured_outputs
  for key, value in labels.items():
    assert value.shape.is_fully_defined(), (key, value.shape)


def test_mask_caps_never_exceed_the_windows_of_a_level():
  # 64x64 input: grids 16x16, 8x8, 4x4; a cap of 100 at P4 keeps 16 rows.
  masks = np.zeros((1, 64, 64), np.float32)
  masks[0, 8:40, 8:40] = 1
  labels = window_labeler.label_windows(
      SPEC, SIZE, [[8.0, 8.0, 40.0, 40.0]], [1], masks,
      {2: 300, 3: 100, 4: 100})
  for level, rows in ((2, 256), (3, 64), (4, 16)):
    for a in range(2):
      assert labels[f"mask_valid_{level}_{a}"].shape == (rows,)
      assert labels[f"mask_indices_{level}_{a}"].shape == (rows, 2)
  assert float(labels["num_mask_positives_dropped"]) == 0.0


# ---------------------------------------------------------------------------
# Mask targets at the image border: the release's ROIAlign sampling rule.
# ---------------------------------------------------------------------------
REFERENCE_DIR = pathlib.Path(__file__).parent / "data" / "detectron2_reference"


def _axis_samples(first, side, mask_side, extent, ring=True):
  """Bilinear taps along one axis of the release's ROIAlign (aligned=True).

  torchvision's roi_align with aligned=True starts the box at first - 0.5,
  uses ceil(bin) samples per bin (adaptive sampling) at (i + 0.5) * bin /
  count inside it, and its bilinear_interpolate returns 0 for a coordinate
  below -1 or above the extent, clamps [-1, 0] to 0 and anything from
  extent - 1 on to extent - 1. ring=False is the "outside = background" rule.

  Returns:
    (low, high, w_low, w_high, valid): [mask_side, count] each.
  """
  bin_size = side / mask_side
  count = int(np.ceil(bin_size))
  coord = (first - 0.5 + np.arange(mask_side)[:, None] * bin_size +
           (np.arange(count)[None, :] + 0.5) * bin_size / count)
  if ring:
    valid = (coord >= -1.0) & (coord <= extent)
  else:
    valid = (coord > -0.5) & (coord < extent - 0.5)
  coord = np.maximum(coord, 0.0)
  low = np.floor(coord).astype(int)
  at_end = low >= extent - 1
  low = np.where(at_end, extent - 1, low)
  high = np.where(at_end, extent - 1, low + 1)
  coord = np.where(at_end, low, coord)
  frac = coord - low
  return low, high, 1.0 - frac, frac, valid


def _release_mask_target(mask, extent, box, mask_side, ring=True):
  """float64 ROIAlign of mask[:h, :w] over box [ymin, xmin, ymax, xmax],
  then mean >= 0.5; [M, M] bool."""
  mask = np.asarray(mask, np.float64)[:extent[0], :extent[1]]
  ys = _axis_samples(box[0], box[2] - box[0], mask_side, extent[0], ring)
  xs = _axis_samples(box[1], box[3] - box[1], mask_side, extent[1], ring)
  value = 0.0
  for y_index, y_weight in ((ys[0], ys[2]), (ys[1], ys[3])):
    for x_index, x_weight in ((xs[0], xs[2]), (xs[1], xs[3])):
      # [M, cy, M, cx] taps of the M x M cells' samples.
      value = value + (
          y_weight[:, :, None, None] * x_weight[None, None] *
          mask[y_index[:, :, None, None], x_index[None, None]])
  value = value * (ys[4][:, :, None, None] & xs[4][None, None])
  return value.mean(axis=(1, 3)) >= 0.5


def _border_windows(extent, side):
  """[N, 4] windows [ymin, xmin, ymax, xmax] sticking out of every side of
  an image of `extent` by 0, 1, 2 and 5 pixels, and some inside."""
  def starts(size):
    return sorted({-d for d in (0, 1, 2, 5)} |
                  {size + d - side for d in (0, 1, 2, 5)} | {1})
  return np.array([[y, x, y + side, x + side] for y in starts(extent[0])
                   for x in starts(extent[1])], np.float32)


@pytest.mark.parametrize("mask_side,cell", [(2, 4), (3, 4), (3, 2)])
def test_mask_targets_at_the_border_follow_the_release_sampling(mask_side,
                                                                 cell):
  rng = np.random.RandomState(mask_side * 10 + cell)
  extent = (13, 17)  # The image inside padded (20, 24) masks.
  masks = (rng.uniform(size=(3, 20, 24)) < 0.5).astype(np.float32)
  masks[0, :extent[0], :extent[1]] = 1.0  # Solid: the ring alone decides.
  # The padding holds ones: reading it (instead of the ring at the extent)
  # changes the targets.
  masks[:, extent[0]:, :] = 1.0
  masks[:, :, extent[1]:] = 1.0
  side = mask_side * cell
  boxes = _border_windows(extent, side)
  ring_mattered = 0
  for instance in range(3):
    got = window_targets.window_mask_targets(
        masks, [instance] * len(boxes), boxes, mask_side, cell,
        image_extent=extent).numpy()
    for k, box in enumerate(boxes):
      want = _release_mask_target(masks[instance], extent, box, mask_side)
      np.testing.assert_array_equal(got[k], want, err_msg=f"window {box}")
      ring_mattered += np.sum(want != _release_mask_target(
          masks[instance], extent, box, mask_side, ring=False))
  assert ring_mattered > 0


def test_label_windows_put_the_ring_at_the_image_extent():
  boxes, masks = _scene()
  extent = (52, 48)  # Padding below row 52 and right of column 48.
  # An object in the image's corner. Its centred P2 window [42, 38, 54, 50]
  # has a last cell on rows 50..53, columns 46..49: 4 object pixels, 5 ring
  # pixels (9 of 16 samples: 1), 7 beyond (0, whatever the padding holds).
  masks[2] = 0.0
  masks[2, 44:extent[0], 40:extent[1]] = 1.0
  boxes[2] = [44, 40, extent[0], extent[1]]
  masks[:, extent[0]:, :] = 1.0  # Not image: must never be read.
  masks[:, :, extent[1]:] = 1.0
  labels = window_labeler.label_windows(SPEC, SIZE, boxes, [1, 2, 0], masks,
                                        CAPS, image_extent=extent)
  windows = windows_lib.generate_windows(SPEC, SIZE)
  matched, _ = test_windows._assign_loops(
      boxes, np.concatenate([w for _, w in sorted(windows.items())]),
      np.concatenate([u for _, u in sorted(
          windows_lib.unit_lengths(SPEC, SIZE).items())]),
      SPEC.min_window_size)
  checked = ring_mattered = 0
  for level in SPEC.levels:
    grid_w = SIZE[1] // SPEC.stride(level)
    level_windows = windows[level].reshape(-1, 2, 4)
    for a in range(2):
      key = lambda what: window_labeler.mask_label_key(level, a, what)
      side = SPEC.mask_sides[a] * SPEC.upscale(level)
      for j in np.flatnonzero(labels[key("valid")].numpy()):
        cell = (labels[key("indices")].numpy()[j] * [grid_w, 1]).sum()
        gt = matched[_window_index(level, cell, a)]
        want = _release_mask_target(masks[gt], extent,
                                    level_windows[cell, a], side)
        np.testing.assert_array_equal(labels[key("targets")].numpy()[j], want)
        ring_mattered += np.sum(want != _release_mask_target(
            masks[gt], extent, level_windows[cell, a], side, ring=False))
        checked += 1
  assert checked > 0 and ring_mattered > 0


def _unpack(data, prefix):
  n, height, width = data[f"{prefix}_shape"]
  return np.unpackbits(data[f"{prefix}_packed"], axis=1,
                       count=height * width).reshape(n, height, width)


def test_mask_targets_equal_the_release_recorded_targets():
  data = np.load(REFERENCE_DIR / "train_A.npz")
  gt_masks = _unpack(data, "gt_masks").astype(np.float32)
  rows = {tuple(r): i for i, r in enumerate(data["pos_level_y_x_a"])}
  x0, y0, x1, y1 = data["pos_window_xyxy"].T
  windows = np.stack([y0, x0, y1, x1], axis=1)  # [ymin, xmin, ymax, xmax]
  checked = 0
  for level in range(6):
    for a in range(2):
      prefix = f"mask_target_l{level}_a{a}"
      if f"{prefix}_packed" not in data:
        continue
      want = _unpack(data, prefix).astype(bool)
      index = [rows[(level, y, x, a)] for _, y, x in data[f"{prefix}_nhw"]]
      got = window_targets.window_mask_targets(
          gt_masks, data["pos_matched_gt"][index], windows[index],
          want.shape[1], 4, image_extent=tuple(data["image_hw"]))
      np.testing.assert_array_equal(got.numpy().astype(bool), want,
                                    err_msg=f"level {level}, anchor {a}")
      checked += len(index)
  assert checked == int(data["num_fg"]) == 33
