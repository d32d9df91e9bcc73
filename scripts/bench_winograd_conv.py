"""Benchmark: the head's 3x3 convolutions, tf.nn.conv2d vs Winograd F(4x4, 3x3).

    .venv/bin/python scripts/bench_winograd_conv.py [--sizes 800,512]
        [--repeats 5]

For every 3x3 convolution shape of TensorMask's head (SPEC.md 3: class
tower 256 -> 256 and logits 256 -> A*K = 160 for COCO; box and mask towers
256 -> 128 then 128 -> 128; box deltas 128 -> 8; the bipyramid's fuse
128 -> 128 on the P2 grid) on each pyramid level P2..P7 of the padded input
(--sizes 800: an 800x1333 image padded to 896x1408; 512: 512x512), this
prints tf.nn.conv2d's time, ops.winograd_conv3x3's, their ratio, the largest
difference relative to the output's largest value, and whether
ops.winograd_pays_off picks Winograd there. Then, per input size, the sum
over the head's layers (each shape times the number of head layers that
have it) with tf.nn.conv2d everywhere and with the rule's choice. Float32,
batch 1, random data; medians of --repeats calls after a warm-up call, each
function traced once.
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

PADDED = {800: (896, 1408), 512: (512, 512)}
LEVELS = range(2, 8)
# (C, F): number of such layers in the head on every level, and on P2 only.
SHAPES = {
    (256, 256): (4, 0),   # class tower
    (256, 160): (1, 0),   # class logits, A = 2 window sizes x K = 80
    (256, 128): (2, 0),   # first layer of the box and mask towers
    (128, 128): (6, 2),   # the other box / mask tower layers; the fuse
    (128, 8): (1, 0),     # box deltas, A x 4
}


def _median_ms(fn, args, repeats):
  return median_time(lambda: fn(*args).numpy(), repeats) * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="800,512")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  direct_fn = tf.function(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"))
  winograd_fn = tf.function(ops.winograd_conv3x3)
  rng = np.random.RandomState(0)

  print(f"# float32, batch 1, median of {args.repeats}")
  print("| input | level | grid | C -> F | conv2d ms | Winograd ms | "
        "conv2d / Winograd | max rel difference | rule picks |")
  print("|---|---|---|---|---:|---:|---:|---:|---|")
  totals = {}
  for size in (int(s) for s in args.sizes.split(",")):
    height, width = PADDED[size]
    total_direct = total_rule = 0.0
    for level in LEVELS:
      grid = (height // 2**level, width // 2**level)
      for (channels, filters), (per_level, p2_only) in SHAPES.items():
        count = per_level + (p2_only if level == 2 else 0)
        x = tf.constant(rng.normal(0, 1, (1, *grid, channels)), tf.float32)
        k = tf.constant(rng.normal(0, 0.05, (3, 3, channels, filters)),
                        tf.float32)
        want = direct_fn(x, k).numpy()
        got = winograd_fn(x, k).numpy()
        rel = np.abs(want - got).max() / np.abs(want).max()
        t_direct = _median_ms(direct_fn, (x, k), args.repeats)
        t_winograd = _median_ms(winograd_fn, (x, k), args.repeats)
        picks = ops.winograd_pays_off(*grid, channels, filters)
        total_direct += count * t_direct
        total_rule += count * (t_winograd if picks else t_direct)
        print(f"| {size} | P{level} | {grid[0]}x{grid[1]} | {channels} -> "
              f"{filters} | {t_direct:.1f} | {t_winograd:.1f} | "
              f"{t_direct / t_winograd:.2f}x | {rel:.1e} | "
              f"{'Winograd' if picks else 'conv2d'} |", flush=True)
    totals[size] = (total_direct, total_rule)
  print()
  print("| input | head's 3x3 convs, conv2d ms | with the rule ms | ratio |")
  print("|---|---:|---:|---:|")
  for size, (total_direct, total_rule) in totals.items():
    print(f"| {size} | {total_direct:.0f} | {total_rule:.0f} | "
          f"{total_direct / total_rule:.2f}x |")


if __name__ == "__main__":
  main()
