"""TensorMask's assignment rule of windows to ground truths (docs/model.md).

A window W (box, unit length u = its stride) is positive for ground truth G
iff all of:
- containment: G lies inside W (edges may touch);
- scale: `max_side(W) - u <= max(2 * max_side(G), min_window_size)`;
- centrality: `||centre(G) - centre(W)|| / u <= 1`.
A window that qualifies for more than one G is negative (uniqueness).
Everything else is negative; nothing is ignored.
"""

import tensorflow as tf


def _max_side(boxes: tf.Tensor) -> tf.Tensor:
  return tf.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])


def _centres(boxes: tf.Tensor) -> tf.Tensor:
  return (boxes[..., :2] + boxes[..., 2:]) / 2.0


def assign_windows(gt_boxes, window_boxes, unit_lengths,
                   min_window_size) -> tuple[tf.Tensor, tf.Tensor]:
  """Assigns windows to ground-truth boxes.

  Args:
    gt_boxes: [G, 4] ground-truth boxes [ymin, xmin, ymax, xmax], absolute
      pixels; G may be 0.
    window_boxes: [M, 4] windows, same convention.
    unit_lengths: [M] each window's unit length (its level's stride), pixels.
    min_window_size: scalar, the scale clause's floor (smallest level-0
      window side minus its stride; WindowSpec.min_window_size).

  Returns:
    matched_gt: [M] int32, the index of the matched ground truth for
      positives, 0 for negatives.
    labels: [M] int32, 1 for positive windows, 0 for negative ones.
  """
  gt = tf.cast(tf.convert_to_tensor(gt_boxes), tf.float32)
  windows = tf.cast(tf.convert_to_tensor(window_boxes), tf.float32)
  units = tf.cast(tf.convert_to_tensor(unit_lengths), tf.float32)
  for name, t, rank in (("gt_boxes", gt, 2), ("window_boxes", windows, 2),
                        ("unit_lengths", units, 1)):
    if t.shape.rank != rank or (rank == 2 and t.shape[-1] != 4):
      want = "[N, 4]" if rank == 2 else "[M]"
      raise ValueError(f"assign_windows: {name} must have shape {want}, got "
                       f"{t.shape}.")

  g = gt[:, None, :]  # [G, 1, 4]
  w = windows[None, :, :]  # [1, M, 4]
  contained = tf.reduce_all(
      tf.concat([g[..., :2] >= w[..., :2], g[..., 2:] <= w[..., 2:]], axis=-1),
      axis=-1)  # [G, M]
  upper = tf.maximum(2.0 * _max_side(gt), tf.cast(min_window_size, tf.float32))
  scaled = (_max_side(windows) - units)[None, :] <= upper[:, None]
  offset = (_centres(gt)[:, None, :] - _centres(windows)[None, :, :]) / (
      units[None, :, None])
  central = tf.reduce_sum(tf.square(offset), axis=-1) <= 1.0
  qualifies = tf.cast(contained & scaled & central, tf.int32)  # [G, M]

  labels = tf.cast(tf.equal(tf.reduce_sum(qualifies, axis=0), 1), tf.int32)
  # A zero row keeps argmax defined when there is no ground truth.
  padded = tf.concat([qualifies, tf.zeros_like(windows[None, :, 0], tf.int32)],
                     axis=0)
  matched = tf.cast(tf.argmax(padded, axis=0), tf.int32)
  return matched * labels, labels
