"""TensorMask's losses (docs/model.md), written with TF core ops.

Each loss is summed here; the task divides every sum by
`positive_normalizer(num_positives)`: max(1, the number of positive windows
summed over all replicas).
"""

import tensorflow as tf


def focal_loss_star(logits, targets, alpha: float = 0.3,
                    gamma: float = 3.0) -> tf.Tensor:
  """Element-wise sigmoid focal loss FL* (the release's form, no offset).

  `x_t = x` where the target is 1, else `-x`; loss = `-log(sigmoid(gamma *
  x_t)) / gamma`, times `alpha` for targets 1 and `1 - alpha` for targets 0.
  Computed stably as `softplus(-gamma * x_t) / gamma`.

  Args:
    logits: [...] float class logits.
    targets: [...] same shape, 0 or 1.
    alpha: weight of the positive targets.
    gamma: focusing parameter, > 0.

  Returns:
    [...] the loss of every element, in the logits' dtype.
  """
  logits = tf.convert_to_tensor(logits)
  targets = tf.cast(targets, logits.dtype)
  signed = logits * (2.0 * targets - 1.0)  # x_t
  loss = tf.math.softplus(-gamma * signed) / gamma
  return loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))


def box_l1_loss(deltas, target_deltas, positive_weights) -> tf.Tensor:
  """Summed L1 loss of the weighted box deltas over positive windows.

  Args:
    deltas: [..., 4] predicted deltas.
    target_deltas: [..., 4] encoded targets (window_targets.py).
    positive_weights: [...] 1 for positive windows, 0 otherwise.
  """
  l1 = tf.reduce_sum(tf.abs(deltas - tf.cast(target_deltas, deltas.dtype)), -1)
  return tf.reduce_sum(l1 * tf.cast(positive_weights, deltas.dtype))


def mask_loss(mask_logits, mask_targets, positive_weights,
              positive_pixel_weight: float = 1.5) -> tf.Tensor:
  """Summed mask BCE over positive windows of one mask side M.

  Every pixel's binary cross-entropy (with logits) is weighted by
  `2.0 / M**2`, times `positive_pixel_weight` where the target is 1.

  Args:
    mask_logits: [P, M, M] predicted natural masks (logits).
    mask_targets: [P, M, M] targets in {0, 1}.
    positive_weights: [P] 1 for real positive windows, 0 for padding.
    positive_pixel_weight: weight of target-1 pixels.
  """
  mask_logits = tf.convert_to_tensor(mask_logits)
  targets = tf.cast(mask_targets, mask_logits.dtype)
  side = mask_logits.shape[-1]
  bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets,
                                                logits=mask_logits)
  weights = (2.0 / side**2) * (1.0 + (positive_pixel_weight - 1.0) * targets)
  per_window = tf.reduce_sum(bce * weights, axis=[-2, -1])
  return tf.reduce_sum(per_window * tf.cast(positive_weights, per_window.dtype))


def positive_mask_rows(indices, targets, valid):
  """The rows of the mask caps whose `valid` is non-zero.

  Most rows of the caps are padding of weight 0 (at 800x1333 about 80% of
  the caps' mask values), so the masks need not be computed for them. The
  row count becomes data-dependent, which XLA cannot compile.

  Args:
    indices: [R, 3] window rows (n, y, x).
    targets: [R, M, M] mask targets.
    valid: [R] weights, 0 for padding rows.

  Returns:
    (indices, targets, valid) of the rows with valid != 0, in order.
  """
  keep = tf.where(tf.not_equal(valid, 0))[:, 0]
  return tuple(tf.gather(t, keep) for t in (indices, targets, valid))


def positive_normalizer(num_positives) -> tf.Tensor:
  """max(1, num_positives summed over the replicas of the current step).

  Call it inside the replica function (strategy.run); outside any strategy
  it is max(1, num_positives).
  """
  num = tf.cast(num_positives, tf.float32)
  context = tf.distribute.get_replica_context()
  if context is not None and context.num_replicas_in_sync > 1:
    num = context.all_reduce(tf.distribute.ReduceOp.SUM, num)
  return tf.maximum(num, 1.0)


def tensormask_losses(outputs: dict, labels: dict, masks_at_windows_fn,
                      levels: list[int], num_sizes: int, num_classes: int,
                      focal_alpha: float = 0.3, focal_gamma: float = 3.0,
                      mask_positive_weight: float = 1.5,
                      static_mask_shapes: bool = False,
                      normalizer: tf.Tensor | None = None
                      ) -> dict[str, tf.Tensor]:
  """The three losses of a batch, each divided by the positive normalizer.

  Args:
    outputs: the model's outputs ("class_outputs", "box_outputs": per-level
      dicts [N, H_k, W_k, A*K] and [N, H_k, W_k, A*4]).
    labels: batched `window_labeler.label_windows` labels.
    masks_at_windows_fn: `([(level, size_index, indices [K, 3])]) ->
      [[K, M, M]]`: mask logits at the given windows of every (level, size)
      pair, in one call (the head's `mask_logits_at` on the model's mask
      features, whose backward builds one feature gradient per level, not
      one per level and window size), so only labelled positives are
      computed.
    levels: pyramid levels with windows.
    num_sizes: A, window sizes per location.
    num_classes: K.
    focal_alpha, focal_gamma: FL* parameters.
    mask_positive_weight: weight of the target-1 mask pixels.
    static_mask_shapes: compute the masks of every row of the mask caps,
      padding included (static shapes, which XLA and TPUs need), instead of
      the positives' rows only (a data-dependent count; the same loss).
    normalizer: `positive_normalizer` of the labels' positives, when the
      caller computed it (outside control flow that replicas may take
      apart); None computes it here.

  Returns:
    {"class_loss", "box_loss", "mask_loss", "total_loss", "num_positives"}.
  """
  num_positives = tf.reduce_sum(labels["num_positives"])
  if normalizer is None:
    normalizer = positive_normalizer(num_positives)
  class_loss = box_loss = 0.0
  windows, mask_labels = [], []
  for level in levels:
    logits = outputs["class_outputs"][str(level)]
    batch = tf.shape(logits)[0]
    logits = tf.reshape(logits, [batch, -1, num_sizes, num_classes])
    class_targets = tf.reshape(labels[f"class_targets_{level}"],
                               [batch, -1, num_sizes])
    one_hot = tf.one_hot(class_targets, num_classes, dtype=logits.dtype)
    class_loss += tf.reduce_sum(focal_loss_star(logits, one_hot, focal_alpha,
                                                focal_gamma))
    deltas = tf.reshape(outputs["box_outputs"][str(level)],
                        [batch, -1, num_sizes, 4])
    box_targets = tf.reshape(labels[f"box_targets_{level}"],
                             [batch, -1, num_sizes, 4])
    box_loss += box_l1_loss(deltas, box_targets, class_targets >= 0)
    for a in range(num_sizes):
      cells = labels[f"mask_indices_{level}_{a}"]  # [N, cap, 2]
      cap = tf.shape(cells)[1]
      image = tf.repeat(tf.range(batch, dtype=cells.dtype)[:, None], cap, 1)
      indices = tf.reshape(tf.concat([image[..., None], cells], -1), [-1, 3])
      targets = labels[f"mask_targets_{level}_{a}"]
      targets = tf.reshape(targets, [-1, *targets.shape[-2:]])
      valid = tf.reshape(labels[f"mask_valid_{level}_{a}"], [-1])
      if not static_mask_shapes:
        indices, targets, valid = positive_mask_rows(indices, targets, valid)
      windows.append((level, a, indices))
      mask_labels.append((targets, valid))
  mask_total = 0.0
  for logits, (targets, valid) in zip(masks_at_windows_fn(windows),
                                      mask_labels):
    mask_total += mask_loss(logits, targets, valid, mask_positive_weight)
  class_loss /= normalizer
  box_loss /= normalizer
  mask_total /= normalizer
  return {"class_loss": class_loss, "box_loss": box_loss,
          "mask_loss": mask_total,
          "total_loss": class_loss + box_loss + mask_total,
          "num_positives": num_positives}
