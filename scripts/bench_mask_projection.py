"""Benchmark of project_swap_align2nat_gather: fused vs dense projection.

    .venv/bin/python scripts/bench_mask_projection.py [--k 16] [--repeats 3]

The bipyramid's masks of K windows per (level, window size) on the P2 grid
of an 800x1333 image padded to 896x1408 (224 x 352 cells, 128 channels),
float32, batch 1, forward and backward (gradients of the features, the
kernel and the bias), three ways in this one run:
- fused: the custom op, which never forms the projection;
- dense + custom gather: conv1x1 over the whole grid, then the
  swap_align2nat_gather custom op (the head's path before the fused op);
- pure TF: the same composition with the pure-TF gather (what XLA and
  exported graphs use).
K defaults to the task's mask caps (128, 64, 32, 16, 16, 16 at P2..P7),
clipped to the level's windows. "projection MB" is the dense projection
(and, in the backward, its gradient) that the fused op does not build.
Times are medians of --repeats calls after a warm-up call.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
import tensorflow as tf  # noqa: E402

from bench_ops import median_time  # noqa: E402  (scripts/ is on sys.path)
from tensormask_tf import ops  # noqa: E402

HEIGHT, WIDTH, CHANNELS = 224, 352, 128
CAPS = {2: 128, 3: 64, 4: 32, 5: 16, 6: 16, 7: 16}


def _variant(name, features, kernel, bias, indices, lam):
  def masks(f, k, b):
    if name == "fused":
      return ops.project_swap_align2nat_gather(f, k, b, indices, lam,
                                               backend="custom")
    projected = tf.tensordot(f, k, 1) + b
    return ops.swap_align2nat_gather(
        projected, indices, lam,
        backend="custom" if name == "dense + custom gather" else "tf")

  @tf.function
  def forward_backward(f, k, b, dy):
    with tf.GradientTape() as tape:
      tape.watch([f, k, b])
      loss = tf.reduce_sum(masks(f, k, b) * dy)
    return [tf.reduce_sum(g) for g in tape.gradient(loss, [f, k, b])]

  return forward_backward


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--k", type=int, default=0,
                      help="windows per (level, size); 0 = the task's caps")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  rng = np.random.RandomState(0)
  features = tf.constant(rng.normal(size=(1, HEIGHT, WIDTH, CHANNELS)),
                         tf.float32)
  names = ("fused", "dense + custom gather", "pure TF")
  print(f"# project_swap_align2nat_gather, P2 grid {HEIGHT}x{WIDTH}x"
        f"{CHANNELS}, float32, forward + backward, median of {args.repeats}")
  print("| level | lam | S | K | projection MB | fused ms | dense + custom "
        "gather ms | pure TF ms | dense / fused | pure TF / fused |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  totals = dict.fromkeys(names, 0.0)
  for level, cap in CAPS.items():
    lam = 2**(level - 2)
    out_h, out_w = -(-HEIGHT // lam), -(-WIDTH // lam)
    k = min(args.k or cap, out_h * out_w)
    for side in (11, 15):
      kernel = tf.constant(rng.normal(size=(CHANNELS, side * side)) * 0.05,
                           tf.float32)
      bias = tf.constant(rng.normal(size=(side * side,)), tf.float32)
      indices = np.stack([np.zeros(k, int), rng.randint(0, out_h, k),
                          rng.randint(0, out_w, k)], 1).astype(np.int32)
      dy = tf.constant(rng.normal(size=(k, lam * side, lam * side)),
                       tf.float32)
      times = {}
      for name in names:
        fn = _variant(name, features, kernel, bias, indices, lam)
        times[name] = median_time(
            lambda: [t.numpy() for t in fn(features, kernel, bias, dy)],
            args.repeats)
        totals[name] += times[name]
      projection_mb = HEIGHT * WIDTH * side * side * 4 / 2**20
      print(f"| P{level} | {lam} | {side} | {k} | {projection_mb:.0f} | "
            f"{1e3 * times['fused']:.1f} | "
            f"{1e3 * times['dense + custom gather']:.1f} | "
            f"{1e3 * times['pure TF']:.1f} | "
            f"{times['dense + custom gather'] / times['fused']:.1f} | "
            f"{times['pure TF'] / times['fused']:.1f} |", flush=True)
  print(f"| all | | | | | {1e3 * totals['fused']:.0f} | "
        f"{1e3 * totals['dense + custom gather']:.0f} | "
        f"{1e3 * totals['pure TF']:.0f} | "
        f"{totals['dense + custom gather'] / totals['fused']:.1f} | "
        f"{totals['pure TF'] / totals['fused']:.1f} |")


if __name__ == "__main__":
  main()
