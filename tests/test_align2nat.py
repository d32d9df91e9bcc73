"""Tests of the pure-TF representation ops against the numpy reference."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tensormask_tf import ops
from tensormask_tf.ops import mask_representation
from tensormask_tf.ops import window_taps
from tests import cases
from tests import reference

CASES = cases.CASES
PADS = cases.PADS
# swap_align2nat and its gathered form have two backends with the same numbers.
BACKENDS = ("tf", "custom")


def _random(shape, seed=0):
  return np.random.RandomState(seed).uniform(-3.0, 3.0, shape)


def _case_id(case):
  s, lam, pad, (h, w) = case
  return f"S{s}-lam{lam}-pad{pad}-{h}x{w}"


# ---------------------------------------------------------------------------
# The reference checks itself and hand-computed cases.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("s,lam,h,w", [(2, 1, 3, 2), (3, 2, 3, 4), (2, 3, 4, 3),
                                       (3, 1, 4, 3)])
def test_vectorised_reference_equals_scalar_loops(s, lam, h, w):
  x = _random((2, h, w, s * s), seed=1)
  np.testing.assert_allclose(reference.swap_align2nat(x, lam, pad=0.5),
                             reference.swap_align2nat_loops(x, lam, pad=0.5),
                             rtol=0, atol=1e-12)


@pytest.mark.parametrize("pad", [0.0, -6.0])
def test_hand_computed_even_window_averages_2x2_block(pad):
  # S=2, lam=1, one pixel: oy = v - 0.5, so each axis has one tap inside
  # (weight 0.5) and one outside; Y = 0.25 * X + 0.75 * pad.
  x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
  expected = 0.25 * x + 0.75 * pad
  np.testing.assert_allclose(ops.swap_align2nat(x, 1, pad=pad), expected,
                             rtol=0, atol=1e-15)


def test_hand_computed_upsampled_window_blends_pad():
  # S=1, lam=2, one pixel: per axis, spatial weight inside 0.5 and window
  # weight inside 0.75 (ov = -0.25 or 0.25), so every output pixel is
  # 0.375**2 * x + (1 - 0.375**2) * pad.
  x = np.full((1, 1, 1, 1), 2.0)
  w = 0.375**2
  expected = np.full((1, 1, 1, 4), w * 2.0 + (1 - w) * -6.0)
  np.testing.assert_allclose(ops.swap_align2nat(x, 2), expected,
                             rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------
# Forward against the reference.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_swap_align2nat_matches_reference(case, backend):
  s, lam, pad, (h, w) = case
  x = _random((2, h, w, s * s))
  expected = reference.swap_align2nat(x, lam, pad)
  out = ops.swap_align2nat(x, lam, pad=pad, backend=backend)
  assert out.shape == (2, math.ceil(h / lam), math.ceil(w / lam),
                       (lam * s)**2)
  assert out.dtype == tf.float64
  np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
  out32 = ops.swap_align2nat(x.astype(np.float32), lam, pad=pad,
                             backend=backend)
  assert out32.dtype == tf.float32
  np.testing.assert_allclose(out32, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_swap_align2nat_gather_matches_reference(case, backend):
  s, lam, pad, (h, w) = case
  x = _random((2, h, w, s * s), seed=2)
  expected = reference.swap_align2nat(x, lam, pad)
  out_h, out_w = expected.shape[1:3]
  rng = np.random.RandomState(3)
  indices = np.stack([rng.randint(0, 2, 7), rng.randint(0, out_h, 7),
                      rng.randint(0, out_w, 7)], axis=1).astype(np.int32)
  out = ops.swap_align2nat_gather(x, indices, lam, pad=pad, backend=backend)
  t = lam * s
  assert out.shape == (7, t, t)
  want = expected[indices[:, 0], indices[:, 1], indices[:, 2]].reshape(7, t, t)
  np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)
  out32 = ops.swap_align2nat_gather(x.astype(np.float32), indices, lam,
                                    pad=pad, backend=backend)
  np.testing.assert_allclose(out32, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_up_align2nat_matches_reference(case, interpolation):
  s, lam, pad, (h, w) = case
  if lam * s > 40:  # Output (lam*S)^2 per position: keep the reference quick.
    h, w = min(h, 5), min(w, 4)
  x = _random((1, h, w, s * s), seed=4)
  out = ops.up_align2nat(x, lam, interpolation=interpolation, pad=pad)
  np.testing.assert_allclose(
      out, reference.up_align2nat(x, lam, interpolation, pad),
      rtol=0, atol=1e-12)


@pytest.mark.parametrize("s", [1, 3, 5, 11, 15])
@pytest.mark.parametrize("pad", PADS)
def test_align2nat_and_nat2align_match_reference(s, pad):
  x = _random((2, 9, 14, s * s), seed=5)
  np.testing.assert_allclose(ops.align2nat(x, pad=pad),
                             reference.up_align2nat(x, 1, "bilinear", pad),
                             rtol=0, atol=1e-12)
  np.testing.assert_allclose(ops.nat2align(x, pad=pad),
                             reference.nat2align(x, pad), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# Identities.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("s", [3, 11, 15])
def test_lam1_odd_window_is_the_pure_shift_of_eq1(s):
  # Y[y, x, v, u] = X[y + v - c, x + u - c, v, u], c = (S-1)/2, by slicing.
  h, w, c = 13, 17, (s - 1) // 2
  x = _random((2, h, w, s * s), seed=6)
  x5 = x.reshape(2, h, w, s, s)
  padded = np.pad(x5, ((0, 0), (c, c), (c, c), (0, 0), (0, 0)),
                  constant_values=-6.0)
  expected = np.empty_like(x5)
  for v in range(s):
    for u in range(s):
      expected[..., v, u] = padded[:, v:v + h, u:u + w, v, u]
  np.testing.assert_array_equal(ops.swap_align2nat(x, 1),
                                expected.reshape(x.shape))
  np.testing.assert_array_equal(ops.align2nat(x), expected.reshape(x.shape))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("s,lam", [(2, 2), (3, 3), (5, 4), (3, 8)])
def test_swap_equals_up_subsampled_by_lam(s, lam, backend):
  x = _random((2, 11, 9, s * s), seed=7)
  up = ops.up_align2nat(x, lam, pad=0.5).numpy()
  np.testing.assert_allclose(ops.swap_align2nat(x, lam, pad=0.5,
                                                backend=backend),
                             up[:, ::lam, ::lam], rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("s,lam", [(3, 1), (2, 2), (5, 3), (15, 4)])
def test_gather_equals_dense_at_every_position(s, lam, backend):
  x = _random((2, 10, 7, s * s), seed=8)
  dense = ops.swap_align2nat(x, lam, backend=backend).numpy()
  grid = np.stack(np.meshgrid(*[np.arange(d) for d in dense.shape[:3]],
                              indexing="ij"), axis=-1).reshape(-1, 3)
  out = ops.swap_align2nat_gather(x, grid.astype(np.int32), lam,
                                  backend=backend)
  np.testing.assert_allclose(
      out.numpy().reshape(dense.shape), dense, rtol=0, atol=1e-12)


@pytest.mark.parametrize("s", [3, 5, 11])
def test_nat2align_inverts_align2nat_away_from_borders(s):
  c = (s - 1) // 2
  x = _random((2, 16, 15, s * s), seed=9)
  round_trip = ops.nat2align(ops.align2nat(x)).numpy()
  np.testing.assert_array_equal(round_trip[:, c:-c, c:-c],
                                x[:, c:-c, c:-c])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_with_no_indices_returns_empty(backend):
  x = _random((1, 4, 4, 9))
  out = ops.swap_align2nat_gather(x, np.zeros((0, 3), np.int32), 2,
                                  backend=backend)
  assert out.shape == (0, 6, 6)


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------
def _swap_gradient_cases(backend):
  return {
      f"swap_S3_lam1_{backend}": (
          lambda x: ops.swap_align2nat(x, 1, backend=backend),
          lambda x: reference.swap_align2nat(x, 1), (1, 4, 5, 9)),
      f"swap_S2_lam2_{backend}": (
          lambda x: ops.swap_align2nat(x, 2, pad=0.5, backend=backend),
          lambda x: reference.swap_align2nat(x, 2, 0.5), (2, 3, 5, 4)),
      f"swap_S3_lam3_{backend}": (
          lambda x: ops.swap_align2nat(x, 3, backend=backend),
          lambda x: reference.swap_align2nat(x, 3), (1, 4, 4, 9)),
      # Duplicate rows: their gradients add up.
      f"gather_S3_lam2_{backend}": (
          lambda x: ops.swap_align2nat_gather(
              x, [[0, 0, 0], [1, 1, 2], [1, 1, 2], [0, 2, 1]], 2,
              backend=backend),
          lambda x: reference.swap_align2nat(x, 2)[
              [0, 1, 1, 0], [0, 1, 1, 2], [0, 2, 2, 1]],
          (2, 5, 5, 9)),
  }


GRADIENT_CASES = {
    **_swap_gradient_cases("tf"),
    **_swap_gradient_cases("custom"),
    "up_nearest_S2_lam3": (
        lambda x: ops.up_align2nat(x, 3, "nearest"),
        lambda x: reference.up_align2nat(x, 3, "nearest"), (1, 3, 4, 4)),
    "up_bilinear_S3_lam2": (
        lambda x: ops.up_align2nat(x, 2),
        lambda x: reference.up_align2nat(x, 2), (1, 3, 3, 9)),
    "nat2align_S3": (lambda x: ops.nat2align(x),
                     lambda x: reference.nat2align(x), (1, 4, 5, 9)),
}


@pytest.mark.parametrize("name", sorted(GRADIENT_CASES))
def test_gradient_matches_finite_differences_and_reference(name):
  fn, fn_ref, shape = GRADIENT_CASES[name]
  x = _random(shape, seed=10)
  theoretical, numerical = tf.test.compute_gradient(fn, [x])
  np.testing.assert_allclose(theoretical[0], numerical[0], rtol=0, atol=1e-7)
  np.testing.assert_allclose(theoretical[0],
                             reference.jacobian(fn_ref, x.shape), rtol=0,
                             atol=1e-12)


def _vjp(fn, x, dy):
  x = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = fn(x)
  return tape.gradient(y, x, output_gradients=tf.constant(dy, y.dtype)).numpy()


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_gradients_of_both_backends_agree_on_every_case(case):
  # custom == pure TF (float64 to 1e-10, float32 to 1e-5), and both are the
  # adjoint of the numpy reference: <ref(x) - ref(0), dy> == <x, dx>.
  s, lam, pad, (h, w) = case
  x = _random((2, h, w, s * s), seed=13)
  ref = reference.swap_align2nat(x, lam, pad)
  ref_shift = reference.swap_align2nat(np.zeros_like(x), lam, pad)
  dy = _random(ref.shape, seed=14)
  rng = np.random.RandomState(15)
  indices = np.stack([rng.randint(0, 2, 9), rng.randint(0, ref.shape[1], 9),
                      rng.randint(0, ref.shape[2], 9)], axis=1).astype(np.int32)
  picked = (ref - ref_shift)[indices[:, 0], indices[:, 1], indices[:, 2]]
  dy_gather = _random(picked.shape, seed=16).reshape(9, lam * s, lam * s)
  for dtype, atol in ((np.float64, 1e-10), (np.float32, 1e-5)):
    dense = {b: _vjp(lambda x: ops.swap_align2nat(x, lam, pad, backend=b),
                     x.astype(dtype), dy) for b in BACKENDS}
    gather = {b: _vjp(lambda x: ops.swap_align2nat_gather(x, indices, lam, pad,
                                                          backend=b),
                      x.astype(dtype), dy_gather) for b in BACKENDS}
    np.testing.assert_allclose(dense["custom"], dense["tf"], rtol=0, atol=atol)
    np.testing.assert_allclose(gather["custom"], gather["tf"], rtol=0,
                               atol=atol)
    if dtype == np.float64:
      for backend in BACKENDS:
        np.testing.assert_allclose(np.sum(x * dense[backend]),
                                   np.sum((ref - ref_shift) * dy), rtol=1e-10)
        np.testing.assert_allclose(
            np.sum(x * gather[backend]),
            np.sum(picked.reshape(dy_gather.shape) * dy_gather), rtol=1e-10)


# ---------------------------------------------------------------------------
# dtypes and XLA.
# ---------------------------------------------------------------------------
# Mantissa bits: one unit in the last place of x is at most |x| * 2**-bits.
_MANTISSA_BITS = {tf.float16: 10, tf.bfloat16: 7}


def _assert_rounded_once(out, expected: np.ndarray, dtype):
  """out equals float64 `expected` rounded once to dtype, to one unit in
  the last place, and exactly for 99% of the values: what a float32
  computation cast at the end gives. Accumulating the 16 taps in half
  precision is off by several units in most values (checked by computing
  in float16, or bfloat16, throughout: 36% of the values off, by up to
  200 units near cancellations)."""
  out = tf.cast(out, tf.float64).numpy()
  rounded = tf.cast(tf.cast(expected, dtype), tf.float64).numpy()
  unit = np.maximum(np.abs(rounded), 1e-3) * 2.0**-_MANTISSA_BITS[dtype]
  assert np.all(np.abs(out - rounded) <= unit), np.abs(out - rounded).max()
  assert np.mean(out != rounded) <= 0.01, np.mean(out != rounded)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_is_computed_in_float32(dtype, backend):
  # lam = 4: fractional window coordinates, up to 16 taps per value; the
  # values span [-300, 300] so that sums cancel.
  x = tf.cast(100.0 * _random((1, 12, 12, 9)), dtype)
  expected = reference.swap_align2nat(tf.cast(x, tf.float64).numpy(), 4)
  out = ops.swap_align2nat(x, 4, backend=backend)
  assert out.dtype == dtype
  _assert_rounded_once(out, expected, dtype)
  gathered = ops.swap_align2nat_gather(x, [[0, 1, 2], [0, 2, 0]], 4,
                                       backend=backend)
  assert gathered.dtype == dtype
  _assert_rounded_once(gathered, expected[0, [1, 2], [2, 0]].reshape(
      2, 12, 12), dtype)


XLA_OPS = {  # Custom ops cannot be XLA-compiled: XLA code asks for "tf".
    "swap": lambda x: ops.swap_align2nat(x, 4, backend="tf"),
    "gather": lambda x: ops.swap_align2nat_gather(
        x, tf.constant([[0, 1, 2], [1, 0, 0]]), 4, backend="tf"),
    "up_nearest": lambda x: ops.up_align2nat(x, 2, "nearest", backend="tf"),
    "up_bilinear": lambda x: ops.up_align2nat(x, 2, backend="tf"),
    "up_gather": lambda x: ops.up_align2nat_gather(
        x, tf.constant([[0, 1, 2], [1, 0, 0]]), 5 / 3, backend="tf"),
    "align2nat": lambda x: ops.align2nat(x, backend="tf"),
    "nat2align": ops.nat2align,
}


@pytest.mark.parametrize("name", sorted(XLA_OPS))
def test_op_and_gradient_compile_with_xla(name):
  op = XLA_OPS[name]
  x = tf.constant(_random((2, 9, 11, 9), seed=11), tf.float32)

  def forward_and_gradient(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = op(x)
      loss = tf.reduce_sum(y * tf.sin(y))
    return y, tape.gradient(loss, x)

  y_xla, g_xla = tf.function(forward_and_gradient, jit_compile=True)(x)
  # The compiled function really is an XLA cluster, not a silent fallback.
  hlo = tf.function(forward_and_gradient, jit_compile=True
                    ).experimental_get_compiler_ir(x)(stage="hlo")
  assert "gather" in hlo
  y_eager, g_eager = forward_and_gradient(x)
  np.testing.assert_allclose(y_xla, y_eager, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_xla, g_eager, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------
BAD_CALLS = {
    "non_square_channels": (lambda: ops.swap_align2nat(np.zeros((1, 4, 4, 8)), 2),
                            "not a non-zero square"),
    "zero_channels": (lambda: ops.align2nat(np.zeros((1, 4, 4, 0))),
                      "not a non-zero square"),
    "lam_zero": (lambda: ops.swap_align2nat(np.zeros((1, 4, 4, 9)), 0),
                 "lam must be >= 1"),
    "lam_float": (lambda: ops.swap_align2nat(np.zeros((1, 4, 4, 9)), 2.0),
                  "lam must be a Python integer"),
    "lam_bool": (lambda: ops.up_align2nat(np.zeros((1, 4, 4, 9)), True),
                 "lam must be a Python number"),
    "rank_3": (lambda: ops.swap_align2nat(np.zeros((4, 4, 9)), 1),
               "rank 4"),
    "int_input": (lambda: ops.align2nat(np.zeros((1, 4, 4, 9), np.int32)),
                  "must be float16, bfloat16, float32 or float64"),
    "nat2align_even_window": (lambda: ops.nat2align(np.zeros((1, 4, 4, 4))),
                              "must be odd"),
    "bad_interpolation": (
        lambda: ops.up_align2nat(np.zeros((1, 4, 4, 9)), 2, "bicubic"),
        "interpolation must be one of"),
    "nan_pad": (lambda: ops.align2nat(np.zeros((1, 4, 4, 9)), pad=float("nan")),
                "pad must be finite"),
    "gather_indices_shape": (
        lambda: ops.swap_align2nat_gather(np.zeros((1, 4, 4, 9)),
                                          np.zeros((3, 2), np.int32), 2),
        r"shape \[K, 3\]"),
    "gather_float_indices": (
        lambda: ops.swap_align2nat_gather(np.zeros((1, 4, 4, 9)),
                                          np.zeros((3, 3), np.float32), 2),
        "must be int32 or int64"),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_input_raises_value_error(name):
  call, message = BAD_CALLS[name]
  with pytest.raises(ValueError, match=message):
    call()


def test_dynamic_spatial_shape_is_refused_with_a_clear_error():
  # The dense ops need static H and W; the gathered op only the channels.
  fn = tf.function(lambda x: ops.swap_align2nat(x, 2), input_signature=[
      tf.TensorSpec([None, None, None, 9], tf.float32)])
  with pytest.raises(ValueError, match="H, W and the channel count"):
    fn.get_concrete_function()
  fn = tf.function(lambda x: ops.swap_align2nat_gather(x, [[0, 0, 0]], 2),
                   input_signature=[tf.TensorSpec([None] * 4, tf.float32)])
  with pytest.raises(ValueError, match="the channel count of x must be stat"):
    fn.get_concrete_function()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index,message", [
    ([2, 0, 0], "outside the batch"),       # N = 2
    ([0, 2, 0], "row y outside"),           # ceil(4/2) = 2 rows
    ([0, 0, 3], "column x outside"),        # ceil(5/2) = 3 columns
    ([0, -1, 0], "negative index"),
])
def test_gather_indices_outside_the_grid_raise(index, message, backend):
  x = np.zeros((2, 4, 5, 9))
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    ops.swap_align2nat_gather(x, np.array([[0, 0, 0], index], np.int32), 2,
                              backend=backend)
  graph_fn = tf.function(
      lambda i: ops.swap_align2nat_gather(x, i, 2, backend=backend))
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    graph_fn(tf.constant([index], tf.int32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index,message", [
    ([2**32 + 1, 0, 0], "outside the batch"),  # 1 as int32
    ([0, 2**33, 0], "row y outside"),          # 0 as int32
    ([0, 0, 2**32 + 2], "column x outside"),   # 2 as int32
    ([0, 1 - 2**32, 0], "negative index"),     # 1 as int32
])
def test_int64_gather_indices_are_checked_before_narrowing(index, message,
                                                           backend):
  x = np.zeros((2, 4, 5, 9))
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    ops.swap_align2nat_gather(x, np.array([index], np.int64), 2,
                              backend=backend)


# ---------------------------------------------------------------------------
# The gathered op at sizes known only at run time.
# ---------------------------------------------------------------------------
def _tap_matrix(spatial, window, weight, size, s):
  """[P, T, size, S] weight of each (spatial, window) input cell."""
  p, t, k = weight.shape
  out = np.zeros((p, t, size, s))
  pp, tt, _ = np.meshgrid(np.arange(p), np.arange(t), np.arange(k),
                          indexing="ij")
  np.add.at(out, (pp, tt, spatial, np.broadcast_to(window, weight.shape)),
            weight)
  return out


@pytest.mark.parametrize("s", [1, 2, 3, 4, 11])
def test_run_time_taps_equal_the_static_tables_at_every_position(s):
  # The in-graph taps of the gathered op read the same input cells with the
  # same weights as the static tables of swap_align2nat, and have the same
  # outside sums bit for bit, for every position of inputs of every size.
  for lam in (1, 2, 3, 4, 8):
    strided = window_taps.strided_axis_taps(
        *mask_representation._align2nat_coords(s, lam), s)
    for size in (1, 2, 3, 7, 13):
      static = mask_representation._align2nat_taps(size, s, lam, stride=lam)
      positions = tf.range(-(-size // lam))
      spatial, window, weight, outside = (
          t.numpy() for t in mask_representation._gathered_axis_taps(
              strided, positions, lam, tf.constant(size), tf.float64,
              tf.int64))
      assert spatial.min() >= 0 and spatial.max() < size
      assert window.min() >= 0 and window.max() < s
      np.testing.assert_array_equal(
          outside.view(np.uint64), static.outside.view(np.uint64))
      np.testing.assert_array_equal(
          _tap_matrix(spatial, window, weight, size, s),
          _tap_matrix(static.spatial, static.window, static.weight, size, s))


def _bits(a):
  a = np.asarray(a)
  return a.view(np.uint64 if a.dtype == np.float64 else np.uint32)


# (S, lam, pad, (H, W)): windows larger than the input, lam 1 to 8, odd and
# even S and T = lam*S, pad 0 and not.
RUN_TIME_SIZE_CASES = [(3, 1, -6.0, (1, 1)), (2, 2, 0.0, (2, 3)),
                       (5, 4, -6.0, (9, 6)), (4, 8, 0.0, (5, 12)),
                       (15, 4, 0.5, (12, 11)), (1, 3, 0.0, (8, 13)),
                       (11, 2, -6.0, (3, 2))]


@pytest.mark.parametrize("case", RUN_TIME_SIZE_CASES, ids=_case_id)
def test_gather_traced_for_any_size_equals_the_static_trace(case):
  # One function traced with static shapes and with run-time H and W (and
  # batch): the same bits, values and gradients, and the reference's values.
  s, lam, pad, (h, w) = case
  x = _random((2, h, w, s * s), seed=20)
  ref = reference.swap_align2nat(x, lam, pad)
  rng = np.random.RandomState(21)
  indices = np.stack([rng.randint(0, 2, 7), rng.randint(0, ref.shape[1], 7),
                      rng.randint(0, ref.shape[2], 7)], axis=1).astype(np.int32)
  t = lam * s
  want = ref[indices[:, 0], indices[:, 1], indices[:, 2]].reshape(7, t, t)
  dy = _random((7, t, t), seed=22)

  def forward_and_vjp(x, indices):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = ops.swap_align2nat_gather(x, indices, lam, pad, backend="tf")
    return y, tape.gradient(y, x, output_gradients=tf.cast(dy, y.dtype))

  for dtype, atol in ((tf.float64, 1e-12), (tf.float32, 1e-5)):
    runs = {}
    for name, shape in (("static", [2, h, w]), ("any size", [None] * 3),
                        ("batch of two", [2, None, None])):
      fn = tf.function(forward_and_vjp, input_signature=[
          tf.TensorSpec(shape + [s * s], dtype),
          tf.TensorSpec([None, 3], tf.int32)])
      runs[name] = [r.numpy() for r in fn(tf.cast(x, dtype), indices)]
    y, dx = runs["any size"]
    np.testing.assert_allclose(y, want, rtol=0, atol=atol)
    if dtype == tf.float64:  # The gradient is the reference's adjoint.
      shift = reference.swap_align2nat(np.zeros_like(x), lam, pad)[
          indices[:, 0], indices[:, 1], indices[:, 2]].reshape(7, t, t)
      np.testing.assert_allclose(np.sum(x * dx), np.sum((want - shift) * dy),
                                 rtol=1e-10)
    for name in ("static", "batch of two"):
      for got, expected in zip(runs[name], runs["any size"]):
        np.testing.assert_array_equal(_bits(got), _bits(expected))


def test_one_trace_serves_every_size():
  fn = tf.function(
      lambda x, i: ops.swap_align2nat_gather(x, i, 2, backend="tf"),
      input_signature=[tf.TensorSpec([1, None, None, 9], tf.float64),
                       tf.TensorSpec([None, 3], tf.int32)])
  for h, w in ((1, 1), (4, 5), (9, 6), (2, 16)):
    x = _random((1, h, w, 9), seed=h * w)
    grid = np.stack(np.meshgrid([0], np.arange(-(-h // 2)),
                                np.arange(-(-w // 2)), indexing="ij"),
                    axis=-1).reshape(-1, 3).astype(np.int32)
    np.testing.assert_allclose(
        fn(x, grid).numpy().reshape(1, -(-h // 2), -(-w // 2), 36),
        reference.swap_align2nat(x, 2), rtol=0, atol=1e-12)
  assert fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index,message", [
    ([2, 0, 0], "outside the batch"),       # N = 2
    ([0, 2, 0], "row y outside"),           # ceil(4/2) = 2 rows
    ([0, 0, 3], "column x outside"),        # ceil(5/2) = 3 columns
    ([0, -1, 0], "negative index"),
])
def test_gather_indices_outside_a_run_time_grid_raise(index, message,
                                                      backend):
  fn = tf.function(
      lambda x, i: ops.swap_align2nat_gather(x, i, 2, backend=backend),
      input_signature=[tf.TensorSpec([None, None, None, 9], tf.float64),
                       tf.TensorSpec([None, 3], tf.int32)])
  x = np.zeros((2, 4, 5, 9))
  assert fn(x, [[1, 1, 2]]).shape == (1, 6, 6)  # The last row and column.
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    fn(x, np.array([[0, 0, 0], index], np.int32))
