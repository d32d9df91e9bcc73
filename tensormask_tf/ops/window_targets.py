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

  Args:
    instance_masks: [G, H, W] masks of the image's instances (0/1 or soft),
      aligned with the input image (pixel (i, j) covers [i, i+1) x [j, j+1)).
    instance_indices: [P] int32, which instance each window is assigned to.
    window_boxes: [P, 4] windows [ymin, xmin, ymax, xmax] in pixels.
    mask_side: M, the natural mask side of these windows (S * 2**k).
    samples_per_cell: sample points per mask cell and axis; ceil(side / M),
      which is the min-level stride for TensorMask's windows.

  Returns:
    [P, M, M] float32 in {0, 1}.
  """
  masks = tf.cast(tf.convert_to_tensor(instance_masks), tf.float32)
  if masks.shape.rank != 3:
    raise ValueError("window_mask_targets: instance_masks must be [G, H, W], "
                     f"got shape {masks.shape}.")
  boxes = tf.cast(tf.convert_to_tensor(window_boxes), tf.float32)
  samples = mask_side * samples_per_cell
  size = tf.cast(tf.shape(masks)[1:3], tf.float32)  # (H, W)
  # Sample k of a box side lies at the centre of its k-th of `samples` equal
  # parts: continuous coordinate lo + (k + 0.5) * step, pixel index that
  # minus 0.5. crop_and_resize places sample k at y1 * (H-1) + k *
  # (y2 - y1) * (H-1) / (samples-1), hence these normalised ends.
  step = (boxes[:, 2:] - boxes[:, :2]) / samples  # [P, 2]
  first = boxes[:, :2] + 0.5 * step - 0.5
  last = boxes[:, 2:] - 0.5 * step - 0.5
  scale = tf.maximum(size - 1.0, 1.0)
  normalized = tf.concat([first / scale, last / scale], axis=-1)
  crops = tf.image.crop_and_resize(
      masks[..., None], normalized, tf.cast(instance_indices, tf.int32),
      [samples, samples], method="bilinear", extrapolation_value=0.0)
  cells = tf.nn.avg_pool2d(crops, samples_per_cell, samples_per_cell, "VALID")
  return tf.cast(cells[..., 0] >= 0.5, tf.float32)
