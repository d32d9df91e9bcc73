"""The release's post-processing (detectron2 projects/TensorMask
`inference_single_image`, `_postprocess`, `paste_masks_in_image`) against a
numpy float64 re-statement of its rules written here, and the pasted masks
of the release's own recorded run (tests/data/detectron2_reference)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tensormask_tf.modeling import detection_generator
from tensormask_tf.ops import windows as windows_lib

REFERENCE = os.path.join(os.path.dirname(__file__), "data",
                         "detectron2_reference")
IMAGE = (64, 64)
LEVELS = (2, 3)
BASE_SIDES = (12, 20)  # window sides at P2, doubled per level
CELL = 4  # image pixels per natural mask cell (the P2 stride)
K = 3
SPEC = windows_lib.WindowSpec(min_level=2, max_level=3, base_sides=BASE_SIDES)
WEIGHTS = np.array([1.5, 1.5, 0.75, 0.75])  # (dy, dx, dh, dw)


def _grid(level):
  return IMAGE[0] // 2**level


def _natural_side(level, a):
  return BASE_SIDES[a] * 2**(level - 2) // CELL


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _iou(a, b):
  inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0])) *
           max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
  area = lambda box: (box[2] - box[0]) * (box[3] - box[1])
  return inter / (area(a) + area(b) - inter)


def _reference(logits, deltas, mask_logits, image_size, threshold=0.05,
               top_k=6000, nms=0.5, max_detections=100):
  """The release's rules for one image, float64.

  Args:
    logits: {level: [g, g, 2 * K]} channel a * K + k.
    deltas: {level: [g, g, 2 * 4]} channel a * 4 + (dy, dx, dh, dw).
    mask_logits: {(level, a): [g, g, M, M]} natural mask logits.
    image_size: (h, w) the boxes are clipped to.

  Returns:
    (detections, margin): a list of {"score", "class", "box" (clipped,
    [ymin, xmin, ymax, xmax]), "window", "mask" (M x M probabilities)} in
    output order, and the smallest |IoU - nms| of the NMS decisions.
  """
  rows, scores = [], []
  for level in LEVELS:
    stride, g = 2**level, _grid(level)
    for y in range(g):
      for x in range(g):
        for a in range(2):
          half = BASE_SIDES[a] * 2**(level - 2) / 2
          window = np.array([y * stride - half, x * stride - half,
                             y * stride + half, x * stride + half])
          rows.append((level, y, x, a, window))
          scores.append(_sigmoid(logits[level][y, x, a * K:(a + 1) * K]))
  scores = np.concatenate(scores)
  candidates = np.flatnonzero(scores > threshold)
  candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
  candidates = candidates[:top_k]
  decoded = []
  for flat in candidates:
    level, y, x, a, window = rows[flat // K]
    dy, dx, dh, dw = deltas[level][y, x, a * 4:(a + 1) * 4] / WEIGHTS
    dh, dw = min(dh, np.log(1000 / 16)), min(dw, np.log(1000 / 16))
    h, w = window[2] - window[0], window[3] - window[1]
    cy, cx = window[0] + h / 2 + dy * h, window[1] + w / 2 + dx * w
    h, w = np.exp(dh) * h, np.exp(dw) * w
    decoded.append(np.array([cy - h / 2, cx - w / 2, cy + h / 2,
                             cx + w / 2]))
  # Per-class greedy NMS on the unclipped boxes: suppressed when IoU > nms.
  kept, margin = [], np.inf
  for i, flat in enumerate(candidates):
    overlaps = [_iou(decoded[i], decoded[j]) for j in kept
                if candidates[j] % K == flat % K]
    margin = min([margin] + [abs(o - nms) for o in overlaps])
    if all(o <= nms for o in overlaps):
      kept.append(i)
  kept = kept[:max_detections]  # The cap first...
  detections = []
  for i in kept:
    flat = candidates[i]
    level, y, x, a, window = rows[flat // K]
    box = np.clip(decoded[i], 0, [image_size[0], image_size[1]] * 2)
    if box[2] <= box[0] or box[3] <= box[1]:
      continue  # ... then clipping and the empty-box drop.
    detections.append({
        "score": scores[flat], "class": flat % K, "box": box,
        "window": window,
        "mask": _sigmoid(mask_logits[(level, a)][y, x])})
  return detections, margin


def _quiet_image():
  """Head outputs of one image: logits -10 (no candidate), zero deltas,
  random natural mask logits."""
  rng = np.random.RandomState(7)
  logits = {l: np.full((_grid(l), _grid(l), 2 * K), -10.0) for l in LEVELS}
  deltas = {l: np.zeros((_grid(l), _grid(l), 8)) for l in LEVELS}
  masks = {(l, a): rng.normal(size=(_grid(l), _grid(l)) +
                              (_natural_side(l, a),) * 2)
           for l in LEVELS for a in range(2)}
  return logits, deltas, masks


def _detect(images, image_sizes=None, **kwargs):
  """generate_detections on a batch of `_quiet_image`-style numpy images."""
  outputs = {
      "class_outputs": {str(l): tf.constant(np.stack(
          [im[0][l] for im in images]), tf.float32) for l in LEVELS},
      "box_outputs": {str(l): tf.constant(np.stack(
          [im[1][l] for im in images]), tf.float32) for l in LEVELS}}
  tables = {key: tf.constant(np.stack([im[2][key] for im in images]),
                             tf.float32) for key in images[0][2]}
  mask_logits_fn = lambda level, a, indices: tf.gather_nd(
      tables[(level, a)], indices)
  result = detection_generator.generate_detections(
      outputs, mask_logits_fn, SPEC, IMAGE, K, image_sizes=image_sizes,
      **kwargs)
  result["detection_masks"] = detection_generator.padded_window_masks(
      result["detection_mask_values"], result["detection_mask_sides"])
  return {k: v.numpy() for k, v in result.items()}


def _assert_matches(got, n, want):
  count = int(got["num_detections"][n])
  assert count == len(want)
  for d, w in enumerate(want):
    assert got["detection_classes"][n, d] == w["class"]
    np.testing.assert_allclose(got["detection_scores"][n, d], w["score"],
                               rtol=1e-6)
    np.testing.assert_allclose(got["detection_boxes"][n, d], w["box"],
                               atol=1e-4)
    np.testing.assert_allclose(got["detection_windows"][n, d], w["window"])
    side = w["mask"].shape[0]
    assert got["detection_mask_sides"][n, d] == side
    np.testing.assert_allclose(got["detection_masks"][n, d, :side, :side],
                               w["mask"], atol=1e-6)
    assert not got["detection_masks"][n, d, side:].any()
    assert not got["detection_masks"][n, d, :, side:].any()
  assert not got["detection_scores"][n, count:].any()
  assert not got["detection_mask_sides"][n, count:].any()
  assert not got["detection_masks"][n, count:].any()


def test_nms_compares_the_unclipped_boxes():
  # Two class-0 windows of 20 px on P2 at grid rows 0 and 2 (centres y = 0
  # and 8), both reaching above the image: unclipped IoU 240 / 560 = 0.43,
  # both kept; clipped first, 200 / 360 = 0.56 would suppress one.
  image = _quiet_image()
  image[0][2][0, 5, 1 * K + 0] = 3.0
  image[0][2][2, 5, 1 * K + 0] = 2.0
  want, margin = _reference(*image, IMAGE)
  assert len(want) == 2 and margin > 0.05
  clipped = [np.clip(w["window"], 0, 64) for w in want]
  assert _iou(*clipped) > 0.5
  _assert_matches(_detect([image], mask_size=0), 0, want)


def test_the_cap_comes_before_the_empty_box_drop():
  # The best candidate's box lies wholly left of the image: it takes one
  # of the 2 places and is dropped after clipping, so one detection is
  # left (not 2: the third candidate was cut by the cap).
  image = _quiet_image()
  image[0][2][0, 0, 0 * K + 0] = 4.0  # window [-6, -6, 6, 6]
  image[1][2][0, 0, 1] = -1.25  # x centre -10: box x in [-16, -4]
  image[0][2][8, 8, 0 * K + 1] = 3.0
  image[0][3][4, 4, 1 * K + 2] = 2.0
  want, _ = _reference(*image, IMAGE, max_detections=2)
  assert [w["class"] for w in want] == [1]
  got = _detect([image], max_detections=2)
  _assert_matches(got, 0, want)


def test_iou_of_exactly_one_half_keeps_both_boxes_outside_the_image_too():
  # 12-px class-0 windows on the top border (rows [-6, 6]), the second's
  # box moved 8 px onto the first: IoU 96 / 192 = 0.5, not suppressed.
  image = _quiet_image()
  image[0][2][0, 5, 0] = 3.0  # x [14, 26]
  image[0][2][0, 8, 0] = 2.0  # x [26, 38] -> [18, 30]
  image[1][2][0, 8, 1] = -1.0
  want, margin = _reference(*image, IMAGE)
  assert len(want) == 2 and margin == 0.0
  _assert_matches(_detect([image]), 0, want)


def test_random_heads_match_the_release_rules():
  # Hundreds of candidates of 3 classes with random deltas (boxes reaching
  # out of the image), the 40-detection cap reached, two images (the second
  # smaller than the input): everything as the float64 reference.
  rng = np.random.RandomState(3)
  images = []
  for _ in range(2):
    logits, deltas, masks = _quiet_image()
    for l in LEVELS:
      logits[l] = rng.normal(-4.0, 1.5, size=logits[l].shape)
      deltas[l] = rng.normal(0.0, 0.6, size=deltas[l].shape)
    images.append((logits, deltas, masks))
  sizes = [(64, 64), (40, 52)]
  got = _detect(images, image_sizes=sizes, max_detections=40,
                pre_nms_top_k=300)
  for n, image in enumerate(images):
    want, margin = _reference(*image, sizes[n], top_k=300, max_detections=40)
    assert margin > 1e-4  # No decision within float32 noise.
    _assert_matches(got, n, want)
  assert got["detection_masks"].shape[2] == max(
      got["detection_mask_sides"].ravel())


def test_natural_sides_mixed_in_one_batch_and_resampled_masks():
  first, second = _quiet_image(), _quiet_image()
  first[0][2][3, 3, 0 * K + 0] = 2.0  # P2, size 0: M = 3
  first[0][3][2, 2, 1 * K + 1] = 1.0  # P3, size 1: M = 10
  second[0][2][4, 4, 1 * K + 2] = 2.0  # P2, size 1: M = 5
  got = _detect([first, second], max_detections=3)
  assert got["detection_masks"].shape == (2, 3, 10, 10)
  np.testing.assert_array_equal(got["detection_mask_sides"],
                                [[3, 10, 0], [5, 0, 0]])
  for n, image in enumerate((first, second)):
    _assert_matches(got, n, _reference(*image, IMAGE)[0])
  # Only the second image's detection: R is its side.
  alone = _detect([second], max_detections=3)
  assert alone["detection_masks"].shape == (1, 3, 5, 5)
  # None at all: R = 1.
  assert _detect([_quiet_image()])["detection_masks"].shape == (1, 100, 1, 1)
  # Resampled: every detection's mask is R x R = mask_size.
  resampled = _detect([first, second], max_detections=3, mask_size=4)
  assert resampled["detection_masks"].shape == (2, 3, 4, 4)
  np.testing.assert_array_equal(resampled["detection_mask_sides"],
                                [[4, 4, 0], [4, 0, 0]])
  with pytest.raises(ValueError, match="mask_size"):
    _detect([first], mask_size=-1)


def _paste_reference(mask, box, height, width):
  """Soft pasted mask, float64: pixel (i, j) reads the mask at row
  (i + 0.5 - y0) / (y1 - y0) * M - 0.5 (column likewise), bilinear, 0
  outside the M x M cells."""
  side = mask.shape[0]
  padded = np.pad(mask, 2)
  rows = (np.arange(height) + 0.5 - box[0]) / (box[2] - box[0]) * side - 0.5
  cols = (np.arange(width) + 0.5 - box[1]) / (box[3] - box[1]) * side - 0.5
  out = np.zeros((height, width))
  for i, u in enumerate(rows):
    for j, v in enumerate(cols):
      u0, v0 = int(np.floor(u)), int(np.floor(v))
      if u0 < -1 or u0 > side - 1 or v0 < -1 or v0 > side - 1:
        continue
      fu, fv = u - u0, v - v0
      cell = padded[u0 + 2:u0 + 4, v0 + 2:v0 + 4]
      out[i, j] = ((1 - fu) * (1 - fv) * cell[0, 0] + (1 - fu) * fv *
                   cell[0, 1] + fu * (1 - fv) * cell[1, 0] +
                   fu * fv * cell[1, 1])
  return out


def test_paste_reads_zeros_outside_the_mask_cells():
  # A 3 x 3 mask of ones over the window [4, 16) (4 px per cell): pixel
  # centres i + 0.5 read row (i - 5.5) / 4, so the profile ramps
  # 0.125, 0.375, 0.625, 0.875 into the window and out of it (edge
  # replication would read 1 up to the window's edge).
  ramp = np.array([0, 0, 0.125, 0.375, 0.625, 0.875] + [1.0] * 8 +
                  [0.875, 0.625, 0.375, 0.125, 0, 0])
  masks = np.full((1, 5, 5), 9.0, np.float32)  # Only the 3 x 3 is read.
  masks[0, :3, :3] = 1.0
  got = detection_generator.paste_window_masks(
      masks, [3], [[4, 4, 16, 16]], (20, 20), threshold=None).numpy()
  np.testing.assert_allclose(got[0], np.outer(ramp, ramp), atol=1e-6)
  binary = detection_generator.paste_window_masks(
      masks, [3], [[4, 4, 16, 16]], (20, 20)).numpy()
  np.testing.assert_array_equal(binary[0], np.outer(ramp, ramp) >= 0.5)


def test_paste_of_mixed_sides_matches_the_reference():
  rng = np.random.RandomState(5)
  sides = [3, 10, 5, 7, 0]
  masks = rng.uniform(size=(5, 10, 10)).astype(np.float32)
  boxes = np.array([[-6.0, -6.0, 6.0, 6.0],  # over the top-left corner
                    [10.0, 20.0, 50.0, 60.0],  # past the right edge
                    [3.5, 2.25, 23.75, 17.0],  # fractional
                    [-20.0, 30.0, 60.0, 110.0],
                    [1.0, 1.0, 9.0, 9.0]], np.float32)  # side 0: nothing
  got = detection_generator.paste_window_masks(
      masks, sides, boxes, (40, 48), threshold=None).numpy()
  for d, side in enumerate(sides[:4]):
    want = _paste_reference(masks[d, :side, :side].astype(np.float64),
                            boxes[d].astype(np.float64), 40, 48)
    np.testing.assert_allclose(got[d], want, atol=2e-6)
  assert not got[4].any()


def test_paste_reproduces_the_release_masks():
  # detectron2's pasted masks of infer_A (256 x 384) from the stored natural
  # mask logits of 10 detections on P2..P5 (M = 11..240) and their windows.
  data = np.load(os.path.join(REFERENCE, "infer_A.npz"))
  count, height, width = data["det_masks_shape"]
  pasted = np.unpackbits(data["det_masks_packed"], axis=1,
                         count=height * width).reshape(count, height, width)
  index = data["mask_logit_det_index"]
  logits = [data[f"mask_logits_det{j}"] for j in index]
  sides = [m.shape[0] for m in logits]
  assert len(set(sides)) > 3
  side = max(sides)
  masks = tf.sigmoid(np.stack([np.pad(m, [(0, side - m.shape[0])] * 2)
                               for m in logits]))
  x0, y0, x1, y1 = data["det_window_xyxy"][index].T
  windows = np.stack([y0, x0, y1, x1], axis=1)
  got = detection_generator.paste_window_masks(masks, sides, windows,
                                               (height, width)).numpy()
  # The same through the paste of predict.py and evaluation: each image's
  # masks concatenated, pasted along their edges, kept as runs.
  cropped = detection_generator.paste_cropped_masks(
      np.concatenate([masks[d, :m, :m].numpy().ravel()
                      for d, m in enumerate(sides)]), sides, windows,
      (height, width))
  np.testing.assert_array_equal(cropped.dense(), got)
  for d, j in enumerate(index):
    differ = got[d] != pasted[j].astype(bool)
    if differ.any():  # Only pixels at the threshold, within float32 noise.
      soft = _paste_reference(_sigmoid(logits[d]),
                              windows[d].astype(np.float64), height, width)
      assert differ.sum() <= 2
      assert np.abs(soft[differ] - 0.5).max() < 1e-6
    assert pasted[j].sum() > 100
