"""Checks the up_align2nat CUDA kernels without TensorFlow.

Builds custom_ops/cuda_test/up_standalone.cu (the kernels plus an extern "C"
shim) with nvcc into --build_dir, drives it with ctypes on CuPy device
memory, and compares every launcher with the numpy float64 reference
(tests/reference.py), integer and fractional lam (1.5, 5/3, 1.25), bilinear
and nearest:

* dense and gathered forward against reference.up_align2nat (every output
  element poisoned with NaN before the launch, so each must be written);
* dense and gathered backward against J^T dy, J built from the reference on
  basis vectors (gathered rows duplicated, one invalid row ignored), and the
  adjoint identity <fwd(x) - fwd(0), dy> == <x, bwd(dy)> on larger cases;
* the dense backward run twice is bit-equal (no atomics).

Exits non-zero on any mismatch. Usage:
  python custom_ops/cuda_test/run_up_align2nat_kernels.py [--build_dir /tmp]
"""

import argparse
import ctypes
import fractions
import importlib.util
import os
import sys

import numpy as np

try:
  import cupy as cp
except ImportError:  # pragma: no cover - the GPU machine has CuPy.
  cp = None

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHIM = os.path.join(HERE, "up_standalone.cu")
LIB_NAME = "libup_align2nat_standalone.so"
TOL = {np.float64: 1e-10, np.float32: 1e-5}
# (S, lam, interpolation, pad, (H, W)): Jacobian-checked (small) cases.
SMALL_CASES = [
    (2, 1.5, "bilinear", -6.0, (3, 4)), (4, 1.5, "nearest", 0.5, (3, 3)),
    (3, 5 / 3, "bilinear", 0.0, (4, 2)), (4, 1.25, "bilinear", -6.0, (2, 3)),
    (3, 2, "bilinear", 0.5, (3, 3)), (2, 3, "nearest", -6.0, (2, 4)),
    (3, 1, "bilinear", -6.0, (4, 3))]
# Larger cases: the forward against the reference, the adjoint identity.
LARGE_CASES = [
    (10, 1.5, "bilinear", -6.0, (9, 11)), (15, 1.0, "bilinear", 0.0, (7, 6)),
    (5, 3, "bilinear", -6.0, (8, 8)), (5, 3, "nearest", 0.5, (6, 9)),
    (8, 1.25, "bilinear", 0.5, (5, 7)), (6, 5 / 3, "nearest", -6.0, (7, 5))]
BATCH = 2


def _load_by_path(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


reference = _load_by_path("up_reference",
                          os.path.join(ROOT, "tests", "reference.py"))


def build(build_dir):
  """Compiles the shim for the current device (run_cuda_kernels.build)."""
  return _load_by_path("run_cuda_kernels", os.path.join(
      HERE, "run_cuda_kernels.py")).build(build_dir, SHIM, LIB_NAME)


class Kernels:
  """ctypes bindings; arrays are CuPy arrays, sizes from the shapes."""

  def __init__(self, lib_path):
    lib = ctypes.CDLL(lib_path)
    i64, i32, vp = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    geom = [i64, i64, i64, i32, i32, i32, i32]
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
      signatures = {"forward": geom + [real, vp, vp, vp],
                    "backward": geom + [vp, vp, vp],
                    "gather_forward": geom + [real, vp, vp, i64, vp, vp],
                    "gather_backward": geom + [vp, vp, i64, vp, vp]}
      for name, argtypes in signatures.items():
        function = getattr(lib, f"up_{name}_{suffix}")
        function.argtypes = argtypes
        function.restype = ctypes.c_int
    lib.up_error_string.argtypes = [ctypes.c_int]
    lib.up_error_string.restype = ctypes.c_char_p
    self.lib = lib

  def call(self, name, dtype, x_shape, s, lam, interpolation, *args):
    suffix = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[
        np.dtype(dtype)]
    fraction = fractions.Fraction(lam).limit_denominator(1 << 16)
    status = getattr(self.lib, f"up_{name}_{suffix}")(
        *x_shape[:3], s, fraction.numerator, fraction.denominator,
        int(interpolation == "nearest"), *args,
        cp.cuda.get_current_stream().ptr)
    if status != 0:
      raise RuntimeError(f"{name}: {self.lib.up_error_string(status).decode()}")


def poisoned(shape, dtype):
  return cp.full(shape, np.nan, dtype)


def run_forward(kernels, x, s, lam, interpolation, pad, indices=None):
  t = round(lam * s)
  d_x = cp.asarray(x)
  if indices is None:
    y = poisoned(x.shape[:3] + (t * t,), x.dtype)
    kernels.call("forward", x.dtype, x.shape, s, lam, interpolation,
                 x.dtype.type(pad), d_x.data.ptr, y.data.ptr)
  else:
    d_i = cp.asarray(indices)
    y = poisoned((len(indices), t, t), x.dtype)
    kernels.call("gather_forward", x.dtype, x.shape, s, lam, interpolation,
                 x.dtype.type(pad), d_x.data.ptr, d_i.data.ptr, len(indices),
                 y.data.ptr)
  return cp.asnumpy(y)


def run_backward(kernels, dy, x_shape, s, lam, interpolation, indices=None):
  d_dy = cp.asarray(dy)
  dx = poisoned(x_shape, dy.dtype)
  if indices is None:
    kernels.call("backward", dy.dtype, x_shape, s, lam, interpolation,
                 d_dy.data.ptr, dx.data.ptr)
  else:
    d_i = cp.asarray(indices)
    kernels.call("gather_backward", dy.dtype, x_shape, s, lam, interpolation,
                 d_dy.data.ptr, d_i.data.ptr, len(indices), dx.data.ptr)
  return cp.asnumpy(dx)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--build_dir", default="/tmp/up_align2nat_cuda")
  parser.add_argument("--skip_timing", action="store_true",
                      help="accepted as the other runners accept it; this "
                      "runner checks and does not time")
  args = parser.parse_args()
  if cp is None:
    print("CuPy is not installed: this runner needs a GPU machine with CuPy")
    return 2
  kernels = Kernels(build(args.build_dir))
  failures = []

  def check(ok, message):
    if not ok:
      failures.append(message)
      print("FAIL", message, flush=True)

  rng = np.random.RandomState(0)
  for s, lam, interpolation, pad, (h, w) in SMALL_CASES + LARGE_CASES:
    name = f"S={s} lam={lam:.4g} {interpolation} pad={pad} {h}x{w}"
    x64 = rng.uniform(-3, 3, (BATCH, h, w, s * s))
    want = reference.up_align2nat(x64, lam, interpolation, pad)
    t = round(lam * s)
    indices = np.stack([rng.randint(0, BATCH, 6), rng.randint(0, h, 6),
                        rng.randint(0, w, 6)], 1).astype(np.int32)
    indices = np.concatenate([indices, indices[:2],
                              [[BATCH, 0, 0]]]).astype(np.int32)  # dup, bad
    valid = indices[:, 0] < BATCH
    for dtype in (np.float64, np.float32):
      x = x64.astype(dtype)
      y = run_forward(kernels, x, s, lam, interpolation, pad)
      check(np.all(np.isfinite(y)) and np.abs(y - want).max() <= TOL[dtype],
            f"{name} {dtype.__name__} forward: max error "
            f"{np.nanmax(np.abs(y - want)):.3g}")
      g = run_forward(kernels, x, s, lam, interpolation, pad, indices)
      picked = want[indices[valid, 0], indices[valid, 1],
                    indices[valid, 2]].reshape(-1, t, t)
      check(np.all(np.isfinite(g)) and
            np.abs(g[valid] - picked).max() <= TOL[dtype] and
            np.all(g[~valid] == dtype(pad)),
            f"{name} {dtype.__name__} gathered forward")
      dy = rng.uniform(-1, 1, want.shape).astype(dtype)
      dx = run_backward(kernels, dy, x.shape, s, lam, interpolation)
      again = run_backward(kernels, dy, x.shape, s, lam, interpolation)
      check(np.array_equal(dx, again), f"{name} {dtype.__name__} backward "
            "not bit-reproducible")
      shift = reference.up_align2nat(np.zeros_like(x64), lam, interpolation,
                                     pad)
      lhs = np.sum((want - shift) * dy.astype(np.float64))
      check(abs(np.sum(x64 * dx) - lhs) <= TOL[dtype] * max(1.0, abs(lhs)) *
            100, f"{name} {dtype.__name__} adjoint identity")
      dyg = rng.uniform(-1, 1, (len(indices), t, t)).astype(dtype)
      dxg = run_backward(kernels, dyg, x.shape, s, lam, interpolation,
                         indices)
      if (s, lam, interpolation, pad, (h, w)) in SMALL_CASES:
        shape = (BATCH, h, w, s * s)
        dense_j = reference.jacobian(
            lambda v: reference.up_align2nat(v, lam, interpolation, pad),
            shape)
        check(np.abs(dx.ravel() - dense_j.T @ dy.astype(np.float64).ravel()
                     ).max() <= TOL[dtype],
              f"{name} {dtype.__name__} backward vs J^T dy")
        rows = dense_j.reshape(BATCH, h, w, t * t, -1)[
            indices[valid, 0], indices[valid, 1], indices[valid, 2]]
        want_g = rows.reshape(-1, rows.shape[-1]).T @ dyg[valid].astype(
            np.float64).ravel()
        check(np.abs(dxg.ravel() - want_g).max() <= TOL[dtype] * 10,
              f"{name} {dtype.__name__} gathered backward vs J^T dy")
  cp.cuda.Device().synchronize()
  if failures:
    print(f"\n{len(failures)} FAILURES")
    return 1
  print(f"\nall {len(SMALL_CASES) + len(LARGE_CASES)} cases passed "
        f"(float64 to {TOL[np.float64]}, float32 to {TOL[np.float32]})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
