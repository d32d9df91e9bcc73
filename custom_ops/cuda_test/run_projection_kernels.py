"""Checks and times the project_swap_align2nat_gather CUDA kernels.

No TensorFlow: builds custom_ops/cuda_test/standalone.cu (as
run_cuda_kernels.py does), drives it with ctypes on CuPy device memory, and
compares with numpy float64 references built independently of the kernels:

* forward: tests/reference.py's swap_align2nat of the numpy projection
  f @ w^T + bias, rows picked at the indices (pad for invalid rows);
* gradients: the projection's gradient dP from run_cuda_kernels.adjoint (the
  reference's taps scattered with np.bincount, itself checked against J^T
  there), then df = dP w, dw = dP^T f, dbias = sum dP;
* every output poisoned with NaN before each launch; backward run twice must
  be bit-equal (with duplicate and invalid index rows).

Then times, per (level, window size) of the bipyramid at the task's mask
caps on the P2 grid of an 896x1408 input (224x352, C = 128), the fused
kernels against the dense path a GPU runs without them: the projection as a
cuBLAS matrix product (CuPy) plus swap_align2nat_gather's CUDA kernels,
forward and backward, with the bytes each holds. Exits non-zero on any
mismatch.

Usage: python custom_ops/cuda_test/run_projection_kernels.py
       [--build_dir /tmp] [--skip_timing] [--repeats 20]
"""

import ctypes
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_cuda_kernels as harness  # noqa: E402  (the shared build and checks)

cp = harness.cp
reference = harness.reference

# (S, lam, H, W, C): tests/test_mask_projection.py's cases plus TensorMask's
# window sizes at several lam on grids larger than a window.
CASES = [(1, 1, 3, 4, 2), (3, 1, 5, 6, 8), (3, 2, 7, 6, 5), (2, 2, 5, 5, 17),
         (5, 3, 9, 8, 3), (4, 3, 7, 7, 9), (3, 4, 9, 10, 16), (5, 1, 2, 3, 4),
         (11, 1, 20, 24, 64), (15, 2, 24, 36, 128), (11, 4, 30, 28, 40),
         (15, 8, 40, 33, 128), (3, 200, 5, 7, 33)]
BATCH = 2
TOL = {np.float64: 1e-10, np.float32: 1e-5}
# The task's mask caps (tensormask_config.Parser.mask_caps) at P2..P7.
CAPS = {2: 128, 3: 64, 4: 32, 5: 16, 6: 16, 7: 16}
WINDOW_SIZES = (11, 15)  # S of the two windows of every level
# ProjectForwardPath: chosen by cost, direct, through the projection.
AUTO, DIRECT, PROJECTION = 0, 1, 2


class ProjectionKernels:
  """ctypes bindings of the psa2n_* entry points; arrays are CuPy arrays."""

  def __init__(self, lib_path):
    lib = ctypes.CDLL(lib_path)
    i64, i32, vp = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    geom = [i64, i64, i64, i64, i32, i32]
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
      fwd = getattr(lib, f"psa2n_forward_{suffix}")
      fwd.argtypes = geom + [real, vp, vp, vp, vp, i64, vp, vp, vp, i32]
      fwd.restype = ctypes.c_int
      fwd_size = getattr(lib, f"psa2n_forward_workspace_bytes_{suffix}")
      fwd_size.argtypes = geom + [i64, i32]
      fwd_size.restype = ctypes.c_size_t
      bwd = getattr(lib, f"psa2n_backward_{suffix}")
      bwd.argtypes = geom + [vp, vp, vp, vp, i64, vp, vp, vp, vp, vp, i32]
      bwd.restype = ctypes.c_int
      size = getattr(lib, f"psa2n_backward_workspace_bytes_{suffix}")
      size.argtypes = geom + [i64]
      size.restype = ctypes.c_size_t
    lib.sa2n_error_string.argtypes = [ctypes.c_int]
    lib.sa2n_error_string.restype = ctypes.c_char_p
    self.lib = lib

  @staticmethod
  def _suffix(dtype):
    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[
        np.dtype(dtype)]

  def _check(self, status, what):
    if status != 0:
      raise RuntimeError(
          f"{what}: {self.lib.sa2n_error_string(status).decode()}")

  @staticmethod
  def _geometry(f, w, lam):
    n, h, width, c = f.shape
    return [n, h, width, c, math.isqrt(w.shape[0]), lam]

  def forward_workspace(self, f, w, lam, k, path=AUTO):
    fn = getattr(self.lib,
                 f"psa2n_forward_workspace_bytes_{self._suffix(f.dtype)}")
    return cp.empty(max(1, fn(*self._geometry(f, w, lam), k, path)),
                    cp.uint8)

  def forward(self, f, w, bias, indices, lam, pad, out, path=AUTO,
              workspace=None):
    if workspace is None:
      workspace = self.forward_workspace(f, w, lam, indices.shape[0], path)
    fn = getattr(self.lib, f"psa2n_forward_{self._suffix(f.dtype)}")
    self._check(fn(*self._geometry(f, w, lam), pad, f.data.ptr, w.data.ptr,
                   bias.data.ptr, indices.data.ptr, indices.shape[0],
                   workspace.data.ptr, out.data.ptr,
                   cp.cuda.get_current_stream().ptr, path),
                "project forward")

  def workspace_bytes(self, f, w, lam, k):
    fn = getattr(self.lib,
                 f"psa2n_backward_workspace_bytes_{self._suffix(f.dtype)}")
    return fn(*self._geometry(f, w, lam), k)

  def backward(self, dy, f, w, indices, lam, workspace, df, dw, dbias,
               accumulate=False):
    """accumulate: df += the features' gradient (else df = it)."""
    fn = getattr(self.lib, f"psa2n_backward_{self._suffix(f.dtype)}")
    self._check(fn(*self._geometry(f, w, lam), dy.data.ptr, f.data.ptr,
                   w.data.ptr, indices.data.ptr, indices.shape[0],
                   workspace.data.ptr, df.data.ptr, dw.data.ptr,
                   dbias.data.ptr, cp.cuda.get_current_stream().ptr,
                   int(accumulate)),
                "project backward")


def reference_forward(f, w, bias, indices, lam, pad):
  """[K, T, T] float64 from the numpy projection; pad for invalid rows."""
  s = math.isqrt(w.shape[0])
  t = lam * s
  projected = np.einsum("nhwc,dc->nhwd", f, w) + bias
  dense = reference.swap_align2nat(projected, lam, pad=pad)
  out = np.full((indices.shape[0], t, t), pad, np.float64)
  valid = harness.valid_rows(indices, *dense.shape[:3])
  rows = indices[valid]
  out[valid] = dense[rows[:, 0], rows[:, 1], rows[:, 2]].reshape(-1, t, t)
  return out


def reference_backward(dy, f, w, indices, lam):
  """(df, dw, dbias) float64 through the projection's gradient dP."""
  n, h, width, c = f.shape
  s2 = w.shape[0]
  out_h, out_w = -(-h // lam), -(-width // lam)
  valid = harness.valid_rows(indices, n, out_h, out_w)
  dp = harness.adjoint((n, h, width, s2), lam, indices[valid],
                       dy[valid]).reshape(-1, s2)
  return ((dp @ w).reshape(f.shape), dp.T @ f.reshape(-1, c),
          dp.sum(axis=0))


def within(got, want, tol):
  """Max |got - want| <= tol * max(1, max |want|), all finite."""
  got = np.asarray(got, np.float64)
  scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
  return (got.shape == want.shape and bool(np.all(np.isfinite(got))) and
          (got.size == 0 or float(np.max(np.abs(got - want))) <= tol * scale))


def check_case(kernels, failures, s, lam, h, w, c):
  name = f"S{s}-lam{lam}-{h}x{w}-C{c}"
  rng = np.random.RandomState(0)
  out_h, out_w = -(-h // lam), -(-w // lam)
  f64 = rng.uniform(-1, 1, (BATCH, h, w, c))
  w64 = rng.uniform(-1, 1, (s * s, c))
  b64 = rng.uniform(-1, 1, (s * s,))
  indices = harness.gather_indices(BATCH, out_h, out_w, seed=3)
  k, t = indices.shape[0], lam * s
  dy64 = rng.uniform(-1, 1, (k, t, t))
  d_indices = cp.asarray(indices)
  for dtype in (np.float64, np.float32):
    # Tolerances as tests/test_mask_projection.py: per channel of the sums.
    tol = TOL[dtype] * max(1.0, c / 4)
    tag = f"{name}-{np.dtype(dtype).name}"
    f, wk, b, dy = (a.astype(dtype).astype(np.float64)
                    for a in (f64, w64, b64, dy64))
    d_f, d_w, d_b, d_dy = (cp.asarray(a.astype(dtype)) for a in (f, wk, b, dy))
    for pad in (-6.0, 0.0, 2.5):
      want = reference_forward(f, wk, b, indices, lam, pad)
      for path, label in ((DIRECT, "direct"), (PROJECTION, "projection")):
        out = harness.poisoned((k, t, t), dtype)
        kernels.forward(d_f, d_w, d_b, d_indices, lam, pad, out, path)
        failures.check(within(cp.asnumpy(out), want, tol),
                       f"{tag} pad {pad} forward ({label}): "
                       f"{harness.max_error(cp.asnumpy(out), want)}")
    want = reference_backward(dy, f, wk, indices, lam)
    workspace = cp.empty(max(1, kernels.workspace_bytes(d_f, d_w, lam, k)),
                         cp.uint8)
    results = []
    for _ in range(2):
      grads = [harness.poisoned(x.shape, dtype) for x in (d_f, d_w, d_b)]
      kernels.backward(d_dy, d_f, d_w, d_indices, lam, workspace, *grads)
      results.append(grads)
    for label, got, ref in zip(("df", "dw", "dbias"), results[0], want):
      failures.check(within(cp.asnumpy(got), ref, tol),
                     f"{tag} {label}: "
                     f"{harness.max_error(cp.asnumpy(got), ref)}")
    for label, first, second in zip(("df", "dw", "dbias"), *results):
      failures.check(np.array_equal(harness.bits(first), harness.bits(second)),
                     f"{tag} {label}: two backward runs differ")
    # Accumulating: df starts from given values and gets the gradient added.
    start = rng.uniform(-1, 1, f.shape).astype(dtype)
    grads = [cp.asarray(start)] + [harness.poisoned(x.shape, dtype)
                                   for x in (d_w, d_b)]
    kernels.backward(d_dy, d_f, d_w, d_indices, lam, workspace, *grads,
                     accumulate=True)
    failures.check(within(cp.asnumpy(grads[0]), start + want[0], tol),
                   f"{tag} df accumulated: "
                   f"{harness.max_error(cp.asnumpy(grads[0]), start + want[0])}")
  print(f"checked {name}", flush=True)


def check_empty(kernels, failures):
  """K = 0: nothing to write forward; zero gradients."""
  f = cp.ones((1, 4, 5, 3), cp.float32)
  w = cp.ones((9, 3), cp.float32)
  b = cp.ones((9,), cp.float32)
  indices = cp.zeros((0, 3), cp.int32)
  workspace = cp.empty(max(1, kernels.workspace_bytes(f, w, 2, 0)), cp.uint8)
  grads = [harness.poisoned(x.shape, np.float32) for x in (f, w, b)]
  for path in (AUTO, DIRECT, PROJECTION):
    kernels.forward(f, w, b, indices, 2, -6.0,
                    cp.empty((0, 6, 6), cp.float32), path)
  kernels.backward(cp.empty((0, 6, 6), cp.float32), f, w, indices, 2,
                   workspace, *grads)
  failures.check(all(float(cp.abs(g).max()) == 0.0 for g in grads),
                 "K = 0: gradients are not all zero")


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------
def run_timing(kernels, sa2n, repeats):
  height, width, c = 224, 352, 128
  rng = np.random.RandomState(0)
  f = cp.asarray(rng.uniform(-1, 1, (1, height, width, c)).astype(np.float32))
  print(f"\nfloat32, one image, P2 grid {height}x{width}, C = {c}, K = the "
        "task's mask caps; CUDA events, median of "
        f"{repeats}; dense = cuBLAS projection (CuPy matmul"
        f"{', TF32' if os.environ.get('CUPY_TF32') == '1' else ''}) + bias "
        "+ swap_align2nat_gather kernels")
  print("\n| level | S | lam | K | fused fwd (ms) | direct / via projection "
        "(ms) | dense fwd (ms) | fused bwd (ms) | dense bwd (ms) | fwd+bwd "
        "ratio dense/fused | dense holds (MB) | fused scratch fwd / bwd "
        "(MB) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  totals = np.zeros(4)
  for level, k in CAPS.items():
    lam = 2 ** (level - 2)
    out_h, out_w = -(-height // lam), -(-width // lam)
    for s in WINDOW_SIZES:
      t = lam * s
      w = cp.asarray(rng.uniform(-0.1, 0.1, (s * s, c)).astype(np.float32))
      b = cp.asarray(rng.uniform(-0.1, 0.1, (s * s,)).astype(np.float32))
      cells = np.stack([np.zeros(k, int), rng.randint(0, out_h, k),
                        rng.randint(0, out_w, k)], axis=1).astype(np.int32)
      indices = cp.asarray(cells)
      dy = cp.asarray(rng.uniform(-1, 1, (k, t, t)).astype(np.float32))
      out = cp.empty((k, t, t), cp.float32)
      df, dw, db = cp.empty_like(f), cp.empty_like(w), cp.empty_like(b)
      ws = cp.empty(max(1, kernels.workspace_bytes(f, w, lam, k)), cp.uint8)
      fwd_ws = {path: kernels.forward_workspace(f, w, lam, k, path)
                for path in (AUTO, DIRECT, PROJECTION)}
      f2 = f.reshape(-1, c)
      ones = cp.ones((1, height * width), cp.float32)
      projected = cp.empty((1, height, width, s * s), cp.float32)
      dp = cp.empty_like(projected)
      sa2n_ws = cp.empty(max(1, sa2n.workspace_bytes(projected.shape, s, lam,
                                                     k)), cp.uint8)

      def dense_forward():
        p2 = projected.reshape(-1, s * s)
        cp.matmul(f2, w.T, out=p2)
        cp.add(p2, b, out=p2)
        sa2n.gather_forward(projected, indices, s, lam, -6.0, out)

      def dense_backward():
        sa2n.gather_backward(dy, indices, projected.shape, s, lam, sa2n_ws,
                             dp)
        dp2 = dp.reshape(-1, s * s)
        cp.matmul(dp2, w, out=df.reshape(-1, c))
        cp.matmul(dp2.T, f2, out=dw)
        cp.matmul(ones, dp2, out=db.reshape(1, -1))  # a GEMV: cuBLAS too

      # The two paths agree (loose: float32 sums in different orders).
      dense_forward()
      want = cp.asnumpy(out)
      agree = True
      for path in (AUTO, DIRECT, PROJECTION):
        kernels.forward(f, w, b, indices, lam, -6.0, out, path, fwd_ws[path])
        agree &= np.allclose(cp.asnumpy(out), want, rtol=1e-3, atol=1e-3)
      dense_backward()
      want_grads = [cp.asnumpy(x) for x in (df, dw, db)]
      kernels.backward(dy, f, w, indices, lam, ws, df, dw, db)
      agree &= all(np.allclose(cp.asnumpy(x), y, rtol=1e-3,
                               atol=1e-3 * max(1.0, float(np.abs(y).max())))
                   for x, y in zip((df, dw, db), want_grads))
      def fused_forward(path):
        return lambda: kernels.forward(f, w, b, indices, lam, -6.0, out,
                                       path, fwd_ws[path])

      paths = [harness.time_ms(fused_forward(path), repeats)
               for path in (DIRECT, PROJECTION)]
      # Both backwards start with swap_align2nat_gather's backward.
      swap_backward = harness.time_ms(
          lambda: sa2n.gather_backward(dy, indices, projected.shape, s, lam,
                                       sa2n_ws, dp), repeats)
      times = [
          harness.time_ms(fused_forward(AUTO), repeats),
          harness.time_ms(dense_forward, repeats),
          harness.time_ms(lambda: kernels.backward(dy, f, w, indices, lam,
                                                   ws, df, dw, db), repeats),
          harness.time_ms(dense_backward, repeats)]
      totals += times
      held = 2 * projected.nbytes / 2**20  # the projection and its gradient
      print(f"| P{level} | {s} | {lam} | {k} | {times[0]:.3f} | "
            f"{paths[0]:.3f} / {paths[1]:.3f} | "
            f"{times[1]:.3f} | {times[2]:.3f} | {times[3]:.3f} | "
            f"{swap_backward:.3f} | "
            f"{(times[1] + times[3]) / (times[0] + times[2]):.2f}x | "
            f"{held:.1f} | {fwd_ws[AUTO].nbytes / 2**20:.1f} / "
            f"{ws.nbytes / 2**20:.1f} |"
            + ("" if agree else " PATHS DISAGREE"), flush=True)
      if not agree:
        raise SystemExit("the fused and dense paths disagree")
  print(f"| all | | | | {totals[0]:.3f} | | {totals[1]:.3f} | {totals[2]:.3f} "
        f"| {totals[3]:.3f} | | "
        f"{(totals[1] + totals[3]) / (totals[0] + totals[2]):.2f}x | | |")


def main():
  args = harness.parse_args(__doc__.split("\n")[0])
  if args is None:
    return 2
  lib = harness.build(args.build_dir)
  kernels = ProjectionKernels(lib)
  print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}",
        flush=True)
  failures = harness.Failures()
  check_empty(kernels, failures)
  for case in CASES:
    check_case(kernels, failures, *case)
  cp.cuda.Device().synchronize()
  if failures.messages:
    print(f"\n{len(failures.messages)} FAILURES")
    return 1
  print(f"\nall {len(CASES)} cases passed (float64 to {TOL[np.float64]}, "
        f"float32 to {TOL[np.float32]}, x max(1, C/4), relative to the "
        "largest reference value when above 1)")
  if not args.skip_timing:
    run_timing(kernels, harness.Kernels(lib), args.repeats)
  return 0


if __name__ == "__main__":
  sys.exit(main())
