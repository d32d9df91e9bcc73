"""Tests of TensorMask inference: detections, window masks and pasting."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tensormask_tf.modeling import detection_generator
from tensormask_tf.ops import windows as windows_lib

SPEC = windows_lib.WindowSpec(min_level=2, max_level=3, base_sides=(12, 20))
IMAGE = (64, 64)
K = 2  # classes


def _paste_reference(mask, box, height, width):
  """Per pixel centre: bilinear sample of the mask laid over the box, 0
  outside its cells (the release's grid_sample with zero padding)."""
  side = mask.shape[0]
  out = np.zeros((height, width))
  value = lambda r, c: (mask[r, c] if 0 <= r < side and 0 <= c < side
                        else 0.0)
  for i in range(height):
    for j in range(width):
      cy, cx = i + 0.5, j + 0.5
      u = (cy - box[0]) / (box[2] - box[0]) * side - 0.5
      v = (cx - box[1]) / (box[3] - box[1]) * side - 0.5
      u0, v0 = int(np.floor(u)), int(np.floor(v))
      fu, fv = u - u0, v - v0
      out[i, j] = ((1 - fu) * (1 - fv) * value(u0, v0) + (1 - fu) * fv *
                   value(u0, v0 + 1) + fu * (1 - fv) * value(u0 + 1, v0) +
                   fu * fv * value(u0 + 1, v0 + 1))
  return out >= 0.5


def test_paste_window_masks_matches_reference():
  rng = np.random.RandomState(0)
  masks = rng.uniform(size=(3, 8, 8))
  boxes = np.array([[4, 6, 28, 30], [-10, 40, 30, 80], [10, 10, 15, 13]],
                   np.float32)
  got = detection_generator.paste_window_masks(masks, [8, 8, 8], boxes,
                                               (36, 52)).numpy()
  for d in range(3):
    np.testing.assert_array_equal(got[d], _paste_reference(masks[d], boxes[d],
                                                           36, 52))


def test_paste_window_masks_empty_windows_paste_nothing():
  # Padded detection rows have zeroed windows; the valid rows beside them
  # paste as the reference says.
  rng = np.random.RandomState(1)
  masks = rng.uniform(size=(3, 8, 8))
  boxes = np.array([[4, 6, 28, 30], [0, 0, 0, 0], [5, 5, 5, 9]], np.float32)
  got = detection_generator.paste_window_masks(masks, [8, 0, 8], boxes,
                                               (36, 52)).numpy()
  np.testing.assert_array_equal(got[0], _paste_reference(masks[0], boxes[0],
                                                         36, 52))
  assert not got[1:].any()


def _index(level, y, x, a):
  return (y * (IMAGE[1] // SPEC.stride(level)) + x) * SPEC.num_sizes + a


def _quiet_outputs():
  """Numpy model outputs of one image: every class logit -10, no deltas."""
  outputs = {"class_outputs": {}, "box_outputs": {}}
  for level in SPEC.levels:
    g = IMAGE[0] // SPEC.stride(level)
    outputs["class_outputs"][str(level)] = np.full(
        (1, g, g, SPEC.num_sizes * K), -10.0, np.float32)
    outputs["box_outputs"][str(level)] = np.zeros(
        (1, g, g, SPEC.num_sizes * 4), np.float32)
  return outputs


def test_detections_threshold_decode_suppress_per_class_and_route_masks():
  outputs = _quiet_outputs()
  logits2 = outputs["class_outputs"]["2"]
  logits2[0, 5, 6, 0 * K + 1] = 3.0  # w1: level 2, (5, 6), size 0, class 1
  logits2[0, 5, 7, 0 * K + 1] = 2.0  # w2: same class, moved onto w1: dropped
  logits2[0, 5, 7, 0 * K + 0] = 1.0  # w2, other class: kept
  outputs["box_outputs"]["2"][0, 5, 7, 0:4] = [0.0, -0.5, 0.0, 0.0]  # -4 px
  outputs["class_outputs"]["3"][0, 2, 2, 1 * K + 0] = 0.0  # w3: level 3
  outputs = {kind: {k: tf.constant(v) for k, v in d.items()}
             for kind, d in outputs.items()}

  def mask_logits_fn(level, a, indices):
    side = SPEC.mask_sides[a] * SPEC.upscale(level)
    value = tf.cast(indices[:, 1] * 10 + indices[:, 2], tf.float32) / 100.0
    return tf.broadcast_to(value[:, None, None], [tf.shape(indices)[0], side,
                                                  side])

  det = detection_generator.generate_detections(
      outputs, mask_logits_fn, SPEC, IMAGE, K, max_detections=5, mask_size=8)
  # A second image of 40x30 inside the padded input: its boxes are clipped
  # to it (Model Garden's image_info[:, 1]), the first's to the input.
  twice = {kind: {k: tf.concat([v, v], 0) for k, v in d.items()}
           for kind, d in outputs.items()}
  in_image = detection_generator.generate_detections(
      twice, mask_logits_fn, SPEC, IMAGE, K, max_detections=5, mask_size=8,
      image_sizes=[[64, 64], [40, 30]])
  for key in ("detection_boxes", "detection_scores", "detection_classes"):
    np.testing.assert_allclose(in_image[key][0], det[key][0])
  assert int(in_image["num_detections"][1]) == 3
  np.testing.assert_allclose(
      in_image["detection_boxes"][1, :3],
      np.clip(det["detection_boxes"][0, :3], 0, [40, 30, 40, 30]), atol=1e-4)
  assert int(det["num_detections"][0]) == 3
  sig = lambda z: 1 / (1 + math.exp(-z))
  np.testing.assert_allclose(det["detection_scores"][0, :3],
                             [sig(3.0), sig(1.0), sig(0.0)], rtol=1e-5)
  np.testing.assert_array_equal(det["detection_classes"][0, :3], [1, 0, 0])
  w1 = windows_lib.generate_windows(SPEC, IMAGE)[2][_index(2, 5, 6, 0)]
  w2 = windows_lib.generate_windows(SPEC, IMAGE)[2][_index(2, 5, 7, 0)]
  w3 = windows_lib.generate_windows(SPEC, IMAGE)[3][_index(3, 2, 2, 1)]
  np.testing.assert_allclose(det["detection_boxes"][0, 0], w1, atol=1e-3)
  np.testing.assert_allclose(det["detection_boxes"][0, 1], w1, atol=1e-3)
  np.testing.assert_allclose(det["detection_boxes"][0, 2],
                             np.clip(w3, 0, 64), atol=1e-3)
  np.testing.assert_allclose(det["detection_windows"][0, :3], [w1, w2, w3])
  # Each detection got the mask of its own window: the masks of the 3 kept
  # detections, each M x M, one after the other.
  assert det["detection_mask_values"].shape == (3 * 8 * 8,)
  det["detection_masks"] = detection_generator.padded_window_masks(
      det["detection_mask_values"], det["detection_mask_sides"])
  for d, (y, x) in enumerate([(5, 6), (5, 7), (2, 2)]):
    np.testing.assert_allclose(det["detection_masks"][0, d],
                               np.full((8, 8), sig((y * 10 + x) / 100)),
                               rtol=1e-5)
  assert not np.any(det["detection_masks"][0, 3:])
  np.testing.assert_array_equal(det["detection_mask_sides"][0], [8] * 3 +
                                [0] * 2)
  assert not np.any(det["detection_scores"][0, 3:])


def test_nms_keeps_a_same_class_box_at_iou_exactly_one_half():
  # detectron2's NMS suppresses IoU > 0.5 only. Two class-0 windows of
  # 12 px, the second's box moved 8 px onto the first: IoU 96 / 192 = 0.5;
  # moved 8.5 px: 102 / 186 > 0.5, suppressed.
  def detect(shift):
    outputs = _quiet_outputs()
    outputs["class_outputs"]["2"][0, 5, 5, 0] = 3.0  # [14, 14, 26, 26]
    outputs["class_outputs"]["2"][0, 5, 8, 0] = 2.0  # [14, 26, 26, 38]
    outputs["box_outputs"]["2"][0, 5, 8, 1] = -shift / 12 * 1.5
    outputs = {kind: {k: tf.constant(v) for k, v in d.items()}
               for kind, d in outputs.items()}
    no_masks = lambda level, a, indices: tf.zeros(
        [tf.shape(indices)[0]] + [SPEC.mask_sides[a] * SPEC.upscale(level)] * 2)
    return detection_generator.generate_detections(
        outputs, no_masks, SPEC, IMAGE, K, max_detections=5, mask_size=4)

  kept = detect(8.0)
  assert int(kept["num_detections"][0]) == 2
  np.testing.assert_allclose(kept["detection_boxes"][0, 1], [14, 18, 26, 30],
                             atol=1e-5)
  assert int(detect(8.5)["num_detections"][0]) == 1


def test_category_ids_of_classes_and_back():
  ids = [7, 3, 12]
  np.testing.assert_array_equal(
      detection_generator.category_ids_of([[2, 0], [1, 1]], ids),
      [[12, 7], [3, 3]])
  np.testing.assert_array_equal(
      detection_generator.classes_of([12, 7, 3], ids), [2, 0, 1])
  np.testing.assert_array_equal(detection_generator.category_ids_of([0, 4],
                                                                    None),
                                [1, 5])
  np.testing.assert_array_equal(detection_generator.classes_of([1, 5], None),
                                [0, 4])
  assert detection_generator.classes_of(np.zeros(0), ids).shape == (0,)
  with pytest.raises(ValueError, match=r"category ids \[4, 13\] are not"):
    detection_generator.classes_of([7, 4, 13], ids)
