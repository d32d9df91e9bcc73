"""Benchmark of swap_align2nat: custom op vs pure TF (eager, XLA) vs copy floor.

    .venv/bin/python scripts/bench_ops.py [--lams 1,2,4,8,16,32] [--repeats 5]

TensorMask's real sizes: S = 15 on the P2 grid of an 800x1344 image
(H, W = 200, 336), batch 1, float32; dense swap_align2nat forward and
backward for each lam, and the gathered op at K = 100 and 1000 windows.
Every time is the median of --repeats calls after a warm-up call, all in
this one process with TensorFlow's default thread pools.

The copy floor is the time to move the same bytes (the op's input read plus
its output written) with a plain memory copy of that much traffic, split
over as many threads as TensorFlow's intra-op pool, measured in the same
run: no kernel that reads its input and writes its output can beat it.
"""

import argparse
import concurrent.futures
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
import tensorflow as tf  # noqa: E402

from tensormask_tf import ops  # noqa: E402
from tensormask_tf.ops import custom_op_library  # noqa: E402

HEIGHT, WIDTH, WINDOW = 200, 336, 15


def median_time(fn, repeats: int) -> float:
  """Median wall time of fn() in seconds, after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


class CopyFloor:
  """Times a multi-threaded memory copy moving a given number of bytes."""

  def __init__(self, threads: int):
    self._pool = concurrent.futures.ThreadPoolExecutor(threads)
    self._threads = threads

  def seconds(self, traffic_bytes: int, repeats: int) -> float:
    # A copy of n bytes reads n and writes n: traffic/2 bytes each way.
    n = max(1, traffic_bytes // 2 // 4)
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    chunks = np.array_split(np.arange(n), self._threads)
    bounds = [(c[0], c[-1] + 1) for c in chunks if len(c)]

    def copy():
      list(self._pool.map(
          lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), bounds))

    return median_time(copy, repeats)


def dense_row(lam, x, dy, repeats, floor):
  library = custom_op_library.load()
  x_shape = tf.shape(x, out_type=tf.int64)
  custom_fwd = tf.function(lambda x: library.swap_align2_nat(x, lam=lam))
  custom_bwd = tf.function(
      lambda dy: library.swap_align2_nat_grad(dy, x_shape, lam=lam))

  def tf_fwd(x):
    return ops.swap_align2nat(x, lam, backend="tf")

  def tf_bwd(x, dy):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = tf_fwd(x)
    return tape.gradient(y, x, output_gradients=dy)

  xla_fwd = tf.function(tf_fwd, jit_compile=True)
  xla_bwd = tf.function(tf_bwd, jit_compile=True)
  graph_bwd = tf.function(tf_bwd)
  traffic = (x.shape.num_elements() + dy.shape.num_elements()) * 4
  times = {
      "fwd": {
          "custom": median_time(lambda: custom_fwd(x), repeats),
          "tf_eager": median_time(lambda: tf_fwd(x), repeats),
          "tf_xla": median_time(lambda: xla_fwd(x), repeats),
      },
      "bwd": {
          "custom": median_time(lambda: custom_bwd(dy), repeats),
          # Eager gradients re-run the forward; the graph version prunes it.
          "tf_eager": median_time(lambda: graph_bwd(x, dy), repeats),
          "tf_xla": median_time(lambda: xla_bwd(x, dy), repeats),
      },
  }
  floor_s = floor.seconds(traffic, repeats)
  return times, floor_s, traffic


def gather_row(lam, x, k, repeats, floor):
  library = custom_op_library.load()
  rng = np.random.RandomState(lam * 1000 + k)
  out_h, out_w = -(-HEIGHT // lam), -(-WIDTH // lam)
  indices = tf.constant(np.stack(
      [np.zeros(k, np.int64), rng.randint(0, out_h, k),
       rng.randint(0, out_w, k)], axis=1), tf.int32)
  t = lam * WINDOW
  dy = tf.random.normal([k, t, t])
  x_shape = tf.shape(x, out_type=tf.int64)

  custom_fwd = tf.function(
      lambda x: library.swap_align2_nat_gather(x, indices, lam=lam))
  @tf.function
  def custom_fwd_bwd(x, dy):
    # The gradient after the forward, as in training (where dy comes from
    # y) and as the pure-TF rows run; two independent ops would run at once
    # and share the two cores, and that time depends on the scheduler.
    y = library.swap_align2_nat_gather(x, indices, lam=lam)
    with tf.control_dependencies([y]):
      dx = library.swap_align2_nat_gather_grad(dy, indices, x_shape, lam=lam)
    return y, dx

  def tf_fwd(x):
    return ops.swap_align2nat_gather(x, indices, lam, backend="tf")

  def tf_fwd_bwd(x, dy):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = tf_fwd(x)
    return y, tape.gradient(y, x, output_gradients=dy)

  xla_fwd = tf.function(tf_fwd, jit_compile=True)
  xla_fwd_bwd = tf.function(tf_fwd_bwd, jit_compile=True)
  out_bytes = k * t * t * 4
  times = {
      "fwd": {
          "custom": median_time(lambda: custom_fwd(x), repeats),
          "tf_eager": median_time(lambda: tf_fwd(x), repeats),
          "tf_xla": median_time(lambda: xla_fwd(x), repeats),
      },
      "fwd+bwd": {
          "custom": median_time(lambda: custom_fwd_bwd(x, dy), repeats),
          "tf_eager": median_time(lambda: tf_fwd_bwd(x, dy), repeats),
          "tf_xla": median_time(lambda: xla_fwd_bwd(x, dy), repeats),
      },
  }
  # Forward: reads about as many input values as it writes; backward also
  # writes all of dx (zeros where no window reads).
  floors = {"fwd": floor.seconds(2 * out_bytes, repeats),
            "fwd+bwd": floor.seconds(
                2 * out_bytes + out_bytes + x.shape.num_elements() * 4,
                repeats)}
  return times, floors


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lams", default="1,2,4,8,16,32")
  parser.add_argument("--gather_k", default="100,1000")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--ops", default="dense,gather",
                      help="comma-separated subset of dense,gather")
  parser.add_argument(
      "--max_gather_outputs", type=float, default=25e6,
      help="skip gather rows whose output K*(lam*S)^2 exceeds this many "
           "elements (pure TF needs several times that in intermediates)")
  args = parser.parse_args()
  lams = [int(v) for v in args.lams.split(",")]
  ks = [int(v) for v in args.gather_k.split(",")]
  ops = set(args.ops.split(","))
  if not ops <= {"dense", "gather"}:
    parser.error(f"--ops must be a subset of dense,gather, got {args.ops!r}")

  threads = tf.config.threading.get_intra_op_parallelism_threads() or (
      os.cpu_count() or 1)
  floor = CopyFloor(threads)
  custom_op_library.load()  # Fail now, loudly, if the library is missing.
  x = tf.random.normal([1, HEIGHT, WIDTH, WINDOW * WINDOW])
  print(f"# swap_align2nat, S={WINDOW}, x=[1,{HEIGHT},{WIDTH},{WINDOW**2}] "
        f"float32, {threads} threads, median of {args.repeats}")
  print()
  print("| op | lam | pass | custom ms | TF eager ms | TF XLA ms | "
        "eager/custom | XLA/custom | copy floor ms | custom/floor |")
  print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")

  def emit(name, lam, stage, t, floor_s):
    c, e, xla = t["custom"], t["tf_eager"], t["tf_xla"]
    print(f"| {name} | {lam} | {stage} | {c * 1e3:.2f} | {e * 1e3:.1f} | "
          f"{xla * 1e3:.1f} | {e / c:.1f}x | {xla / c:.1f}x | "
          f"{floor_s * 1e3:.2f} | {c / floor_s:.2f}x |", flush=True)

  for lam in lams if "dense" in ops else []:
    out_h, out_w, t = -(-HEIGHT // lam), -(-WIDTH // lam), lam * WINDOW
    dy = tf.random.normal([1, out_h, out_w, t * t])
    times, floor_s, _ = dense_row(lam, x, dy, args.repeats, floor)
    for stage in ("fwd", "bwd"):
      emit("dense", lam, stage, times[stage], floor_s)
  for k in ks if "gather" in ops else []:
    for lam in lams:
      if k * (lam * WINDOW)**2 > args.max_gather_outputs:
        print(f"| gather K={k} | {lam} | skipped: output of "
              f"{k * (lam * WINDOW)**2 / 1e6:.0f}M elements > "
              f"--max_gather_outputs | | | | | | | |", flush=True)
        continue
      times, floors = gather_row(lam, x, k, args.repeats, floor)
      for stage in ("fwd", "fwd+bwd"):
        emit(f"gather K={k}", lam, stage, times[stage], floors[stage])


if __name__ == "__main__":
  main()
