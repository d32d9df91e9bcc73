"""Tests of TensorMask's losses against numpy float64 formulas."""

import numpy as np
import pytest
import tensorflow as tf

from tensormask_tf import losses


def _np_log_sigmoid(z):
  return -np.logaddexp(0.0, -z)


@pytest.mark.parametrize("alpha,gamma", [(0.3, 3.0), (0.25, 2.0), (0.5, 1.0)])
def test_focal_loss_star_matches_formula(alpha, gamma):
  rng = np.random.RandomState(0)
  logits = rng.uniform(-8, 8, (5, 7))
  targets = (rng.uniform(size=(5, 7)) < 0.3).astype(np.float64)
  got = losses.focal_loss_star(logits, targets, alpha=alpha, gamma=gamma)
  x_t = np.where(targets == 1, logits, -logits)
  want = (-_np_log_sigmoid(gamma * x_t) / gamma *
          np.where(targets == 1, alpha, 1 - alpha))
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_focal_loss_star_hand_values_and_stability():
  # x = 0: -log(1/2)/gamma for either target.
  got = losses.focal_loss_star([0.0, 0.0], [1.0, 0.0], alpha=0.3, gamma=3.0)
  np.testing.assert_allclose(got, [0.3 * np.log(2) / 3, 0.7 * np.log(2) / 3],
                             rtol=1e-6)
  # Extreme logits stay finite: a confident wrong answer costs ~|x|.
  big = losses.focal_loss_star(tf.constant([-200.0, 200.0]), [1.0, 0.0])
  np.testing.assert_allclose(big, [0.3 * 200, 0.7 * 200], rtol=1e-5)
  with tf.GradientTape() as tape:
    x = tf.constant([-200.0, 200.0, 0.0])
    tape.watch(x)
    loss = tf.reduce_sum(losses.focal_loss_star(x, [1.0, 0.0, 1.0]))
  assert np.all(np.isfinite(tape.gradient(loss, x)))


def test_box_l1_loss_sums_positive_windows_only():
  rng = np.random.RandomState(1)
  pred, target = rng.randn(6, 4), rng.randn(6, 4)
  weights = np.array([1, 0, 1, 1, 0, 0], np.float64)
  want = np.sum(np.abs(pred - target).sum(axis=1) * weights)
  np.testing.assert_allclose(losses.box_l1_loss(pred, target, weights), want,
                             rtol=1e-12)


@pytest.mark.parametrize("side", [11, 30])
def test_mask_loss_matches_weighted_bce(side):
  rng = np.random.RandomState(2)
  logits = rng.uniform(-5, 5, (4, side, side))
  targets = (rng.uniform(size=(4, side, side)) < 0.4).astype(np.float64)
  weights = np.array([1, 1, 0, 1], np.float64)
  bce = -(targets * _np_log_sigmoid(logits) +
          (1 - targets) * _np_log_sigmoid(-logits))
  pixel_w = 2.0 / side**2 * np.where(targets == 1, 1.5, 1.0)
  want = np.sum((bce * pixel_w).sum(axis=(1, 2)) * weights)
  np.testing.assert_allclose(losses.mask_loss(logits, targets, weights), want,
                             rtol=1e-12)


def test_positive_normalizer_is_at_least_one():
  assert float(losses.positive_normalizer(0)) == 1.0
  assert float(losses.positive_normalizer(7)) == 7.0


def test_positive_normalizer_sums_over_replicas():
  # MirroredStrategy over 2 logical CPUs needs a fresh process (logical
  # devices are fixed when TensorFlow starts).
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = """
import tensormask_tf, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tensormask_tf import losses
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
def replica_fn():
  ctx = tf.distribute.get_replica_context()
  local = tf.cast(ctx.replica_id_in_sync_group, tf.float32) * 2.0 + 1.0
  return losses.positive_normalizer(local)  # replicas: 1 and 3
values = strategy.experimental_local_results(strategy.run(replica_fn))
print("NORMALIZERS", [float(v) for v in values])
"""
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "NORMALIZERS [4.0, 4.0]" in result.stdout


@pytest.mark.parametrize("static_mask_shapes", [False, True])
def test_mask_loss_of_the_caps_counts_positive_rows_only(static_mask_shapes):
  """tensormask_losses' mask term: the weighted BCE of the valid rows of the
  caps over the normalizer; without static shapes the padding rows' masks
  are never asked for."""
  rng = np.random.RandomState(3)
  batch, grid, cap, side = 2, 4, 5, 6
  table = tf.Variable(rng.uniform(-4, 4, (batch, grid, grid, side, side)),
                      dtype=tf.float32)
  cells = rng.randint(0, grid, (batch, cap, 2)).astype(np.int32)
  valid = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]], np.float32)
  targets = (rng.uniform(size=(batch, cap, side, side)) < 0.5).astype(
      np.float32)
  labels = {
      "num_positives": np.array([3.0, 4.0], np.float32),
      "class_targets_3": -np.ones((batch, grid, grid), np.int32),
      "box_targets_3": np.zeros((batch, grid, grid, 4), np.float32),
      "mask_indices_3_0": cells, "mask_valid_3_0": valid,
      "mask_targets_3_0": targets}
  outputs = {"class_outputs": {"3": tf.fill([batch, grid, grid, 2], -30.0)},
             "box_outputs": {"3": tf.zeros([batch, grid, grid, 4])}}
  asked = []

  def masks_at_windows_fn(windows):
    (_, _, indices), = windows
    asked.append(int(tf.shape(indices)[0]))
    return [tf.gather_nd(table, indices)]

  with tf.GradientTape() as tape:
    result = losses.tensormask_losses(
        outputs, labels, masks_at_windows_fn, [3], 1, 2,
        static_mask_shapes=static_mask_shapes)
  grad = tape.gradient(result["mask_loss"], table).numpy()
  assert asked == [batch * cap if static_mask_shapes else 3]
  want, want_grad = 0.0, np.zeros(table.shape)
  for n, k in zip(*np.nonzero(valid)):
    x = table.numpy()[n, cells[n, k, 0], cells[n, k, 1]].astype(np.float64)
    t = targets[n, k]
    w = 2.0 / side**2 * np.where(t == 1, 1.5, 1.0)
    want += np.sum(w * -(t * _np_log_sigmoid(x) +
                         (1 - t) * _np_log_sigmoid(-x)))
    want_grad[n, cells[n, k, 0], cells[n, k, 1]] += (
        w * (1 / (1 + np.exp(-x)) - t) / 7.0)
  np.testing.assert_allclose(result["mask_loss"], want / 7.0, rtol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
