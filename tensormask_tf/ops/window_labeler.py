"""Training labels of one image's windows (docs/model.md), with static shapes.

For every level k the labels hold class targets `[H_k, W_k, A]` (class id,
or -1 for negative windows) and box targets `[H_k, W_k, A*4]` (deltas, zero
for negatives). Masks are learned only at positive windows, so for every
level k and window size a the labels hold at most `cap = min(mask_caps[k],
H_k * W_k)` of them: their grid positions `[cap, 2]` (y, x), a weight
`[cap]` (0 for padding rows) and their mask targets `[cap, M, M]` (M =
`spec.mask_side(k, a)`: S_a * 2**k for the bipyramid, S_a for the
feature-pyramid heads). When an image has more positives of a (level, size)
than the cap, a random subset is kept, each weighted (positives / kept), so
the mask loss stays an unbiased estimate of its sum over every positive
(docs/model.md divides that sum by the number of positives); the number left
out is counted in `num_mask_positives_dropped`.
Crowd and padding ground truths (class < 0) never make a window positive.

Run per image (e.g. in the tf.data pipeline); the batch dimension is added by
batching.
"""

import tensorflow as tf

from tensormask_tf.ops import window_assignment
from tensormask_tf.ops import window_targets
from tensormask_tf.ops import windows as windows_lib


def mask_label_key(level: int, size_index: int, what: str) -> str:
  """Key of a per-(level, size) mask label: indices, valid or targets."""
  return f"mask_{what}_{level}_{size_index}"


def label_windows(spec: windows_lib.WindowSpec, image_size: tuple[int, int],
                  gt_boxes, gt_classes, gt_masks, mask_caps: dict[int, int],
                  gt_is_crowd=None, seed: int | None = None,
                  image_extent=None) -> dict[str, tf.Tensor]:
  """Labels every window of one image.

  Args:
    spec: the window layout.
    image_size: (height, width) of the (padded) model input.
    gt_boxes: [G, 4] boxes [ymin, xmin, ymax, xmax] in input pixels.
    gt_classes: [G] int class ids in [0, K); negative ids mark padding.
    gt_masks: [G, H, W] instance masks aligned with the input image.
    mask_caps: {level: the most positive windows per window size whose
      masks are learned}.
    gt_is_crowd: optional [G] bool; crowd regions are never positives.
    seed: optional seed of the sampling when a cap binds.
    image_extent: optional [2] int (height, width) of the image itself
      inside the padded input (before padding); the mask targets' replicated
      one-pixel ring sits there (window_targets.window_mask_targets).
      Default: the masks' full size.

  Returns:
    {"class_targets_{k}": [H_k, W_k, A] int32, "box_targets_{k}":
     [H_k, W_k, A*4] float32, mask_label_key(k, a, "indices"): [cap, 2]
     int32, ...("valid"): [cap] float32, ...("targets"): [cap, M, M]
     float32, "num_positives": float32 scalar,
     "num_mask_positives_dropped": float32 scalar}.
  """
  windows = windows_lib.window_boxes(spec, image_size)
  units = windows_lib.unit_lengths(spec, image_size)
  sizes = windows_lib.feature_sizes(spec, image_size)
  all_windows = tf.concat([windows[k] for k in sorted(windows)], axis=0)
  all_units = windows_lib.concat_levels(units)

  gt_boxes = tf.cast(tf.convert_to_tensor(gt_boxes), tf.float32)
  gt_classes = tf.cast(tf.convert_to_tensor(gt_classes), tf.int32)
  keep = gt_classes >= 0
  if gt_is_crowd is not None:
    keep &= tf.logical_not(tf.cast(gt_is_crowd, tf.bool))
  kept = tf.cast(tf.where(keep)[:, 0], tf.int32)
  boxes = tf.gather(gt_boxes, kept)
  classes = tf.gather(gt_classes, kept)

  matched, positive = window_assignment.assign_windows(
      boxes, all_windows, all_units, spec.min_window_size)
  # `matched` is 0 for negative windows; one appended zero row keeps the
  # gathers valid when no ground truth is left (their results are masked).
  safe_boxes = tf.concat([boxes, tf.zeros([1, 4])], axis=0)
  safe_classes = tf.concat([classes, tf.zeros([1], tf.int32)], axis=0)
  masks = tf.cast(tf.gather(tf.convert_to_tensor(gt_masks), kept), tf.float32)
  safe_masks = tf.concat(
      [masks, tf.zeros(tf.concat([[1], tf.shape(masks)[1:]], 0))], axis=0)
  is_positive = positive > 0
  class_targets = tf.where(is_positive, tf.gather(safe_classes, matched), -1)
  box_targets = window_targets.encode_window_boxes(
      tf.gather(safe_boxes, matched), all_windows)
  box_targets *= tf.cast(positive, tf.float32)[:, None]

  labels = {"num_positives": tf.reduce_sum(tf.cast(positive, tf.float32))}
  dropped = tf.constant(0.0)
  num_sizes = spec.num_sizes
  start = 0
  for level in spec.levels:
    grid_h, grid_w = sizes[level]
    count = grid_h * grid_w * num_sizes
    level_slice = slice(start, start + count)
    labels[f"class_targets_{level}"] = tf.reshape(
        class_targets[level_slice], [grid_h, grid_w, num_sizes])
    labels[f"box_targets_{level}"] = tf.reshape(
        box_targets[level_slice], [grid_h, grid_w, num_sizes * 4])
    level_positive = tf.reshape(is_positive[level_slice], [-1, num_sizes])
    level_matched = tf.reshape(matched[level_slice], [-1, num_sizes])
    level_windows = tf.reshape(all_windows[level_slice], [-1, num_sizes, 4])
    # A level has at most H_k * W_k windows of a size: more rows would only
    # be padding whose (large, at high levels) masks get computed.
    cap = min(mask_caps[level], grid_h * grid_w)
    for a in range(num_sizes):
      cells = tf.cast(tf.where(level_positive[:, a])[:, 0], tf.int32)
      num = tf.shape(cells)[0]
      dropped += tf.cast(tf.maximum(num - cap, 0), tf.float32)
      cells = tf.random.shuffle(cells, seed=seed)[:cap]
      padding = cap - tf.shape(cells)[0]
      side = spec.mask_side(level, a)
      # Targets of the kept windows only; padding rows are zeros.
      targets = window_targets.window_mask_targets(
          safe_masks, tf.gather(level_matched[:, a], cells),
          tf.gather(level_windows[:, a], cells), side,
          samples_per_cell=spec.mask_cell(level), image_extent=image_extent)
      # ensure_shape: batches must have static shapes for XLA.
      labels[mask_label_key(level, a, "targets")] = tf.ensure_shape(
          tf.pad(targets, [[0, padding], [0, 0], [0, 0]]), [cap, side, side])
      kept = tf.maximum(tf.shape(cells)[0], 1)
      weight = tf.cast(num, tf.float32) / tf.cast(kept, tf.float32)
      labels[mask_label_key(level, a, "valid")] = tf.ensure_shape(
          tf.pad(tf.fill(tf.shape(cells), weight), [[0, padding]]), [cap])
      cells = tf.pad(cells, [[0, padding]])
      labels[mask_label_key(level, a, "indices")] = tf.ensure_shape(
          tf.stack([cells // grid_w, cells % grid_w], axis=1), [cap, 2])
    start += count
  labels["num_mask_positives_dropped"] = dropped
  return labels
