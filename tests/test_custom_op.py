"""Tests specific to the compiled custom op: every output written, determinism,
errors of the raw ops, and the loader / backend switch.

Numerical agreement with the numpy reference and the pure-TF backend, forward
and gradient, is in test_align2nat.py (every swap/gather test runs on both
backends).
"""

import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tensormask_tf import ops
from tensormask_tf.ops import backend as backend_lib
from tensormask_tf.ops import custom_op_library
from tests import reference

SHAPE_CASES = [(2, 1, 5, 8), (3, 2, 9, 6), (5, 3, 7, 7), (11, 4, 12, 11),
               (15, 8, 8, 13), (15, 1, 6, 5)]


@pytest.fixture(scope="module")
def library():
  return custom_op_library.load()


def _random(shape, seed=0):
  return np.random.RandomState(seed).uniform(-3.0, 3.0, shape)


def _indices(rng, batch, out_h, out_w, k):
  return np.stack([rng.randint(0, batch, k), rng.randint(0, out_h, k),
                   rng.randint(0, out_w, k)], axis=1).astype(np.int32)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("s,lam,h,w", SHAPE_CASES)
def test_every_output_element_is_written(library, s, lam, h, w, dtype):
  # poison_output fills the buffer with NaN first: any element the kernel
  # leaves alone stays NaN.
  x = tf.constant(_random((2, h, w, s * s)), dtype)
  y = library.swap_align2_nat(x, lam=lam, pad=-6.0, poison_output=True)
  dx = library.swap_align2_nat_grad(
      tf.ones_like(y), tf.shape(x, out_type=tf.int64), lam=lam,
      poison_output=True)
  indices = _indices(np.random.RandomState(1), 2, y.shape[1], y.shape[2], 5)
  g = library.swap_align2_nat_gather(x, indices, lam=lam, pad=0.5,
                                     poison_output=True)
  # Few windows: most of dx is read by none of them and must still be zero.
  dxg = library.swap_align2_nat_gather_grad(
      tf.ones_like(g), indices, tf.shape(x, out_type=tf.int64), lam=lam,
      poison_output=True)
  for name, value in [("forward", y), ("gradient", dx), ("gather", g),
                      ("gather gradient", dxg)]:
    assert not np.isnan(value.numpy()).any(), f"{name} left elements unwritten"
  np.testing.assert_allclose(y, reference.swap_align2nat(x.numpy(), lam),
                             rtol=0, atol=1e-5 if dtype == tf.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_large_windows_match_reference(library, dtype):
  # An output row of 10 windows of 120x120 (> 512 KB) makes the CPU forward
  # split work per window row instead of per output row; check that path.
  x = _random((1, 9, 80, 225), seed=12)
  out = library.swap_align2_nat(tf.constant(x, dtype), lam=8, pad=-6.0)
  assert out.shape == (1, 2, 10, 120 * 120)
  np.testing.assert_allclose(out, reference.swap_align2nat(x, 8), rtol=0,
                             atol=1e-4 if dtype == tf.float32 else 1e-12)


def _shifted(x, s, sign, fill):
  """out[..., v, u] = x[y + sign*(v - c), x + sign*(u - c), v, u] by slicing."""
  n, h, w = x.shape[:3]
  c = (s - 1) // 2
  x5 = x.reshape(n, h, w, s, s)
  padded = np.pad(x5, ((0, 0), (c, c), (c, c), (0, 0), (0, 0)),
                  constant_values=fill)
  out = np.empty_like(x5)
  for v in range(s):
    for u in range(s):
      dv, du = c + sign * (v - c), c + sign * (u - c)
      out[..., v, u] = padded[:, dv:dv + h, du:du + w, v, u]
  return out.reshape(x.shape)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("s,h,w", [(9, 5, 43), (11, 14, 40), (15, 18, 37),
                                   (17, 3, 33), (25, 30, 50)])
def test_lam1_shift_path_copies_inputs_exactly(library, s, h, w, dtype):
  # lam = 1, odd S: the CPU kernels copy (8 output pixels at a time where
  # S >= 8 on AVX2 machines, with border and tail pixels apart): forward and
  # gradient are exact shifts, every element written.
  x = tf.cast(_random((2, h, w, s * s), seed=s), dtype)
  dy = tf.cast(_random((2, h, w, s * s), seed=s + 1), dtype)
  y = library.swap_align2_nat(x, lam=1, pad=-6.0, poison_output=True)
  dx = library.swap_align2_nat_grad(dy, tf.shape(x, out_type=tf.int64), lam=1,
                                    poison_output=True)
  as64 = lambda t: tf.cast(t, tf.float64).numpy()
  np.testing.assert_array_equal(as64(y), _shifted(as64(x), s, 1, -6.0))
  np.testing.assert_array_equal(as64(dx), _shifted(as64(dy), s, -1, 0.0))


def test_gradients_are_deterministic(library):
  x = tf.constant(_random((2, 24, 20, 25)), tf.float32)
  dy = tf.constant(_random((2, 6, 5, 400), seed=2), tf.float32)
  shape = tf.shape(x, out_type=tf.int64)
  runs = [library.swap_align2_nat_grad(dy, shape, lam=4).numpy()
          for _ in range(3)]
  # Many duplicate windows: their sums must not depend on thread timing.
  rng = np.random.RandomState(3)
  indices = np.concatenate([_indices(rng, 2, 6, 5, 40)] * 3)
  dyg = tf.constant(_random((120, 20, 20), seed=4), tf.float32)
  gather_runs = [library.swap_align2_nat_gather_grad(
      dyg, indices, shape, lam=4).numpy() for _ in range(3)]
  for run in runs[1:]:
    np.testing.assert_array_equal(run, runs[0])
  for run in gather_runs[1:]:
    np.testing.assert_array_equal(run, gather_runs[0])


def test_gather_gradient_is_the_adjoint_of_gather_forward(library):
  # <gather(x), dy> == <x, gather_grad(dy)> in float64, for any x and dy.
  x = _random((2, 9, 10, 9), seed=5)
  rng = np.random.RandomState(6)
  indices = _indices(rng, 2, 3, 4, 17)
  dy = _random((17, 9, 9), seed=7)
  y = library.swap_align2_nat_gather(x, indices, lam=3, pad=0.0)
  dx = library.swap_align2_nat_gather_grad(
      dy, indices, np.array(x.shape, np.int64), lam=3)
  np.testing.assert_allclose(np.sum(y.numpy() * dy), np.sum(x * dx.numpy()),
                             rtol=1e-12)


@pytest.mark.parametrize("call,message", [
    (lambda lib: lib.swap_align2_nat(np.zeros((1, 4, 4, 8)), lam=2),
     "not a non-zero square|must be S\\*S"),
    (lambda lib: lib.swap_align2_nat(np.zeros((4, 4, 9)), lam=2),
     "rank 4|must be rank 4"),
    (lambda lib: lib.swap_align2_nat_gather(
        np.zeros((2, 4, 5, 9)), np.array([[2, 0, 0]], np.int32), lam=2),
     "outside the batch"),
    (lambda lib: lib.swap_align2_nat_gather(
        np.zeros((2, 4, 5, 9)), np.array([[0, 2, 0]], np.int32), lam=2),
     "row y outside"),
    (lambda lib: lib.swap_align2_nat_gather(
        np.zeros((2, 4, 5, 9)), np.array([[0, 0, 3]], np.int32), lam=2),
     "column x outside"),
    (lambda lib: lib.swap_align2_nat_gather(
        np.zeros((2, 4, 5, 9)), np.array([[0, -1, 0]], np.int32), lam=2),
     "negative index"),
    (lambda lib: lib.swap_align2_nat_grad(
        np.zeros((1, 2, 2, 9)), np.array([1, 4, 4, 9], np.int64), lam=2),
     "dy has shape"),
    (lambda lib: lib.swap_align2_nat(np.zeros((1, 4, 4, 9)), lam=0),
     "lam"),
])
def test_raw_ops_reject_bad_input(library, call, message):
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError),
                     match=message):
    call(library)


def test_public_ops_raise_the_same_errors_on_both_backends():
  for backend in ("tf", "custom"):
    with pytest.raises(ValueError, match="not a non-zero square"):
      ops.swap_align2nat(np.zeros((1, 4, 4, 8)), 2, backend=backend)
    with pytest.raises(ValueError, match="lam must be >= 1"):
      ops.swap_align2nat_gather(np.zeros((1, 4, 4, 9)), [[0, 0, 0]], 0,
                                backend=backend)


# ---------------------------------------------------------------------------
# Loader and backend switch.
# ---------------------------------------------------------------------------
@pytest.fixture
def manifest_copy(tmp_path, monkeypatch):
  """The loader judges a copy of the build record, which tests may edit.

  The library itself is never copied: loading a second file with the same
  ops would register their kernels twice for the rest of the process.
  """
  manifest = tmp_path / custom_op_library.MANIFEST_PATH.name
  shutil.copyfile(custom_op_library.MANIFEST_PATH, manifest)
  monkeypatch.setattr(custom_op_library, "MANIFEST_PATH", manifest)
  custom_op_library.load.cache_clear()
  yield manifest
  custom_op_library.load.cache_clear()


def _make_library_missing(monkeypatch, tmp_path):
  monkeypatch.setattr(custom_op_library, "LIBRARY_PATH",
                      tmp_path / "missing" / custom_op_library.LIBRARY_PATH.name)
  custom_op_library.load.cache_clear()


def _edit_manifest(manifest, **changes):
  record = json.loads(manifest.read_text())
  record.update(changes)
  manifest.write_text(json.dumps(record))


@pytest.mark.parametrize("changes,reason", [
    ({"sources": "0" * 64}, "kernel sources in custom_ops/kernels changed"),
    ({"cpu_flags": ["avx2", "no_such_isa"]}, "CPU features"),
    ({"machine": "riscv64"}, "built for a riscv64 machine"),
])
def test_stale_or_mismatched_library_is_refused(manifest_copy, changes,
                                                reason):
  _edit_manifest(manifest_copy, **changes)
  with pytest.raises(custom_op_library.CustomOpUnavailable,
                     match=f"refusing to load .*{reason}.*custom_ops/build.py"):
    custom_op_library.load()


def _site_packages():
  """The directory TensorFlow is installed in, as tf.sysconfig names it."""
  return os.path.dirname(tf.sysconfig.get_lib())


def _flags_seen_from(monkeypatch, site_packages):
  """Makes tf.sysconfig give its flags as the same environment reached
  through `site_packages` (another path to the same TensorFlow) gives them."""
  here = _site_packages()
  compile_flags = tf.sysconfig.get_compile_flags()
  link_flags = tf.sysconfig.get_link_flags()
  # The flags name directories: a test that rewrote nothing would prove nothing.
  assert any(here in f for f in compile_flags), compile_flags
  assert any(here in f for f in link_flags), link_flags
  moved = lambda flags: [f.replace(here, str(site_packages)) for f in flags]
  monkeypatch.setattr(tf.sysconfig, "get_compile_flags",
                      lambda: moved(compile_flags))
  monkeypatch.setattr(tf.sysconfig, "get_link_flags", lambda: moved(link_flags))


@pytest.mark.parametrize("where", ["symlink", "moved"])
def test_library_recorded_through_another_path_to_this_environment_loads(
    manifest_copy, monkeypatch, tmp_path, where):
  # Recorded (as build.py records it) where the venv's site-packages had
  # another path: through a symlink to it, or before the venv was moved here.
  if where == "symlink":
    other = tmp_path / "venv-link" / "site-packages"
    other.parent.mkdir()
    other.symlink_to(_site_packages(), target_is_directory=True)
    assert (other / "tensorflow").is_dir()
  else:
    other = pathlib.Path("/opt/before-the-move/lib/python3.11/site-packages")
  with monkeypatch.context() as elsewhere:
    _flags_seen_from(elsewhere, other)
    record = {**json.loads(manifest_copy.read_text()),
              **custom_op_library.build_record()}
    assert str(other) not in json.dumps(record)  # No directory is recorded.
  manifest_copy.write_text(json.dumps(record))
  assert custom_op_library.staleness(record) is None
  custom_op_library.load()


def test_record_of_a_python_started_through_a_symlinked_venv_is_accepted(
    manifest_copy, tmp_path):
  # A real second path to this environment: the venv through a symlink. Its
  # python reports (and a build there would record) paths under the link.
  link = tmp_path / "venv-link"
  link.symlink_to(sys.prefix, target_is_directory=True)
  python = link / "bin" / "python"
  if sys.prefix == sys.base_prefix or not python.exists():
    pytest.skip("not running in a venv")
  script = (
      "import importlib.util, json, sys, tensorflow as tf\n"
      "spec = importlib.util.spec_from_file_location('col', sys.argv[1])\n"
      "col = importlib.util.module_from_spec(spec)\n"
      "spec.loader.exec_module(col)\n"
      "print(json.dumps({'include': tf.sysconfig.get_include(),\n"
      "                  'record': col.build_record()}))\n")
  result = subprocess.run(
      [str(python), "-c", script, custom_op_library.__file__],
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True,
      text=True, timeout=300, check=True)
  seen = json.loads(result.stdout.strip().splitlines()[-1])
  assert seen["include"].startswith(str(link))
  assert seen["include"] != tf.sysconfig.get_include()
  record = {**json.loads(manifest_copy.read_text()), **seen["record"]}
  manifest_copy.write_text(json.dumps(record))
  assert custom_op_library.staleness(record) is None
  custom_op_library.load()


def _flip_cxx11_abi(flags):
  flipped = [re.sub(r"_GLIBCXX_USE_CXX11_ABI=([01])",
                    lambda m: f"_GLIBCXX_USE_CXX11_ABI={1 - int(m[1])}", f)
             for f in flags]
  assert flipped != flags, flags  # TensorFlow states its ABI.
  return flipped


def _other_libraries(flags):
  other = [re.sub(r"^-l.*", "-l:libtensorflow_framework.so.99", f)
           for f in flags]
  assert other != flags, flags  # TensorFlow names the library to link.
  return other


@pytest.mark.parametrize("differs", ["tensorflow", "abi", "library"])
def test_library_built_for_another_tensorflow_or_abi_is_refused(
    manifest_copy, monkeypatch, differs):
  # The record is this build's; the environment loading it differs.
  version = tf.__version__
  compile_flags = tf.sysconfig.get_compile_flags()
  link_flags = tf.sysconfig.get_link_flags()
  if differs == "tensorflow":
    monkeypatch.setattr(tf, "__version__", "2.99.0")
    named = [f"TensorFlow {version}", "TensorFlow 2.99.0"]
  elif differs == "abi":
    flipped = _flip_cxx11_abi(compile_flags)
    monkeypatch.setattr(tf.sysconfig, "get_compile_flags", lambda: flipped)
    named = ["ABI compile flags"] + [
        f for f in compile_flags + flipped if "_GLIBCXX_USE_CXX11_ABI" in f]
  else:
    other = _other_libraries(link_flags)
    monkeypatch.setattr(tf.sysconfig, "get_link_flags", lambda: other)
    named = ["linked libraries", "-l:libtensorflow_framework.so.99"] + [
        f for f in link_flags if f.startswith("-l")]
  with pytest.raises(custom_op_library.CustomOpUnavailable,
                     match="refusing to load .*custom_ops/build.py") as error:
    custom_op_library.load()
  for text in named:
    assert text in str(error.value)


def former_format_record() -> str:
  """What build.py wrote before: TF's flags verbatim, absolute paths and
  all."""
  return json.dumps({
      "tensorflow": tf.__version__,
      "compile_flags": tf.sysconfig.get_compile_flags(),
      "link_flags": tf.sysconfig.get_link_flags(),
      "machine": platform.machine(),
      "sources": custom_op_library.sources_digest(),
      "cpu_flags": [], "cuda": False, "compiler": "g++"})


def test_build_record_of_the_former_format_is_refused_with_a_rebuild_message(
    manifest_copy):
  manifest_copy.write_text(former_format_record())
  with pytest.raises(custom_op_library.CustomOpUnavailable,
                     match="refusing to load .*build record .* older format.*"
                     "must be rebuilt.*rebuild it with .*custom_ops/build.py"):
    custom_op_library.load()


def test_missing_library_makes_auto_fall_back_with_one_warning(
    manifest_copy, monkeypatch, tmp_path):
  _make_library_missing(monkeypatch, tmp_path)
  monkeypatch.delenv(backend_lib.ENV_VAR, raising=False)
  with pytest.warns(RuntimeWarning, match="using the pure-TF ops because .*"
                    "not built"):
    assert backend_lib.resolve("auto") == "tf"
  # The op still works, on the pure-TF backend.
  x = _random((1, 4, 4, 9))
  with pytest.warns(RuntimeWarning):
    np.testing.assert_allclose(ops.swap_align2nat(x, 2),
                               reference.swap_align2nat(x, 2), atol=1e-12)
  with pytest.raises(custom_op_library.CustomOpUnavailable, match="not built"):
    backend_lib.resolve("custom")


def test_environment_variable_forces_a_backend(manifest_copy, monkeypatch,
                                              tmp_path):
  monkeypatch.setenv(backend_lib.ENV_VAR, "tf")
  assert backend_lib.resolve("auto") == "tf"
  assert backend_lib.resolve("custom") == "custom"  # An explicit choice wins.
  monkeypatch.setenv(backend_lib.ENV_VAR, "custom")
  assert backend_lib.resolve("auto") == "custom"
  _make_library_missing(monkeypatch, tmp_path)
  with pytest.raises(custom_op_library.CustomOpUnavailable):
    backend_lib.resolve("auto")  # Forced custom fails loudly, no fallback.
  monkeypatch.setenv(backend_lib.ENV_VAR, "cuda")
  with pytest.raises(ValueError, match="must be 'tf' or 'custom'"):
    backend_lib.resolve("auto")
  with pytest.raises(ValueError, match="backend must be one of"):
    backend_lib.resolve("xla")


def test_custom_backend_builds_a_graph_with_the_custom_op():
  fn = tf.function(lambda x: ops.swap_align2nat(x, 2, backend="custom"))
  graph = fn.get_concrete_function(tf.TensorSpec([1, 4, 4, 9])).graph
  types = {op.type for op in graph.get_operations()}
  assert "SwapAlign2Nat" in types
  fn_tf = tf.function(lambda x: ops.swap_align2nat(x, 2, backend="tf"))
  graph_tf = fn_tf.get_concrete_function(tf.TensorSpec([1, 4, 4, 9])).graph
  assert not any(op.type.startswith("SwapAlign2Nat")
                 for op in graph_tf.get_operations())


@pytest.mark.parametrize("gather", [False, True], ids=["dense", "gather"])
def test_second_derivatives_match_the_reference_and_pure_tf(gather):
  # L(x) = 0.5 |op(x)|^2 with op(x) = J x + pad term: the Hessian is J^T J,
  # so <v, H v> = |J v|^2, J v being the reference op with pad 0.
  x = tf.constant(_random((2, 7, 8, 25), seed=3))
  v = tf.constant(_random((2, 7, 8, 25), seed=4))
  lam = 3
  indices = _indices(np.random.RandomState(5), 2, 3, 3, 6)

  def op(t, backend):
    if gather:
      return ops.swap_align2nat_gather(t, indices, lam, backend=backend)
    return ops.swap_align2nat(t, lam, backend=backend)

  def hessian_times_v(backend):
    with tf.GradientTape() as outer:
      outer.watch(x)
      with tf.GradientTape() as inner:
        inner.watch(x)
        loss = 0.5 * tf.reduce_sum(op(x, backend)**2)
      directional = tf.reduce_sum(inner.gradient(loss, x) * v)
    return outer.gradient(directional, x).numpy()

  jv = reference.swap_align2nat(v.numpy(), lam, pad=0.0)
  if gather:
    jv = np.stack([jv[n, y, xx].reshape(15, 15) for n, y, xx in indices])
  custom = hessian_times_v("custom")
  np.testing.assert_allclose(np.sum(custom * v.numpy()), np.sum(jv**2),
                             rtol=1e-12)
  np.testing.assert_allclose(custom, hessian_times_v("tf"), rtol=0,
                             atol=1e-10)


def test_unreadable_build_record_is_refused_and_auto_falls_back(
    manifest_copy, monkeypatch):
  manifest_copy.write_text('{"tensorflow": "2.2')  # A build cut off.
  with pytest.raises(custom_op_library.CustomOpUnavailable,
                     match="build record .* is unreadable.*custom_ops/build.py"):
    custom_op_library.load()
  monkeypatch.delenv(backend_lib.ENV_VAR, raising=False)
  with pytest.warns(RuntimeWarning, match="unreadable"):
    assert backend_lib.resolve("auto") == "tf"


def test_fallback_warning_is_shown_once_per_process(manifest_copy, monkeypatch,
                                                     tmp_path):
  import warnings  # pylint: disable=g-import-not-at-top
  _make_library_missing(monkeypatch, tmp_path)
  monkeypatch.delenv(backend_lib.ENV_VAR, raising=False)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")  # Python's own default for the class.
    x = _random((1, 4, 4, 9))
    ops.swap_align2nat(x, 2)
    ops.swap_align2nat(x, 2)  # Another call site, same process.
  assert len([w for w in caught if "pure-TF" in str(w.message)]) == 1
