"""Benchmark of up_align2nat: custom op vs pure TF, integer and fractional lam.

    .venv/bin/python scripts/bench_up_align2nat.py [--repeats 5]

The upscale-aligned heads' sizes (Tables 2a/2b): T = 15 x 15 masks from
S = 15 / lam coarse ones (lam 1.5: 10 x 10, 3: 5 x 5, 5: 3 x 3) on the P3
grid of an 800x1344 image (H, W = 100, 168), batch 1, float32: the dense
op forward and forward + backward, and the gathered op at K = 100 and 1000
windows (what training computes: the positives only). Every time is the
median of --repeats calls after a warm-up call, all in this one process;
the ratio is pure TF's time over the custom op's, measured in the same run.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
import tensorflow as tf  # noqa: E402

from bench_ops import median_time  # noqa: E402  (scripts/bench_ops.py)
from tensormask_tf import ops  # noqa: E402

HEIGHT, WIDTH, SIDE = 100, 168, 15


def _forward_backward(fn):
  @tf.function
  def run(x, dy):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = fn(x)
    return tape.gradient(y, x, output_gradients=dy)
  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rng = np.random.RandomState(0)
  print("| lam | S -> T | op | pure TF (ms) | custom op (ms) | TF / custom |")
  print("| --- | --- | --- | --- | --- | --- |")
  for lam in (1.5, 3, 5):
    window = round(SIDE / lam)
    x = tf.constant(rng.uniform(-3, 3, (1, HEIGHT, WIDTH, window**2)),
                    tf.float32)
    dense_dy = tf.constant(rng.uniform(-1, 1, (1, HEIGHT, WIDTH, SIDE**2)),
                           tf.float32)
    rows = {"dense forward": {}, "dense forward + backward": {}}
    for k in (100, 1000):
      rows[f"gathered K={k} forward + backward"] = {}
    for backend in ("tf", "custom"):
      dense = tf.function(lambda x, b=backend: ops.up_align2nat(
          x, lam, backend=b))
      rows["dense forward"][backend] = median_time(lambda: dense(x),
                                                   args.repeats)
      both = _forward_backward(lambda x, b=backend: ops.up_align2nat(
          x, lam, backend=b))
      rows["dense forward + backward"][backend] = median_time(
          lambda: both(x, dense_dy), args.repeats)
      for k in (100, 1000):
        indices = tf.constant(np.stack([
            np.zeros(k, np.int32), rng.randint(0, HEIGHT, k),
            rng.randint(0, WIDTH, k)], 1), tf.int32)
        dy = tf.constant(rng.uniform(-1, 1, (k, SIDE, SIDE)), tf.float32)
        gathered = _forward_backward(
            lambda x, b=backend, i=indices: ops.up_align2nat_gather(
                x, i, lam, backend=b))
        rows[f"gathered K={k} forward + backward"][backend] = median_time(
            lambda: gathered(x, dy), args.repeats)
    for name, times in rows.items():
      print(f"| {lam} | {window} -> {SIDE} | {name} | "
            f"{1e3 * times['tf']:.2f} | {1e3 * times['custom']:.2f} | "
            f"{times['tf'] / times['custom']:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
