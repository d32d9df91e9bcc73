"""up_align2nat and up_align2nat_gather on both backends, fractional lam
included (lam = 1.5: a 10 x 10 coarse window -> 15 x 15), against the
float64 numpy reference written from the definition (tests/reference.py)
and finite differences; integer factors against outputs recorded before
fractional lam existed."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tensormask_tf import ops
from tests import reference

BACKENDS = ("tf", "custom")
INTERPOLATIONS = ("bilinear", "nearest")
DATA = os.path.join(os.path.dirname(__file__), "data")
# (S, lam, pad, (H, W)): lam * S whole; odd and even T (15, 12, 10, 21).
FRACTIONAL_CASES = [
    (10, 1.5, -6.0, (5, 7)), (4, 3 / 2, 0.5, (6, 5)), (8, 1.25, 0.0, (4, 6)),
    (6, 5 / 3, -6.0, (7, 4)), (14, 1.5, 0.5, (3, 4)), (1, 2.0, -6.0, (3, 3)),
]


def _random(shape, seed=0):
  return np.random.RandomState(seed).uniform(-3.0, 3.0, shape)


def _case_id(case):
  s, lam, pad, (h, w) = case
  return f"S{s}-lam{lam:.4g}-pad{pad}-{h}x{w}"


def _indices(rng, batch, h, w, count=7):
  return np.stack([rng.randint(0, batch, count), rng.randint(0, h, count),
                   rng.randint(0, w, count)], axis=1).astype(np.int32)


def test_the_reference_is_the_definition_at_hand_computed_points():
  # S = 2, lam = 1.5: T = 3 (odd: whole-pixel spatial taps). Fine pixel v
  # sits at coarse coordinate (v + 0.5) / 1.5 - 0.5 = -1/6, 1/2, 7/6.
  x = np.zeros((1, 3, 3, 4))
  x[0, 1, 1] = [1.0, 2.0, 3.0, 4.0]  # (c, d) = (0,0), (0,1), (1,0), (1,1)
  out = reference.up_align2nat(x, 1.5, pad=0.0).reshape(3, 3, 3, 3)
  # Window (y, x) = (1, 1), pixel (v, u) = (1, 1): spatial tap y + v - 1 = 1,
  # window coordinate 1/2 on both axes: the mean of the four.
  assert out[1, 1, 1, 1] == pytest.approx(2.5, abs=1e-15)
  # (v, u) = (0, 0) reads cell (0, 0), which is all zero; window (2, 2)'s
  # (0, 0) reads cell (1, 1) at coordinate -1/6 on each axis: 5/6 of tap
  # 0 and 1/6 of tap -1 (pad) per axis, so 25/36 of x[..., (0, 0)].
  assert out[1, 1, 0, 0] == 0.0
  assert out[2, 2, 0, 0] == pytest.approx(25 / 36 * 1.0, abs=1e-15)
  with_pad = reference.up_align2nat(x, 1.5, pad=-6.0).reshape(3, 3, 3, 3)
  # Window (2, 2), (v, u) = (0, 0): 25/36 of x, 11/36 of pad.
  assert with_pad[2, 2, 0, 0] == pytest.approx(25 / 36 - 6 * 11 / 36,
                                               abs=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("case", FRACTIONAL_CASES, ids=_case_id)
def test_fractional_lam_matches_reference(case, interpolation, backend):
  s, lam, pad, (h, w) = case
  t = round(lam * s)
  x = _random((2, h, w, s * s), seed=1)
  want = reference.up_align2nat(x, lam, interpolation, pad)
  out = ops.up_align2nat(x, lam, interpolation, pad=pad, backend=backend)
  assert out.shape == (2, h, w, t * t)
  np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)
  out32 = ops.up_align2nat(x.astype(np.float32), lam, interpolation, pad=pad,
                           backend=backend)
  assert out32.dtype == tf.float32
  np.testing.assert_allclose(out32, want, rtol=0, atol=2e-5)
  indices = _indices(np.random.RandomState(2), 2, h, w)
  gathered = ops.up_align2nat_gather(x, indices, lam, interpolation, pad=pad,
                                     backend=backend)
  np.testing.assert_allclose(
      gathered, want[indices[:, 0], indices[:, 1], indices[:, 2]].reshape(
          -1, t, t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_issues_call_on_a_100_channel_tensor(backend):
  # tensormask_tf.ops.up_align2nat(x, lam=1.5, interpolation="bilinear") on
  # [N, H, W, 100] -> [N, H, W, 225], forward and gradient.
  x = _random((2, 6, 5, 100), seed=3)
  dy = _random((2, 6, 5, 225), seed=4)
  xt = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    y = ops.up_align2nat(xt, lam=1.5, interpolation="bilinear",
                         backend=backend)
  dx = tape.gradient(y, xt, output_gradients=tf.constant(dy)).numpy()
  assert y.shape == (2, 6, 5, 225)
  want = reference.up_align2nat(x, 1.5)
  np.testing.assert_allclose(y, want, rtol=0, atol=1e-12)
  # The gradient is the adjoint of the affine reference:
  # <ref(x) - ref(0), dy> = <x, dx>, and dx is linear in dy alone.
  shift = reference.up_align2nat(np.zeros_like(x), 1.5)
  np.testing.assert_allclose(np.sum(x * dx), np.sum((want - shift) * dy),
                             rtol=1e-12)
  # Every entry of dx: the sum over the outputs that read it.
  e = np.zeros_like(x)
  for n, a, b, c in ((0, 0, 0, 0), (1, 5, 4, 99), (1, 2, 3, 45), (0, 3, 0, 9)):
    e[:] = 0.0
    e[n, a, b, c] = 1.0
    column = reference.up_align2nat(e, 1.5) - shift
    assert dx[n, a, b, c] == pytest.approx(np.sum(column * dy), abs=1e-12)


def _gradient_cases():
  indices = np.array([[0, 0, 0], [1, 2, 3], [1, 2, 3], [0, 3, 1]], np.int32)
  cases = {}
  for backend in BACKENDS:
    for interpolation in INTERPOLATIONS:
      cases[f"dense_S2_lam1.5_{interpolation}_{backend}"] = (
          lambda x, i=interpolation, b=backend: ops.up_align2nat(
              x, 1.5, i, pad=0.5, backend=b),
          lambda x, i=interpolation: reference.up_align2nat(x, 1.5, i, 0.5),
          (2, 4, 4, 4))
    cases[f"dense_S3_lam5/3_{backend}"] = (
        lambda x, b=backend: ops.up_align2nat(x, 5 / 3, backend=b),
        lambda x: reference.up_align2nat(x, 5 / 3), (1, 3, 4, 9))
    # Duplicate rows: their gradients add up.
    cases[f"gather_S2_lam1.5_{backend}"] = (
        lambda x, b=backend: ops.up_align2nat_gather(x, indices, 1.5,
                                                     backend=b),
        lambda x: reference.up_align2nat(x, 1.5)[
            indices[:, 0], indices[:, 1], indices[:, 2]], (2, 4, 4, 4))
  return cases


GRADIENT_CASES = _gradient_cases()


@pytest.mark.parametrize("name", sorted(GRADIENT_CASES))
def test_gradient_matches_finite_differences_and_reference(name):
  fn, fn_ref, shape = GRADIENT_CASES[name]
  x = _random(shape, seed=10)
  theoretical, numerical = tf.test.compute_gradient(fn, [x])
  np.testing.assert_allclose(theoretical[0], numerical[0], rtol=0, atol=1e-7)
  np.testing.assert_allclose(theoretical[0],
                             reference.jacobian(fn_ref, x.shape), rtol=0,
                             atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_derivatives_are_the_forward_op(backend):
  # The gradient is linear in dy: its own gradient is the forward op
  # without pad, as the pure-TF backend has it.
  x = tf.constant(_random((1, 3, 4, 4), seed=5))
  dy = tf.constant(_random((1, 3, 4, 9), seed=6))
  v = tf.constant(_random((1, 3, 4, 4), seed=7))
  with tf.GradientTape() as outer:
    outer.watch(dy)
    with tf.GradientTape() as inner:
      inner.watch(x)
      y = ops.up_align2nat(x, 1.5, backend=backend)
    dx = inner.gradient(y, x, output_gradients=dy)
  ddy = outer.gradient(dx, dy, output_gradients=v).numpy()
  want = (reference.up_align2nat(v.numpy(), 1.5, pad=0.0))
  np.testing.assert_allclose(ddy, want, rtol=0, atol=1e-12)


def test_integer_factors_are_the_outputs_recorded_before_fractional_lam():
  # tests/data/up_align2nat_integer_lam.npz: the pure-TF op's float32
  # outputs and gradients at integer lam, recorded with the code before
  # fractional lam was added (commit 862386e). The same code path runs them
  # now: bit for bit.
  recorded = np.load(os.path.join(DATA, "up_align2nat_integer_lam.npz"))
  for key in sorted(k for k in recorded.files if k.startswith("x_")):
    name = key[2:]
    s, lam, interpolation = name.split("_")
    x = tf.constant(recorded[key])
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = ops.up_align2nat(x, int(lam[3:]), interpolation, backend="tf")
    dx = tape.gradient(y, x,
                       output_gradients=tf.constant(recorded[f"dy_{name}"]))
    np.testing.assert_array_equal(y.numpy(), recorded[f"y_{name}"], name)
    np.testing.assert_array_equal(dx.numpy(), recorded[f"dx_{name}"], name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_lam_equals_the_reference_on_both_backends(backend):
  for s, lam, interpolation in ((3, 2, "bilinear"), (5, 3, "nearest"),
                                (2, 4, "bilinear"), (3, 1, "bilinear")):
    x = _random((1, 5, 4, s * s), seed=s + lam)
    np.testing.assert_allclose(
        ops.up_align2nat(x, lam, interpolation, backend=backend),
        reference.up_align2nat(x, lam, interpolation), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_are_named(backend):
  x = np.zeros((1, 3, 3, 121))
  with pytest.raises(ValueError, match=r"lam \* S must be a whole number.*"
                     r"lam=1.5 and S=11"):
    ops.up_align2nat(x, 1.5, backend=backend)
  with pytest.raises(ValueError, match="lam must be >= 1"):
    ops.up_align2nat(np.zeros((1, 3, 3, 100)), 0.5, backend=backend)
  with pytest.raises(ValueError, match="lam must be a Python number"):
    ops.up_align2nat(np.zeros((1, 3, 3, 100)), "1.5", backend=backend)
  with pytest.raises(ValueError, match="interpolation must be one of"):
    ops.up_align2nat_gather(np.zeros((1, 3, 3, 100)), [[0, 0, 0]], 1.5,
                            "bicubic", backend=backend)
  with pytest.raises(tf.errors.InvalidArgumentError, match="outside"):
    ops.up_align2nat_gather(np.zeros((1, 3, 3, 100)), [[0, 3, 0]], 1.5,
                            backend=backend)
  # swap_align2nat's lam stays an integer (its output grid is H / lam).
  with pytest.raises(ValueError, match="lam must be a Python integer"):
    ops.swap_align2nat(np.zeros((1, 3, 3, 100)), 1.5, backend=backend)


def test_gathered_op_runs_at_run_time_sizes():
  # One graph for any H and W (the pure-TF gathered op), as exports trace.
  fn = tf.function(
      lambda x, i: ops.up_align2nat_gather(x, i, 1.5, backend="tf"),
      input_signature=[tf.TensorSpec([None, None, None, 100], tf.float64),
                       tf.TensorSpec([None, 3], tf.int32)])
  for h, w in ((4, 6), (7, 3)):
    x = _random((1, h, w, 100), seed=h)
    indices = _indices(np.random.RandomState(w), 1, h, w, 5)
    want = reference.up_align2nat(x, 1.5)
    np.testing.assert_allclose(
        fn(x, indices), want[indices[:, 0], indices[:, 1],
                             indices[:, 2]].reshape(-1, 15, 15),
        rtol=0, atol=1e-12)
