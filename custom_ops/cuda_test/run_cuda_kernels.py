"""Checks and times the swap_align2nat CUDA kernels without TensorFlow.

Builds custom_ops/cuda_test/standalone.cu (the kernels plus an extern "C"
shim) with nvcc into --build_dir, drives it with ctypes on CuPy device memory,
and compares every launcher with the numpy float64 reference
(tests/reference.py) on the foundation test cases:

* dense and gathered forward against reference.swap_align2nat;
* dense and gathered backward against a numpy adjoint (the reference's taps
  scattered with np.bincount), itself checked against J^T built from the
  reference on basis vectors for tiny shapes, plus the adjoint identity
  <fwd(x), dy> == <x, bwd(dy)> on random x, dy;
* every output buffer is poisoned with NaN before each launch (every element
  must be written), and backward runs twice must be bit-equal (gather with
  duplicate and invalid index rows included).

Then times the kernels at TensorMask's sizes (S=15 on the P2 grid of an
800x1333 image) and prints a markdown table, with a device-to-device copy of
the same bytes and an original-style baseline (naive_baseline.cu: one
thread per output, 16 float-coordinate taps, atomicAdd gradient; checked
against the reference first) timed in the same run. Exits non-zero on any
mismatch.

Usage: python custom_ops/cuda_test/run_cuda_kernels.py [--build_dir /tmp]
       [--skip_timing] [--repeats 20]
"""

import argparse
import ctypes
import importlib.util
import math
import os
import subprocess
import sys

import numpy as np

try:
  import cupy as cp
except ImportError:  # pragma: no cover - the GPU machine has CuPy.
  cp = None

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHIM = os.path.join(HERE, "standalone.cu")
LIB_NAME = "libswap_align2nat_standalone.so"
BASELINE = os.path.join(HERE, "naive_baseline.cu")
BASELINE_LIB_NAME = "libnaive_baseline.so"



def _load_by_path(name, path):
  """Imports tests/<file>.py by path: tests/ is not a package here."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# The foundation test cases, shared with tests/test_align2nat.py.
CASES = _load_by_path("cases", os.path.join(ROOT, "tests", "cases.py")).CASES
# Beyond the foundation cases: S=1, and T > 512 (the forward tiles columns).
EXTRA_CASES = [(1, 3, -6.0, (4, 7)), (2, 300, 0.5, (5, 4)),
               (3, 200, -6.0, (3, 401))]
BATCH = 2
TOL = {np.float64: 1e-10, np.float32: 1e-5}


reference = _load_by_path("swap_reference",
                          os.path.join(ROOT, "tests", "reference.py"))


# ---------------------------------------------------------------------------
# Building and binding the shim.
# ---------------------------------------------------------------------------
def build(build_dir, source=SHIM, name=LIB_NAME):
  """Compiles a source for the current device; returns the .so path."""
  os.makedirs(build_dir, exist_ok=True)
  arch = cp.cuda.Device().compute_capability  # e.g. "90"
  lib = os.path.join(build_dir, name)
  cmd = ["nvcc", "-std=c++17", "-O3", "-Xcompiler", "-fPIC",
         "--expt-relaxed-constexpr", "-shared",
         f"-gencode=arch=compute_{arch},code=sm_{arch}", source, "-o", lib]
  print("$", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)
  return lib


class Kernels:
  """ctypes bindings; arrays are CuPy arrays, sizes from the shapes."""

  def __init__(self, lib_path):
    lib = ctypes.CDLL(lib_path)
    i64, i32, vp = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    geom = [i64, i64, i64, i32, i32]
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
      getattr(lib, f"sa2n_forward_{suffix}").argtypes = geom + [real, vp, vp,
                                                                 vp]
      getattr(lib, f"sa2n_backward_{suffix}").argtypes = geom + [vp, vp, vp]
      getattr(lib, f"sa2n_gather_forward_{suffix}").argtypes = (
          geom + [real, vp, vp, i64, vp, vp])
      getattr(lib, f"sa2n_gather_backward_{suffix}").argtypes = (
          geom + [vp, vp, i64, vp, vp, vp])
      for name in ("forward", "backward", "gather_forward",
                   "gather_backward"):
        getattr(lib, f"sa2n_{name}_{suffix}").restype = ctypes.c_int
    lib.sa2n_gather_backward_workspace_bytes.argtypes = geom + [i64]
    lib.sa2n_gather_backward_workspace_bytes.restype = ctypes.c_size_t
    lib.sa2n_error_string.argtypes = [ctypes.c_int]
    lib.sa2n_error_string.restype = ctypes.c_char_p
    self.lib = lib

  def _check(self, status, what):
    if status != 0:
      raise RuntimeError(
          f"{what}: {self.lib.sa2n_error_string(status).decode()}")

  @staticmethod
  def _suffix(dtype):
    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[
        np.dtype(dtype)]

  @staticmethod
  def _stream():
    return cp.cuda.get_current_stream().ptr

  @staticmethod
  def geometry(x_shape, s, lam):
    n, h, w = x_shape[:3]
    return [n, h, w, s, lam]

  def forward(self, x, s, lam, pad, y):
    f = getattr(self.lib, f"sa2n_forward_{self._suffix(x.dtype)}")
    self._check(f(*self.geometry(x.shape, s, lam), pad, x.data.ptr,
                  y.data.ptr, self._stream()), "forward")

  def backward(self, dy, x_shape, s, lam, dx):
    f = getattr(self.lib, f"sa2n_backward_{self._suffix(dy.dtype)}")
    self._check(f(*self.geometry(x_shape, s, lam), dy.data.ptr, dx.data.ptr,
                  self._stream()), "backward")

  def gather_forward(self, x, indices, s, lam, pad, y):
    f = getattr(self.lib, f"sa2n_gather_forward_{self._suffix(x.dtype)}")
    self._check(f(*self.geometry(x.shape, s, lam), pad, x.data.ptr,
                  indices.data.ptr, indices.shape[0], y.data.ptr,
                  self._stream()), "gather_forward")

  def workspace_bytes(self, x_shape, s, lam, k):
    return self.lib.sa2n_gather_backward_workspace_bytes(
        *self.geometry(x_shape, s, lam), k)

  def gather_backward(self, dy, indices, x_shape, s, lam, workspace, dx):
    f = getattr(self.lib, f"sa2n_gather_backward_{self._suffix(dy.dtype)}")
    self._check(f(*self.geometry(x_shape, s, lam), dy.data.ptr,
                  indices.data.ptr, indices.shape[0], workspace.data.ptr,
                  dx.data.ptr, self._stream()), "gather_backward")


class Baseline:
  """The original-style kernels (float32, dense only)."""

  def __init__(self, lib_path):
    lib = ctypes.CDLL(lib_path)
    i32, vp = ctypes.c_int, ctypes.c_void_p
    lib.naive_forward_f32.argtypes = [i32] * 5 + [ctypes.c_float, vp, vp, vp]
    lib.naive_backward_f32.argtypes = [i32] * 5 + [vp, vp, vp]
    lib.naive_forward_f32.restype = ctypes.c_int
    lib.naive_backward_f32.restype = ctypes.c_int
    self.lib = lib

  def forward(self, x, s, lam, pad, y):
    n, h, w = x.shape[:3]
    status = self.lib.naive_forward_f32(n, h, w, s, lam, pad, x.data.ptr,
                                        y.data.ptr,
                                        cp.cuda.get_current_stream().ptr)
    if status:
      raise RuntimeError(f"naive forward: CUDA error {status}")

  def backward(self, dy, x_shape, s, lam, dx):
    n, h, w = x_shape[:3]
    status = self.lib.naive_backward_f32(n, h, w, s, lam, dy.data.ptr,
                                         dx.data.ptr,
                                         cp.cuda.get_current_stream().ptr)
    if status:
      raise RuntimeError(f"naive backward: CUDA error {status}")


# ---------------------------------------------------------------------------
# numpy references of the gradients.
# ---------------------------------------------------------------------------
def adjoint(x_shape, lam, cells, dy):
  """dx = sum over windows k of J_k^T dy[k], float64.

  x_shape: (N, H, W, S*S); cells: [K, 3] valid (n, y, x) output cells;
  dy: [K, T, T]. Scatters the reference's taps (reference._taps) with
  np.bincount, dropping the taps outside the input.
  """
  batch, height, width, channels = x_shape
  s = math.isqrt(channels)
  t = lam * s
  dx = np.zeros(batch * height * width * channels)
  if len(cells) == 0:
    return dx.reshape(x_shape)
  n = cells[:, 0].reshape(-1, 1, 1).astype(np.int64)
  y = cells[:, 1].reshape(-1, 1, 1).astype(np.float64)
  xx = cells[:, 2].reshape(-1, 1, 1).astype(np.float64)
  v = np.arange(t, dtype=np.float64).reshape(1, -1, 1)
  u = np.arange(t, dtype=np.float64).reshape(1, 1, -1)
  oy = lam * y + v - t / 2 + 0.5
  ox = lam * xx + u - t / 2 + 0.5
  ov = (v + 0.5) / lam - 0.5
  ou = (u + 0.5) / lam - 0.5
  dy = np.asarray(dy, np.float64)
  for a, wa in reference._taps(oy):  # pylint: disable=protected-access
    for b, wb in reference._taps(ox):  # pylint: disable=protected-access
      for c, wc in reference._taps(ov):  # pylint: disable=protected-access
        for d, wd in reference._taps(ou):  # pylint: disable=protected-access
          aa, bb, cc, dd, nn = np.broadcast_arrays(a, b, c, d, n)
          weight = wa * wb * wc * wd * dy
          inside = ((aa >= 0) & (aa < height) & (bb >= 0) & (bb < width) &
                    (cc >= 0) & (cc < s) & (dd >= 0) & (dd < s))
          index = ((nn * height + aa) * width + bb) * channels + cc * s + dd
          dx += np.bincount(index[inside], weights=weight[inside],
                            minlength=dx.size)
  return dx.reshape(x_shape)


def dense_cells(batch, out_h, out_w):
  n, y, x = np.meshgrid(np.arange(batch), np.arange(out_h), np.arange(out_w),
                        indexing="ij")
  return np.stack([n.ravel(), y.ravel(), x.ravel()], axis=1)


def valid_rows(indices, batch, out_h, out_w):
  return ((indices[:, 0] >= 0) & (indices[:, 0] < batch) &
          (indices[:, 1] >= 0) & (indices[:, 1] < out_h) &
          (indices[:, 2] >= 0) & (indices[:, 2] < out_w))


def jacobian_transpose(height, width, s, lam):
  """J^T of one image, [H*W*S*S, Ho*Wo*T*T], from the reference (pad 0)."""
  size = height * width * s * s
  basis = np.eye(size).reshape(size, height, width, s * s)
  return reference.swap_align2nat(basis, lam, pad=0.0).reshape(size, -1)


# ---------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------
class Failures:

  def __init__(self):
    self.messages = []

  def check(self, ok, message):
    if not ok:
      self.messages.append(message)
      print("FAIL:", message, flush=True)


def poisoned(shape, dtype):
  return cp.full(shape, np.nan, dtype=dtype)


def bits(array):
  a = cp.asnumpy(array)
  return a.view(np.uint64 if a.dtype == np.float64 else np.uint32)


def close(got, want, tol):
  got = np.asarray(got, np.float64)
  return (got.shape == want.shape and bool(np.all(np.isfinite(got))) and
          bool(np.allclose(got, want, rtol=tol, atol=tol)))


def max_error(got, want):
  got = np.asarray(got, np.float64)
  if got.shape != want.shape:
    return f"shape {got.shape} != {want.shape}"
  return f"max |err| {np.nanmax(np.abs(got - want)):.3g}, NaNs " \
         f"{int(np.isnan(got).sum())}"


def gather_indices(batch, out_h, out_w, seed):
  """7 random rows (as in the foundation test), duplicates, invalid rows."""
  rng = np.random.RandomState(seed)
  rows = np.stack([rng.randint(0, batch, 7), rng.randint(0, out_h, 7),
                   rng.randint(0, out_w, 7)], axis=1)
  invalid = np.array([[-1, 0, 0], [batch, 0, 0], [0, out_h, 0],
                      [0, 0, out_w], [0, -1, 0], [0, 0, -5]])
  dups = rows[[0, 3, 0, 6]]
  return np.concatenate([rows[:4], invalid[:3], dups, rows[4:], invalid[3:],
                         rows[:1]]).astype(np.int32)


def check_case(kernels, failures, s, lam, pad, height, width):
  """All four launchers for one foundation case, float64 and float32."""
  name = f"S{s}-lam{lam}-pad{pad}-{height}x{width}"
  t = lam * s
  out_h, out_w = -(-height // lam), -(-width // lam)
  x_shape = (BATCH, height, width, s * s)
  rng = np.random.RandomState(0)
  x64 = rng.uniform(-3.0, 3.0, x_shape)
  dy_dense64 = rng.uniform(-3.0, 3.0, (BATCH, out_h, out_w, t * t))
  indices = gather_indices(BATCH, out_h, out_w, seed=3)
  k = indices.shape[0]
  dy_gather64 = rng.uniform(-3.0, 3.0, (k, t, t))
  valid = valid_rows(indices, BATCH, out_h, out_w)
  cells = dense_cells(BATCH, out_h, out_w)
  d_indices = cp.asarray(indices)
  workspace = cp.empty(max(1, kernels.workspace_bytes(x_shape, s, lam, k)),
                       dtype=cp.uint8)

  for dtype in (np.float64, np.float32):
    tol = TOL[dtype]
    tag = f"{name}-{np.dtype(dtype).name}"
    # The reference sees the inputs rounded to dtype, so only the kernels'
    # own arithmetic is measured.
    x = x64.astype(dtype).astype(np.float64)
    dy_dense = dy_dense64.astype(dtype).astype(np.float64)
    dy_gather = dy_gather64.astype(dtype).astype(np.float64)
    d_x = cp.asarray(x.astype(dtype))
    d_dy_dense = cp.asarray(dy_dense.astype(dtype))
    d_dy_gather = cp.asarray(dy_gather.astype(dtype))

    expected = reference.swap_align2nat(x, lam, pad)
    y = poisoned((BATCH, out_h, out_w, t * t), dtype)
    kernels.forward(d_x, s, lam, pad, y)
    got = cp.asnumpy(y)
    failures.check(close(got, expected, tol),
                   f"{tag} dense forward: {max_error(got, expected)}")

    want = np.full((k, t, t), pad)
    want[valid] = expected[indices[valid, 0], indices[valid, 1],
                           indices[valid, 2]].reshape(-1, t, t)
    yg = poisoned((k, t, t), dtype)
    kernels.gather_forward(d_x, d_indices, s, lam, pad, yg)
    got = cp.asnumpy(yg)
    failures.check(close(got, want, tol),
                   f"{tag} gather forward: {max_error(got, want)}")

    want = adjoint(x_shape, lam, cells, dy_dense.reshape(-1, t, t))
    runs = []
    for _ in range(2):
      dx = poisoned(x_shape, dtype)
      kernels.backward(d_dy_dense, x_shape, s, lam, dx)
      runs.append(dx)
    got = cp.asnumpy(runs[0])
    failures.check(close(got, want, tol),
                   f"{tag} dense backward: {max_error(got, want)}")
    failures.check(np.array_equal(bits(runs[0]), bits(runs[1])),
                   f"{tag} dense backward not bit-reproducible")

    want = adjoint(x_shape, lam, indices[valid], dy_gather[valid])
    runs = []
    for _ in range(2):
      dx = poisoned(x_shape, dtype)
      workspace.fill(0xAB)  # Stale scratch must not matter.
      kernels.gather_backward(d_dy_gather, d_indices, x_shape, s, lam,
                              workspace, dx)
      runs.append(dx)
    got = cp.asnumpy(runs[0])
    failures.check(close(got, want, tol),
                   f"{tag} gather backward: {max_error(got, want)}")
    failures.check(np.array_equal(bits(runs[0]), bits(runs[1])),
                   f"{tag} gather backward not bit-reproducible")

    if dtype == np.float64:
      # Adjoint identity on the GPU's own forward (pad 0: the linear part).
      y0 = poisoned((BATCH, out_h, out_w, t * t), dtype)
      kernels.forward(d_x, s, lam, 0.0, y0)
      lhs = float(cp.vdot(y0.ravel(), d_dy_dense.ravel()))
      rhs = float(cp.vdot(d_x.ravel(), runs_dense_dx(kernels, d_dy_dense,
                                                     x_shape, s, lam)))
      failures.check(abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs)),
                     f"{tag} dense adjoint identity {lhs} vs {rhs}")
      yg0 = poisoned((k, t, t), dtype)
      kernels.gather_forward(d_x, d_indices, s, lam, 0.0, yg0)
      lhs = float(cp.vdot(yg0.ravel(), d_dy_gather.ravel()))
      rhs = float(cp.vdot(d_x.ravel(), runs[0].ravel()))
      failures.check(abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs)),
                     f"{tag} gather adjoint identity {lhs} vs {rhs}")

  print(f"checked {name}", flush=True)


def runs_dense_dx(kernels, d_dy, x_shape, s, lam):
  dx = poisoned(x_shape, d_dy.dtype)
  kernels.backward(d_dy, x_shape, s, lam, dx)
  return dx.ravel()


def check_tiny_jacobians(kernels, failures):
  """The numpy adjoint and both GPU backwards against J^T on tiny shapes."""
  for s, lam, height, width in [(2, 1, 3, 2), (3, 2, 3, 4), (2, 3, 4, 3),
                                (3, 1, 4, 3), (5, 2, 3, 3), (2, 4, 5, 3)]:
    t = lam * s
    out_h, out_w = -(-height // lam), -(-width // lam)
    x_shape = (BATCH, height, width, s * s)
    jt = jacobian_transpose(height, width, s, lam)
    rng = np.random.RandomState(7)
    dy = rng.uniform(-1, 1, (BATCH, out_h, out_w, t * t))
    want = np.stack([jt @ dy[n].ravel() for n in range(BATCH)]).reshape(
        x_shape)
    numpy_adjoint = adjoint(x_shape, lam, dense_cells(BATCH, out_h, out_w),
                            dy.reshape(-1, t, t))
    name = f"tiny S{s}-lam{lam}-{height}x{width}"
    failures.check(np.allclose(numpy_adjoint, want, rtol=0, atol=1e-12),
                   f"{name}: numpy adjoint != J^T dy")
    dx = poisoned(x_shape, np.float64)
    kernels.backward(cp.asarray(dy), x_shape, s, lam, dx)
    got = cp.asnumpy(dx)
    failures.check(close(got, want, 1e-12),
                   f"{name} dense backward vs J^T: {max_error(got, want)}")

    indices = gather_indices(BATCH, out_h, out_w, seed=11)
    valid = valid_rows(indices, BATCH, out_h, out_w)
    dyg = rng.uniform(-1, 1, (indices.shape[0], t * t))
    want = np.zeros(x_shape)
    per_cell = out_h * out_w
    jt_cells = jt.reshape(jt.shape[0], per_cell, t * t)
    for row, g in zip(indices[valid], dyg[valid]):
      n, y, x = row
      want[n] += (jt_cells[:, y * out_w + x, :] @ g).reshape(x_shape[1:])
    workspace = cp.zeros(
        max(1, kernels.workspace_bytes(x_shape, s, lam, indices.shape[0])),
        dtype=cp.uint8)
    dx = poisoned(x_shape, np.float64)
    kernels.gather_backward(cp.asarray(dyg.reshape(-1, t, t)),
                            cp.asarray(indices), x_shape, s, lam, workspace,
                            dx)
    got = cp.asnumpy(dx)
    failures.check(close(got, want, 1e-12),
                   f"{name} gather backward vs J^T: {max_error(got, want)}")
  print("checked tiny Jacobians", flush=True)


def check_edge_cases(kernels, failures):
  """No index rows at all, and every row invalid."""
  s, lam, height, width = 3, 2, 5, 4
  t = lam * s
  x_shape = (1, height, width, s * s)
  for indices in (np.zeros((0, 3), np.int32),
                  np.array([[1, 0, 0], [0, 9, 0], [0, 0, -1]], np.int32)):
    k = indices.shape[0]
    d_indices = cp.asarray(indices)
    workspace = cp.zeros(max(1, kernels.workspace_bytes(x_shape, s, lam, k)),
                         dtype=cp.uint8)
    dx = poisoned(x_shape, np.float64)
    kernels.gather_backward(cp.ones((k, t, t)), d_indices, x_shape, s, lam,
                            workspace, dx)
    failures.check(bool(cp.all(dx == 0)),
                   f"gather backward with {k} invalid rows is not zero")
    if k:
      y = poisoned((k, t, t), np.float64)
      kernels.gather_forward(cp.ones(x_shape), d_indices, s, lam, -6.0, y)
      failures.check(bool(cp.all(y == -6.0)),
                     "gather forward of invalid rows is not pad")
  print("checked edge cases", flush=True)


def check_baseline(baseline, failures):
  """The baseline computes the same function (float32, 1e-4: its coordinates
  are float), so timing it against the kernels is a fair comparison."""
  for s, lam, pad, (height, width) in CASES[::4] + [(15, 32, -6.0, (9, 13))]:
    t = lam * s
    out_h, out_w = -(-height // lam), -(-width // lam)
    x_shape = (BATCH, height, width, s * s)
    rng = np.random.RandomState(5)
    x = rng.uniform(-3, 3, x_shape).astype(np.float32)
    dy = rng.uniform(-3, 3, (BATCH, out_h, out_w, t * t)).astype(np.float32)
    y = poisoned(dy.shape, np.float32)
    baseline.forward(cp.asarray(x), s, lam, pad, y)
    want = reference.swap_align2nat(x.astype(np.float64), lam, pad)
    failures.check(close(cp.asnumpy(y), want, 1e-4),
                   f"baseline S{s} lam{lam} forward: "
                   f"{max_error(cp.asnumpy(y), want)}")
    dx = poisoned(x_shape, np.float32)
    baseline.backward(cp.asarray(dy), x_shape, s, lam, dx)
    want = adjoint(x_shape, lam, dense_cells(BATCH, out_h, out_w),
                   dy.astype(np.float64).reshape(-1, t, t))
    failures.check(close(cp.asnumpy(dx), want, 1e-4),
                   f"baseline S{s} lam{lam} backward: "
                   f"{max_error(cp.asnumpy(dx), want)}")
  print("checked the original-style baseline", flush=True)


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------
def time_ms(fn, repeats, warmup=3):
  for _ in range(warmup):
    fn()
  start, end = cp.cuda.Event(), cp.cuda.Event()
  times = []
  for _ in range(repeats):
    start.record()
    fn()
    end.record()
    end.synchronize()
    times.append(cp.cuda.get_elapsed_time(start, end))
  return float(np.median(times))


def memcpy_gbps(traffic_bytes, repeats):
  """Device-to-device copy moving the same traffic (half read, half write)."""
  nbytes = max(1, traffic_bytes // 2)
  src = cp.empty(nbytes, cp.uint8)
  dst = cp.empty(nbytes, cp.uint8)
  src.fill(1)
  ms = time_ms(lambda: dst.data.copy_from_device_async(src.data, nbytes),
               repeats)
  return 2 * nbytes / ms / 1e6


def run_timing(kernels, baseline, repeats):
  height, width, s, batch = 200, 334, 15, 1
  dtype = np.float32
  esize = np.dtype(dtype).itemsize
  rng = np.random.RandomState(0)
  x_shape = (batch, height, width, s * s)
  d_x = cp.asarray(rng.uniform(-3, 3, x_shape).astype(dtype))
  dx = cp.empty(x_shape, dtype)
  x_bytes = d_x.nbytes
  rows = []
  print("\nTiming (float32, N=1, H=200, W=334, S=15; CUDA events, median of "
        f"{repeats} after warm-up). Bytes: dense = input + output; gather "
        "forward = 2 x output (one read per output); gather backward = dy + "
        "dx (dx is fully written). memcpy = D2D copy moving the same bytes. "
        "original-style: naive_baseline.cu; the original has no gathered op "
        "(it computes every window's mask, then picks), so its gather rows "
        "are its dense op.\n")
  for lam in (1, 2, 4, 8, 16, 32):
    t = lam * s
    out_h, out_w = -(-height // lam), -(-width // lam)
    y = cp.empty((batch, out_h, out_w, t * t), dtype)
    dy = cp.asarray(rng.uniform(-1, 1, y.shape).astype(dtype))
    traffic = x_bytes + y.nbytes
    naive_fwd = time_ms(lambda: baseline.forward(d_x, s, lam, -6.0, y),
                        repeats)
    naive_bwd = time_ms(lambda: baseline.backward(dy, x_shape, s, lam, dx),
                        repeats)
    ms = time_ms(lambda: kernels.forward(d_x, s, lam, -6.0, y), repeats)
    rows.append(("dense fwd", lam, t, "-", traffic, ms, naive_fwd))
    ms = time_ms(lambda: kernels.backward(dy, x_shape, s, lam, dx), repeats)
    rows.append(("dense bwd", lam, t, "-", traffic, ms, naive_bwd))
    for k in (100, 1000):
      indices = cp.asarray(np.stack(
          [np.zeros(k, np.int64), rng.randint(0, out_h, k),
           rng.randint(0, out_w, k)], axis=1).astype(np.int32))
      yg = cp.empty((k, t, t), dtype)
      dyg = cp.asarray(rng.uniform(-1, 1, yg.shape).astype(dtype))
      workspace = cp.empty(
          max(1, kernels.workspace_bytes(x_shape, s, lam, k)), cp.uint8)
      ms = time_ms(lambda: kernels.gather_forward(d_x, indices, s, lam, -6.0,
                                                  yg), repeats)
      rows.append(("gather fwd", lam, t, k, 2 * k * t * t * esize, ms,
                   naive_fwd))
      ms = time_ms(lambda: kernels.gather_backward(dyg, indices, x_shape, s,
                                                   lam, workspace, dx),
                   repeats)
      rows.append(("gather bwd", lam, t, k, dyg.nbytes + x_bytes, ms,
                   naive_bwd))
  print("| op | lam | T | K | MB moved | time (us) | GB/s | memcpy GB/s | "
        "% of memcpy | original-style (us) | speed-up |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for op, lam, t, k, traffic, ms, naive in rows:
    gbps = traffic / ms / 1e6
    ref = memcpy_gbps(traffic, repeats)
    print(f"| {op} | {lam} | {t} | {k} | {traffic / 1e6:.1f} | "
          f"{ms * 1e3:.1f} | {gbps:.0f} | {ref:.0f} | "
          f"{100 * gbps / ref:.0f}% | {naive * 1e3:.1f} | "
          f"{naive / ms:.1f}x |", flush=True)


def parse_args(description):
  """The harnesses' flags; None (after saying why) when CuPy is missing."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--build_dir", default="/tmp")
  parser.add_argument("--skip_timing", action="store_true")
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  if cp is None:
    print("CuPy is required (device memory for the kernels).")
    return None
  return args


def main():
  args = parse_args(__doc__.split("\n")[0])
  if args is None:
    return 2
  kernels = Kernels(build(args.build_dir))
  baseline = Baseline(build(args.build_dir, BASELINE, BASELINE_LIB_NAME))
  print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}",
        flush=True)
  failures = Failures()
  check_baseline(baseline, failures)
  check_tiny_jacobians(kernels, failures)
  check_edge_cases(kernels, failures)
  for s, lam, pad, (height, width) in CASES + EXTRA_CASES:
    check_case(kernels, failures, s, lam, pad, height, width)
  cp.cuda.Device().synchronize()
  if failures.messages:
    print(f"\n{len(failures.messages)} FAILURES")
    return 1
  print(f"\nall {len(CASES)} cases passed (float64 to {TOL[np.float64]}, "
        f"float32 to {TOL[np.float32]})")
  if not args.skip_timing:
    run_timing(kernels, baseline, args.repeats)
  return 0


if __name__ == "__main__":
  sys.exit(main())
