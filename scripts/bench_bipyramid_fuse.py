"""Benchmark: the bipyramid's fuse, direct vs on each level's own grid.

    .venv/bin/python scripts/bench_bipyramid_fuse.py [--repeats 7]

docs/model.md's fuse for level k is ReLU(conv3x3(up_k(F_k) + P2m) + b) on the P2
grid, up_k the bilinear upsampling by 2^k (cropped to P2's size). The head
computes it, for 2^k >= 4, as ReLU(ops.upsampled_conv3x3(F_k) +
conv3x3(P2m) + b), with conv3x3(P2m) computed once for every level
(tensormask_tf/ops/upsampled_conv.py says why that is exact). Per level, at
the P2 grid of an 800x1333 image padded to 896x1408 (224 x 352 cells, 128
channels, float32, batch 1, random weights), this prints both forms' times
(the second without the shared conv3x3(P2m), printed once) and their
largest difference. Times are medians of --repeats calls after a warm-up
call.
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


def _median_ms(fn, arg, repeats):
  return median_time(lambda: fn(arg).numpy(), repeats) * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()

  rng = np.random.RandomState(0)
  kernel = tf.constant(rng.normal(0, 0.05, (3, 3, CHANNELS, CHANNELS)),
                       tf.float32)
  bias = tf.constant(rng.normal(0, 0.1, (CHANNELS,)), tf.float32)
  p2m = tf.constant(rng.normal(0, 1, (1, HEIGHT, WIDTH, CHANNELS)),
                    tf.float32)
  conv_p2m_fn = tf.function(lambda p: tf.nn.conv2d(p, kernel, 1, "SAME"))
  conv_p2m = conv_p2m_fn(p2m)

  def direct(features, scale):
    up = tf.image.resize(features, tf.shape(features)[1:3] * scale)
    up = up[:, :HEIGHT, :WIDTH]
    return tf.nn.relu(tf.nn.conv2d(up + p2m, kernel, 1, "SAME") + bias)

  def on_coarse_grid(features, scale):
    out = ops.upsampled_conv3x3(features, kernel, scale, [HEIGHT, WIDTH])
    return tf.nn.relu(out + conv_p2m + bias)

  print(f"# bipyramid fuse, P2 grid [1,{HEIGHT},{WIDTH},{CHANNELS}] float32, "
        f"median of {args.repeats}")
  print(f"# conv3x3(P2m), shared by every level on the coarse grid: "
        f"{_median_ms(conv_p2m_fn, p2m, args.repeats):.1f} ms")
  print()
  print("| level k | scale | direct ms | on the coarse grid ms | "
        "direct / coarse | max abs difference | max abs value |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for k in range(1, 6):
    scale = 2**k
    features = tf.constant(rng.normal(0, 1, (1, -(-HEIGHT // scale),
                                             -(-WIDTH // scale), CHANNELS)),
                           tf.float32)
    direct_fn = tf.function(lambda f, s=scale: direct(f, s))
    coarse_fn = tf.function(lambda f, s=scale: on_coarse_grid(f, s))
    want, got = direct_fn(features).numpy(), coarse_fn(features).numpy()
    t_direct = _median_ms(direct_fn, features, args.repeats)
    t_coarse = _median_ms(coarse_fn, features, args.repeats)
    print(f"| {k} | {scale} | {t_direct:.1f} | {t_coarse:.1f} | "
          f"{t_direct / t_coarse:.2f}x | {np.abs(want - got).max():.1e} | "
          f"{np.abs(want).max():.1f} |", flush=True)


if __name__ == "__main__":
  main()
