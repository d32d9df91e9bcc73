"""Tests of window generation, the assignment rule and window targets."""

import numpy as np
import pytest
import tensorflow as tf

from tensormask_tf.ops import assign_windows
from tensormask_tf.ops import window_targets
from tensormask_tf.ops import windows as windows_lib

# One window of side 44 (unit 4) and one of side 60 (unit 4), both centred at
# (100, 100): [78, 78, 122, 122] and [70, 70, 130, 130]. min_window = 40.
WINDOWS = np.array([[78, 78, 122, 122], [70, 70, 130, 130]], np.float32)
UNITS = np.array([4.0, 4.0], np.float32)
MIN_WINDOW = 40.0


def _assign(gt, windows=WINDOWS, units=UNITS):
  matched, labels = assign_windows(np.array(gt, np.float32).reshape(-1, 4),
                                   windows, units, MIN_WINDOW)
  return matched.numpy().tolist(), labels.numpy().tolist()


# ---------------------------------------------------------------------------
# Windows.
# ---------------------------------------------------------------------------
def test_window_layout_follows_the_spec():
  spec = windows_lib.WindowSpec(min_level=2, max_level=4)
  assert spec.mask_sides == (11, 15)
  assert spec.min_window_size == 40.0
  assert [spec.upscale(k) for k in spec.levels] == [1, 2, 4]
  sizes = windows_lib.feature_sizes(spec, (64, 96))
  assert sizes == {2: (16, 24), 3: (8, 12), 4: (4, 6)}
  boxes = windows_lib.generate_windows(spec, (64, 96))
  assert {k: v.shape for k, v in boxes.items()} == {
      2: (16 * 24 * 2, 4), 3: (8 * 12 * 2, 4), 4: (4 * 6 * 2, 4)}
  # (y, x, a) order; centre (x * stride, y * stride); side base * 2**k.
  np.testing.assert_array_equal(boxes[2][0], [-22, -22, 22, 22])
  np.testing.assert_array_equal(boxes[2][1], [-30, -30, 30, 30])
  index = (1 * 12 + 2) * 2 + 1  # level 3, y=1, x=2, second size
  np.testing.assert_array_equal(boxes[3][index], [8 - 60, 16 - 60, 8 + 60,
                                                  16 + 60])
  units = windows_lib.unit_lengths(spec, (64, 96))
  assert set(units[4].tolist()) == {16.0}


@pytest.mark.parametrize("kwargs,message", [
    ({"min_level": 5, "max_level": 3}, "min_level 5 > max_level 3"),
    ({"base_sides": ()}, "at least one window size"),
    ({"base_sides": (42,)}, "multiple of the stride 4"),
])
def test_window_spec_rejects_bad_layouts(kwargs, message):
  with pytest.raises(ValueError, match=message):
    windows_lib.WindowSpec(**kwargs)


# ---------------------------------------------------------------------------
# Assignment rule, one clause at a time.
# ---------------------------------------------------------------------------
def test_contained_centred_object_of_the_right_scale_is_positive():
  # Side 20: max(2*20, 40) = 40 >= 44 - 4 for the small window only.
  assert _assign([90, 90, 110, 110]) == ([0, 0], [1, 0])


def test_object_sticking_out_of_the_window_is_negative():
  # Centred, scale fine (2*48 >= 56), but ymin 76 < 78 for the small window
  # and 76 >= 70 inside the large one.
  assert _assign([76, 90, 124, 110]) == ([0, 0], [0, 1])


def test_scale_clause_is_inclusive_and_falls_back_to_min_window():
  # Side 28: 2*28 = 56 >= 60 - 4, so the large window is positive too.
  assert _assign([86, 86, 114, 114]) == ([0, 0], [1, 1])
  # Side 27: 54 < 56, large window negative; small positive (54 >= 40).
  assert _assign([86.5, 86.5, 113.5, 113.5]) == ([0, 0], [1, 0])
  # Side 4: 2*4 = 8 < 40 = min_window, so the small window still qualifies.
  assert _assign([98, 98, 102, 102]) == ([0, 0], [1, 0])


def test_centrality_clause_is_a_disc_of_one_unit():
  assert _assign([90, 94, 110, 114])[1] == [1, 0]  # offset (0, 4): 1 unit
  assert _assign([90, 95, 110, 115])[1] == [0, 0]  # offset 5/4 > 1
  # Diagonal (2.9, 2.9): sqrt(2) * 2.9 / 4 = 1.025 > 1.
  assert _assign([92.9, 92.9, 112.9, 112.9])[1] == [0, 0]


def test_window_qualifying_for_two_objects_is_negative():
  # Both objects qualify for the small window alone: it becomes negative.
  # The large window only qualifies for the second (side 28).
  matched, labels = _assign([[90, 90, 110, 110], [86, 86, 114, 114]])
  assert labels == [0, 1]
  assert matched == [0, 1]


def test_no_ground_truth_gives_all_negatives():
  assert _assign(np.zeros((0, 4))) == ([0, 0], [0, 0])


def _assign_loops(gt, windows, units, min_window):
  """The rule of docs/model.md as plain loops (independent reference)."""
  labels, matched = [], []
  for w, u in zip(windows, units):
    hits = []
    for g_index, g in enumerate(gt):
      contained = (g[0] >= w[0] and g[1] >= w[1] and g[2] <= w[2] and
                   g[3] <= w[3])
      g_side = max(g[2] - g[0], g[3] - g[1])
      w_side = max(w[2] - w[0], w[3] - w[1])
      scale = w_side - u <= max(2 * g_side, min_window)
      dy = ((g[0] + g[2]) / 2 - (w[0] + w[2]) / 2) / u
      dx = ((g[1] + g[3]) / 2 - (w[1] + w[3]) / 2) / u
      if contained and scale and dy * dy + dx * dx <= 1.0:
        hits.append(g_index)
    labels.append(1 if len(hits) == 1 else 0)
    matched.append(hits[0] if len(hits) == 1 else 0)
  return matched, labels


def test_assignment_matches_loop_reference_on_random_scenes():
  spec = windows_lib.WindowSpec(min_level=2, max_level=5)
  boxes = windows_lib.generate_windows(spec, (96, 128))
  units = windows_lib.unit_lengths(spec, (96, 128))
  all_windows = np.concatenate([boxes[k] for k in spec.levels])
  all_units = np.concatenate([units[k] for k in spec.levels])
  rng = np.random.RandomState(0)
  total_positive = 0
  for _ in range(5):
    centres = rng.uniform(0, [96, 128], (6, 2))
    # Sides on the stride grid make boundary cases (touching edges) common.
    sizes = rng.randint(1, 30, (6, 2)) * 2.0
    gt = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    gt = np.round(gt).astype(np.float32)
    matched, labels = assign_windows(gt, all_windows, all_units,
                                     spec.min_window_size)
    want_matched, want_labels = _assign_loops(gt, all_windows, all_units,
                                              spec.min_window_size)
    assert labels.numpy().tolist() == want_labels
    assert matched.numpy().tolist() == want_matched
    total_positive += sum(want_labels)
  assert total_positive > 20  # The scenes exercise the positive path.


def test_assignment_rejects_bad_shapes():
  with pytest.raises(ValueError, match=r"gt_boxes must have shape \[N, 4\]"):
    assign_windows(np.zeros((2, 3)), WINDOWS, UNITS, MIN_WINDOW)
  with pytest.raises(ValueError, match=r"unit_lengths must have shape \[M\]"):
    assign_windows(np.zeros((2, 4)), WINDOWS, UNITS[:, None], MIN_WINDOW)


# ---------------------------------------------------------------------------
# Targets.
# ---------------------------------------------------------------------------
def test_box_deltas_use_the_spec_weights_and_round_trip():
  windows = tf.constant([[78., 78., 122., 122.], [0., 10., 60., 50.]])
  gt = tf.constant([[90., 92., 110., 118.], [5., 12., 40., 50.]])
  deltas = window_targets.encode_window_boxes(gt, windows).numpy()
  # Hand-computed for the first pair: centre offset (0, 5) / 44 * 1.5,
  # log(20/44) * 0.75, log(26/44) * 0.75.
  np.testing.assert_allclose(
      deltas[0], [0.0, 1.5 * 5 / 44, 0.75 * np.log(20 / 44),
                  0.75 * np.log(26 / 44)], atol=1e-6)
  decoded = window_targets.decode_window_boxes(tf.constant(deltas), windows)
  np.testing.assert_allclose(decoded, gt, atol=1e-3)


def _mask_targets_reference(mask, box, side, cell):
  """Average of each cell's cell x cell pixels, thresholded at 0.5.

  Outside the image the release's ROIAlign reads the edge pixel one pixel
  beyond the border (a replicated ring) and 0 further out.
  """
  y0, x0 = int(box[0]), int(box[1])
  pad = side * cell  # Enough for any window that overlaps the image.
  padded = np.pad(np.pad(mask, 1, mode="edge"), pad - 1)
  crop = padded[y0 + pad:y0 + pad + side * cell, x0 + pad:x0 + pad + side * cell]
  means = crop.reshape(side, cell, side, cell).mean(axis=(1, 3))
  return (means >= 0.5).astype(np.float32)


def test_mask_targets_average_covered_pixels_and_threshold():
  rng = np.random.RandomState(1)
  masks = (rng.uniform(size=(3, 40, 52)) < 0.5).astype(np.float32)
  masks[1, 10:30, 20:44] = 1.0  # A solid object.
  # Windows of 11x11 cells of 4 px (level 0, S=11) and 22x22 (level 1),
  # some hanging over the image border.
  cases = [(0, [0, 0, 44, 44], 11), (1, [-12, 8, 32, 52], 11),
           (2, [4, 20, 48, 64], 11), (1, [-24, -16, 64, 72], 22)]
  for instance, box, side in cases:
    got = window_targets.window_mask_targets(
        masks, [instance], np.array([box], np.float32), side, 4)
    np.testing.assert_array_equal(
        got.numpy()[0], _mask_targets_reference(masks[instance], box, side, 4))


def test_mask_targets_are_exact_on_a_full_size_image():
  # 800 x 1344, TensorMask's windows from P2 to P7, many over the border:
  # cells that are exactly half object (a 2-pixel strip, a 2 x 2 checker)
  # must give 1, and the first and last rows and columns are inside the
  # image. Sample points normalised for crop_and_resize rounded in float32
  # (the last row at 799.0001, read as outside; 0.5 -> 0.49999).
  height, width = 800, 1344
  masks = np.zeros((3, height, width), np.float32)
  masks[0, :2, :] = masks[0, -2:, :] = 1.0  # top and bottom strips
  masks[0, :, :2] = masks[0, :, -2:] = 1.0  # left and right strips
  ys, xs = np.mgrid[:height, :width]
  masks[1] = ((ys // 2 + xs // 2) % 2).astype(np.float32)  # 2 x 2 checker
  masks[2] = (np.hypot(ys - 410.3, xs - 650.7) < 377).astype(np.float32)
  spec = windows_lib.WindowSpec()
  all_windows = windows_lib.generate_windows(spec, (height, width))
  sizes = windows_lib.feature_sizes(spec, (height, width))
  checked = 0
  for level in spec.levels:
    grid_h, grid_w = sizes[level]
    level_windows = all_windows[level].reshape(grid_h, grid_w, 2, 4)
    cells = [(0, 0), (0, grid_w // 2), (grid_h - 1, grid_w - 1),
             (grid_h // 2, 0), (grid_h // 3, grid_w // 3)]
    for a in range(spec.num_sizes):
      side = spec.mask_sides[a] * spec.upscale(level)
      boxes = np.stack([level_windows[y, x, a] for y, x in cells])
      for instance in range(3):
        got = window_targets.window_mask_targets(
            masks, [instance] * len(cells), boxes, side,
            spec.min_level_stride).numpy()
        for k, box in enumerate(boxes):
          np.testing.assert_array_equal(
              got[k], _mask_targets_reference(masks[instance], box, side,
                                              spec.min_level_stride),
              err_msg=f"level {level}, size {a}, window {box}")
          checked += 1
  assert checked == 6 * 2 * 5 * 3


@pytest.mark.parametrize("size", [(2, 3), (3, 7), (5, 2), (6, 6)])
def test_mask_targets_are_exact_on_tiny_images(size):
  # The samples' pull towards the image centre is largest here.
  rng = np.random.RandomState(sum(size))
  masks = (rng.uniform(size=(2,) + size) < 0.5).astype(np.float32)
  for y in range(-8, size[0] + 1):
    for x in range(-8, size[1] + 1):
      box = np.array([[y, x, y + 8, x + 8]], np.float32)
      for instance in range(2):
        got = window_targets.window_mask_targets(masks, [instance], box, 2, 4)
        np.testing.assert_array_equal(
            got.numpy()[0],
            _mask_targets_reference(masks[instance], box[0], 2, 4))


@pytest.mark.parametrize("box,extent,message", [
    ([0.5, 0.0, 44.5, 44.0], None, "whole pixels"),
    ([0.0, 0.0, 44.0, 48.0], None, "= 44 pixels"),
    ([0.0, 0.0, 44.0, 44.0], (0, 52), "at least 1 x 1"),
    ([0.0, 0.0, 44.0, 44.0], (40, 53), "must not exceed the masks"),
])
def test_mask_targets_refuse_windows_off_the_pixel_grid(box, extent, message):
  masks = np.ones((1, 40, 52), np.float32)
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    window_targets.window_mask_targets(masks, [0], np.array([box], np.float32),
                                       11, 4, image_extent=extent)


def test_mask_targets_of_a_one_pixel_image_read_its_ring():
  # The ring makes a 1 x 1 image a 3 x 3 block of its pixel. A window of
  # 3 x 3 cells of 2 px from (-3, -3): per axis, the cells' pixels -3..-2,
  # -1..0 and 1..2 hold 0, 2 and 1 ones (pixels -1 and 1 are the ring), so
  # the cells hold 0, 4, 2 (mean 1/2 counts) or 1 of their 4 samples.
  got = window_targets.window_mask_targets(
      np.ones((1, 1, 1), np.float32), [0],
      np.array([[-3.0, -3.0, 3.0, 3.0]], np.float32), 3, 2)
  np.testing.assert_array_equal(got.numpy()[0],
                                [[0, 0, 0], [0, 1, 1], [0, 1, 0]])


def test_mask_sides_and_cells_of_the_bipyramid_and_feature_pyramid_heads():
  # Windows 44 and 60 px at P2 (stride 4), doubling per level: the
  # bipyramid's masks keep the 4-px cell (M = 11 * 2**k, 15 * 2**k), the
  # feature-pyramid heads' take their level's stride (M = 11, 15).
  bipyramid = windows_lib.WindowSpec()
  pyramid = windows_lib.WindowSpec(masks_on_min_level_grid=False)
  for level in range(2, 8):
    k = level - 2
    assert bipyramid.mask_cell(level) == 4
    assert pyramid.mask_cell(level) == 4 * 2**k
    assert [bipyramid.mask_side(level, a) for a in (0, 1)] == [11 * 2**k,
                                                               15 * 2**k]
    assert [pyramid.mask_side(level, a) for a in (0, 1)] == [11, 15]
