"""Benchmark: 3x3 convolutions, tf.nn.conv2d vs Winograd F(4x4, 3x3).

    .venv/bin/python scripts/bench_winograd_conv.py [--sizes 800,512]
        [--repeats 5] [--network head|backbone_fpn]

--network head (the default): every 3x3 convolution shape of TensorMask's
head (docs/model.md: class tower 256 -> 256 and logits 256 -> A*K = 160 for
COCO; box and mask towers 256 -> 128 then 128 -> 128; box deltas 128 -> 8;
the bipyramid's fuse 128 -> 128 on the P2 grid) on each pyramid level
P2..P7, "same" padding.
--network backbone_fpn: the stride-1 3x3 convolutions of the release's
backbone and FPN (modeling/backbones/msra_resnet.py,
modeling/decoders/detectron2_fpn.py): the bottlenecks' 64 -> 64 (res2,
3 blocks, C2 grid), 128 -> 128 (res3, 4), 256 -> 256 (res4, 6),
512 -> 512 (res5, 3) and the FPN's output convs 256 -> 256 on P2..P5, each
as those models run it: "valid" on an input zero-padded by one pixel.

On the padded input (--sizes 800: an 800x1333 image padded to 896x1408;
512: 512x512), this prints tf.nn.conv2d's time, ops.winograd_conv3x3's,
their ratio, the largest difference relative to the output's largest
value, and whether ops.winograd_pays_off picks Winograd there. Then, per
input size, the sum over the network's layers (each shape times the number
of layers that have it) with tf.nn.conv2d everywhere and with the rule's
choice. Float32, batch 1, random data; each function traced once and
called once to warm up, then the two forms called in turn --repeats times
(so a busy machine slows both alike), medians.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
import tensorflow as tf  # noqa: E402

from tensormask_tf import ops  # noqa: E402

PADDED = {800: (896, 1408), 512: (512, 512)}
# Per network: {(level, C, F): layers}, level the grid's stride 2**level.
HEAD_LEVELS = range(2, 8)
# (C, F): number of such layers in the head on every level, and on P2 only.
HEAD_SHAPES = {
    (256, 256): (4, 0),   # class tower
    (256, 160): (1, 0),   # class logits, A = 2 window sizes x K = 80
    (256, 128): (2, 0),   # first layer of the box and mask towers
    (128, 128): (6, 2),   # the other box / mask tower layers; the fuse
    (128, 8): (1, 0),     # box deltas, A x 4
}
NETWORKS = {
    "head": ({(level, c, f): per_level + (p2_only if level == 2 else 0)
              for level in HEAD_LEVELS
              for (c, f), (per_level, p2_only) in HEAD_SHAPES.items()},
             "SAME"),
    # ResNet-50's bottlenecks (3, 4, 6, 3 blocks), one stride-1 3x3 conv
    # each; then the FPN's output convs.
    "backbone_fpn": ({(2, 64, 64): 3, (3, 128, 128): 4, (4, 256, 256): 6,
                      (5, 512, 512): 3, **{(level, 256, 256, "fpn"): 1
                                           for level in range(2, 6)}},
                     "VALID"),
}


def _interleaved_ms(fns, repeats):
  """Median ms of each of fns (each called with no arguments), after one
  warm-up call each, calling them in turn."""
  for fn in fns:
    fn()
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, kept in zip(fns, times):
      start = time.perf_counter()
      fn()
      kept.append(time.perf_counter() - start)
  return [statistics.median(t) * 1e3 for t in times]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="800,512")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--network", default="head", choices=sorted(NETWORKS))
  args = parser.parse_args()
  shapes, padding = NETWORKS[args.network]
  direct_fn = tf.function(lambda x, k: tf.nn.conv2d(x, k, 1, padding))
  winograd_fn = tf.function(
      lambda x, k: ops.winograd_conv3x3(x, k, padding))
  border = 2 if padding == "VALID" else 0
  rng = np.random.RandomState(0)

  print(f"# {args.network}, float32, batch 1, {padding} padding, median of "
        f"{args.repeats}")
  print("| input | layer | grid | C -> F | conv2d ms | Winograd ms | "
        "conv2d / Winograd | max rel difference | rule picks |")
  print("|---|---|---|---|---:|---:|---:|---:|---|")
  totals = {}
  for size in (int(s) for s in args.sizes.split(",")):
    height, width = PADDED[size]
    total_direct = total_rule = 0.0
    for (level, channels, filters, *fpn), count in shapes.items():
      grid = (height // 2**level, width // 2**level)
      x = tf.constant(rng.normal(0, 1, (1, grid[0] + border,
                                        grid[1] + border, channels)),
                      tf.float32)
      k = tf.constant(rng.normal(0, 0.05, (3, 3, channels, filters)),
                      tf.float32)
      want = direct_fn(x, k).numpy()
      got = winograd_fn(x, k).numpy()
      rel = np.abs(want - got).max() / np.abs(want).max()
      t_direct, t_winograd = _interleaved_ms(
          [lambda: direct_fn(x, k).numpy(), lambda: winograd_fn(x, k).numpy()],
          args.repeats)
      picks = ops.winograd_pays_off(*grid, channels, filters)
      total_direct += count * t_direct
      total_rule += count * (t_winograd if picks else t_direct)
      if args.network == "head":
        name = f"P{level}"
      else:
        name = f"fpn_output{level}" if fpn else f"res{level}"
      print(f"| {size} | {name} x{count} | {grid[0]}x{grid[1]} | "
            f"{channels} -> {filters} | {t_direct:.1f} | {t_winograd:.1f} | "
            f"{t_direct / t_winograd:.2f}x | {rel:.1e} | "
            f"{'Winograd' if picks else 'conv2d'} |", flush=True)
    totals[size] = (total_direct, total_rule)
  print()
  print(f"| input | {args.network}'s 3x3 convs, conv2d ms | with the rule ms "
        "| ratio |")
  print("|---|---:|---:|---:|")
  for size, (total_direct, total_rule) in totals.items():
    print(f"| {size} | {total_direct:.0f} | {total_rule:.0f} | "
          f"{total_direct / total_rule:.2f}x |")


if __name__ == "__main__":
  main()
