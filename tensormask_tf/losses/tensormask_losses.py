"""TensorMask's losses (SPEC.md 3), written with TF core ops.

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
