"""Regression and mask targets of positive windows (SPEC.md 3).

Box deltas are Model Garden's box coding (`official.vision.ops.box_ops`)
relative to the window box with weights (1.5, 1.5, 0.75, 0.75). The mask
target of a positive window is its ground-truth instance mask cropped to the
window box and resampled to the window's mask side M by averaging the covered
pixels (ROIAlign with half-pixel-aligned sample points, `samples_per_cell`
per cell and axis), then thresholded at 0.5; window parts outside the image
are background.
"""

import tensorflow as tf

from official.vision.ops import box_ops

BOX_WEIGHTS = (1.5, 1.5, 0.75, 0.75)


def encode_window_boxes(gt_boxes: tf.Tensor, windows: tf.Tensor) -> tf.Tensor:
  """[..., 4] boxes -> [..., 4] deltas (dy, dx, dh, dw) w.r.t. windows."""
  return box_ops.encode_boxes(gt_boxes, windows, weights=BOX_WEIGHTS)


def decode_window_boxes(deltas: tf.Tensor, windows: tf.Tensor) -> tf.Tensor:
  """The inverse of encode_window_boxes (log sizes clipped as Model Garden)."""
  return box_ops.decode_boxes(deltas, windows, weights=BOX_WEIGHTS)


def window_mask_targets(instance_masks, instance_indices, window_boxes,
                        mask_side: int, samples_per_cell: int) -> tf.Tensor:
  """Binary mask targets of windows from full-image instance masks.

  A window's corners are whole pixels and its side is mask_side *
  samples_per_cell pixels (TensorMask's windows: side [44, 60] * 2**k, M = S
  * 2**k, 4 px per mask pixel), so ROIAlign's half-pixel-aligned sample
  points, samples_per_cell per cell and axis, fall on the centres of each
  cell's samples_per_cell x samples_per_cell pixels, and a cell's value is
  their mean, computed here from the pixels themselves.

  Args:
    instance_masks: [G, H, W] masks of the image's instances (0/1 or soft),
      aligned with the input image (pixel (i, j) covers [i, i+1) x [j, j+1)).
    instance_indices: [P] int32, which instance each window is assigned to.
    window_boxes: [P, 4] windows [ymin, xmin, ymax, xmax] in pixels.
    mask_side: M, the natural mask side of these windows (S * 2**k).
    samples_per_cell: pixels per mask cell and axis (side / M, the min-level
      stride for TensorMask's windows).

  Returns:
    [P, M, M] float32 in {0, 1}: 1 where the cell's mean is >= 0.5; window
    parts outside the image count as background.

  Raises:
    ValueError: masks that are not [G, H, W].
    tf.errors.InvalidArgumentError: windows whose corners are not whole
      pixels or whose side is not mask_side * samples_per_cell.
  """
  masks = tf.cast(tf.convert_to_tensor(instance_masks), tf.float32)
  if masks.shape.rank != 3:
    raise ValueError("window_mask_targets: instance_masks must be [G, H, W], "
                     f"got shape {masks.shape}.")
  boxes = tf.cast(tf.convert_to_tensor(window_boxes), tf.float32)
  cell = samples_per_cell
  side = mask_side * cell
  first = tf.round(boxes[:, :2])  # [P, 2] first pixel row and column
  extent = tf.cast(tf.shape(masks)[1:3], tf.float32) - 1.0  # (H-1, W-1)
  checks = [
      tf.debugging.assert_equal(
          first, boxes[:, :2],
          message="window_mask_targets: window corners must be whole pixels"),
      tf.debugging.assert_equal(
          boxes[:, 2:] - boxes[:, :2], float(side),
          message="window_mask_targets: window sides must be mask_side * "
                  f"samples_per_cell = {side} pixels"),
      tf.debugging.assert_greater_equal(
          extent, 1.0,
          message="window_mask_targets: masks must be at least 2 x 2 pixels"),
  ]
  with tf.control_dependencies(checks):
    first = tf.identity(first)
  # One nearest-pixel sample per pixel, then the cells' sums.
  # crop_and_resize maps normalised box ends back to pixel indices in
  # float32, off by ~1e-3 px at these sizes: enough for bilinear samples to
  # mix in a neighbour (a cell of exactly 0.5 fell to 0.49999) and for the
  # last row (799.0001) to count as outside the image. Pulling every sample
  # towards the image centre by an affine map, a quarter pixel at the
  # borders, keeps each one nearest its own pixel and on its side of them.
  centre = extent / 2.0
  def normalized(pixel):
    return (centre + (pixel - centre) * (1.0 - 0.25 / centre)) / extent
  crops = tf.image.crop_and_resize(
      masks[..., None],
      tf.concat([normalized(first), normalized(first + (side - 1))], axis=-1),
      tf.cast(instance_indices, tf.int32), [side, side], method="nearest",
      extrapolation_value=0.0)
  total = tf.reduce_sum(tf.reshape(
      crops, [-1, mask_side, cell, mask_side, cell]), axis=[2, 4])
  # mean >= 0.5 as sum >= cell**2 / 2: exact for 0/1 masks.
  return tf.cast(total >= 0.5 * cell * cell, tf.float32)
