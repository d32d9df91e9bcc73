"""Benchmark: the bipyramid's fuse, direct vs an exact decomposition.

    .venv/bin/python scripts/bench_bipyramid_fuse.py [--repeats 7]

SPEC 3's fuse for level k is ReLU(conv3x3(up_k(F_k) + P2m) + b) on the P2
grid, up_k the bilinear upsampling by 2^k (cropped to P2's size). Its
convolution is linear, so it splits into conv3x3(P2m), the same for every
level, plus conv3x3(up_k(F_k)); and the convolution's channel mixing
commutes with the per-channel upsampling:

    conv3x3(up(F))[p] = sum over taps j with p + o_j on the grid of
                        up(F W_j)[p + o_j]

so the 128 -> 9 x 128 matrix product runs on level k's own grid (4^k fewer
positions), and only a nine-tap bilinear sampling remains on the P2 grid.
This script measures that decomposition written with TensorFlow ops (row
resize, shifted sums over the row taps, column resize, shifted sums over the
column taps) against the direct form, per level, at the P2 grid of an
800x1333 image padded to 896x1408 (224 x 352 cells, 128 channels, float32,
batch 1, random weights), and the largest difference between the two. It
sizes a future kernel for the sampling step (docs/benchmarks.md); the model
computes the fuse directly. Times are medians of --repeats calls after a
warm-up call.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
import tensorflow as tf  # noqa: E402

HEIGHT, WIDTH, CHANNELS = 224, 352, 128


def _median_ms(fn, arg, repeats):
  fn(arg).numpy()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(arg).numpy()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def _shift(t, offset, axis):
  """out[..., i, ...] = t[..., i + offset, ...] along axis, 0 past the ends."""
  if offset == 0:
    return t
  size = t.shape[axis]
  kept = tf.gather(t, tf.range(max(0, offset), size + min(0, offset)),
                   axis=axis)
  paddings = [[0, 0]] * len(t.shape)
  paddings[axis] = [max(0, -offset), max(0, offset)]
  return tf.pad(kept, paddings)


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

  def decomposed(features, scale):
    _, h, w, c = features.shape
    # F W_j for the nine taps j = (dy, dx), on level k's grid.
    g = tf.einsum("nhwi,yxio->nhwyxo", features, kernel)
    rows = tf.image.resize(tf.reshape(g, [1, h, w, 9 * c]),
                           [h * scale, w])[:, :HEIGHT]
    rows = tf.reshape(rows, [1, HEIGHT, w, 3, 3 * c])
    rows = sum(_shift(rows[:, :, :, dy], dy - 1, 1) for dy in range(3))
    cols = tf.image.resize(rows, [HEIGHT, w * scale])[:, :, :WIDTH]
    cols = tf.reshape(cols, [1, HEIGHT, WIDTH, 3, c])
    out = sum(_shift(cols[:, :, :, dx], dx - 1, 2) for dx in range(3))
    return tf.nn.relu(out + conv_p2m + bias)

  print(f"# bipyramid fuse, P2 grid [1,{HEIGHT},{WIDTH},{CHANNELS}] float32, "
        f"median of {args.repeats}")
  print(f"# conv3x3(P2m), shared by every level in the decomposition: "
        f"{_median_ms(conv_p2m_fn, p2m, args.repeats):.1f} ms")
  print()
  print("| level k | scale | direct ms | decomposed ms (pure TF) | "
        "direct / decomposed | max abs difference | max abs value |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for k in range(1, 6):
    scale = 2**k
    features = tf.constant(rng.normal(0, 1, (1, -(-HEIGHT // scale),
                                             -(-WIDTH // scale), CHANNELS)),
                           tf.float32)
    direct_fn = tf.function(lambda f, s=scale: direct(f, s))
    decomposed_fn = tf.function(lambda f, s=scale: decomposed(f, s))
    want, got = direct_fn(features).numpy(), decomposed_fn(features).numpy()
    t_direct = _median_ms(direct_fn, features, args.repeats)
    t_decomposed = _median_ms(decomposed_fn, features, args.repeats)
    print(f"| {k} | {scale} | {t_direct:.1f} | {t_decomposed:.1f} | "
          f"{t_direct / t_decomposed:.2f}x | {np.abs(want - got).max():.1e} | "
          f"{np.abs(want).max():.1f} |", flush=True)


if __name__ == "__main__":
  main()
