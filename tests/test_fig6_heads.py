"""The four baseline mask heads of the paper's Fig. 6 against a float64 numpy
reference written from their definitions (docs/model.md, "The baseline heads
of the paper's Fig. 6"; docs/ops.md, "Definitions").

Each head's mask branch is: conv1x1 of the level's mask-tower feature ->
the channels read as a window (channel v*s + u is window pixel (v, u)) ->
natural or aligned -> upscaled or not -> S x S natural masks per window,
at every level on the level's own grid. The reference below writes each
step in numpy (the projection as a matmul with the layer's kernel and bias,
the window reading by index arithmetic, align2nat as the shift of the
paper's eq. (1) with its even-S half-pixel average, tf.image.resize's
bilinear and nearest rules); only `upscale_aligned`'s upscaling takes the
representation op from `tests/reference.py` (itself written from the
formulas). The heads are compared in float64, densely and at windows, on
grids of P2's size and of two higher levels', on both op backends; each
case also checks that the wrong variants a bug would produce (the window
read transposed, no align2nat, align2nat shifting the wrong way, the other
interpolation) are far from the head's output.
"""

import contextlib
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tensormask_tf import ops
from tensormask_tf.modeling.heads import tensormask_head
from tests import reference

BATCH = 2
CHANNELS = 6  # mask_filters
# Level -> grid (H, W): P2's cell size, and two coarser levels'.
GRIDS = {2: (9, 11), 3: (5, 6), 4: (3, 3)}
EXACT = 1e-10  # float64 throughout
# upscale_natural's bilinear resize: tf.image.resize computes bilinear in
# float32 whatever its input's dtype (the head casts the result back), so
# that head's float64 numbers carry float32 rounding: up to 9.4e-7 of the
# largest logit measured (float32's coordinates and weights, ~10 ulp).
RESIZE_FLOAT32 = 1e-5
# A wrong variant must differ from the head by at least this (the logits
# are O(1)); far above every tolerance above.
MUTATION_MARGIN = 0.1

# (head_type, mask_sides, upscale_factor, upscale_interpolation, mask_pad):
# odd and even sides; lam 1.5 (15 -> 10 x 10 and 6 -> 4 x 4 predicted) and
# 3 (15 -> 5, 6 -> 2); the default pad and another one.
CASES = [
    ("simple_natural", (15, 4, 5), 1, "bilinear", None),
    ("simple_aligned", (15, 4, 5), 1, "bilinear", None),
    ("simple_aligned", (5, 4), 1, "bilinear", -3.5),
    ("upscale_natural", (15, 6), 1.5, "bilinear", None),
    ("upscale_natural", (15, 6), 1.5, "nearest", None),
    ("upscale_natural", (15, 6), 3, "bilinear", None),
    ("upscale_natural", (15, 6), 3, "nearest", None),
    ("upscale_aligned", (15, 6), 1.5, "bilinear", None),
    ("upscale_aligned", (15, 6), 1.5, "nearest", None),
    ("upscale_aligned", (15, 6), 3, "bilinear", -3.5),
    ("upscale_aligned", (15, 6), 3, "nearest", None),
]


# ---------------------------------------------------------------------------
# The reference (float64 numpy).
# ---------------------------------------------------------------------------
def _project(features, kernel, bias):
  """conv1x1: [N, H, W, C] x [1, 1, C, J] + [J] -> [N, H, W, J]."""
  return np.einsum("nhwc,cj->nhwj", features, kernel[0, 0]) + bias


def _window(channels, side, transpose=False):
  """[N, H, W, side*side] -> [N, H, W, side, side]: pixel (v, u) of each
  window is channel v*side + u (`transpose`: u*side + v, a wrong reading)."""
  v, u = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
  return channels[..., (u * side + v) if transpose else (v * side + u)]


def _channels(window):
  """The inverse of `_window`: [..., side, side] -> [..., side*side]."""
  return window.reshape(*window.shape[:-2], -1)


def _align2nat(aligned, pad, sign=1):
  """Natural masks from aligned ones, [N, H, W, S, S] each (lam = 1).

  Natural pixel (v, u) of the window at (y, x) is the aligned tensor's
  channel (v, u) at (y + v - (S-1)/2, x + u - (S-1)/2): one position for odd
  S, the average of 2 x 2 positions at the half-pixel for even S; `pad`
  outside the grid. `sign=-1` shifts the other way (nat2align: a bug).
  """
  n_, h, w, s, _ = aligned.shape
  offsets = sign * (np.arange(s) - (s - 1) / 2)
  taps = ([(offsets, 1.0)] if s % 2 else
          [(offsets - 0.5, 0.5), (offsets + 0.5, 0.5)])
  n = np.arange(n_).reshape(-1, 1, 1, 1, 1)
  y = np.arange(h).reshape(1, -1, 1, 1, 1)
  x = np.arange(w).reshape(1, 1, -1, 1, 1)
  v = np.arange(s).reshape(1, 1, 1, -1, 1)
  u = np.arange(s).reshape(1, 1, 1, 1, -1)
  out = np.zeros(aligned.shape)
  for dy, wy in taps:
    for dx, wx in taps:
      a = (y + dy[v]).astype(np.int64)
      b = (x + dx[u]).astype(np.int64)
      inside = (a >= 0) & (a < h) & (b >= 0) & (b < w)
      value = aligned[n, np.clip(a, 0, h - 1), np.clip(b, 0, w - 1), v, u]
      out += wy * wx * np.where(inside, value, pad)
  return out


def _resize_matrix(side, coarse, interpolation):
  """[side, coarse]: tf.image.resize of one axis, coarse -> side pixels.

  Bilinear: half-pixel centres, output pixel v samples the input at
  (v + 0.5) * coarse / side - 0.5, clamped to [0, coarse - 1] (the edge
  pixels extend), two linear taps. Nearest (TF2, half-pixel centres):
  input floor((v + 0.5) * coarse / side), at most coarse - 1.
  """
  matrix = np.zeros((side, coarse))
  for v in range(side):
    if interpolation == "bilinear":
      t = min(max((v + 0.5) * coarse / side - 0.5, 0.0), coarse - 1.0)
      low = math.floor(t)
      high = min(low + 1, coarse - 1)
      matrix[v, low] += 1.0 - (t - low)
      matrix[v, high] += t - low
    else:
      matrix[v, min((2 * v + 1) * coarse // (2 * side), coarse - 1)] = 1.0
  return matrix


def fig6_masks(head_type, projected, side, lam, interpolation, pad,
               transpose=False, sign=1):
  """[N, H, W, side, side] natural mask logits of a Fig. 6 head from its
  conv1x1 output `projected` [N, H, W, (side/lam)**2]."""
  coarse = math.isqrt(projected.shape[-1])
  window = _window(projected, coarse, transpose)
  if head_type == "simple_natural":
    return window
  if head_type == "simple_aligned":
    return _align2nat(window, pad, sign)
  if head_type == "upscale_natural":
    resize = _resize_matrix(side, coarse, interpolation)
    return np.einsum("vi,nhwij,uj->nhwvu", resize, window, resize)
  assert head_type == "upscale_aligned"
  return _window(reference.up_align2nat(_channels(window), lam,
                                        interpolation, pad), side)


def _mutations(head_type, interpolation):
  """{name: keyword changes to fig6_masks} of the wrong variants."""
  other = "nearest" if interpolation == "bilinear" else "bilinear"
  wrong = {"window read transposed (v, u) -> (u, v)": {"transpose": True}}
  if head_type == "simple_aligned":
    wrong["no align2nat (read as natural)"] = {"head_type": "simple_natural"}
    wrong["align2nat shifted the wrong way"] = {"sign": -1}
  if head_type == "upscale_aligned":
    wrong["no align2nat (read as natural)"] = {"head_type": "upscale_natural"}
  if head_type.startswith("upscale"):
    wrong[f"{other} instead of {interpolation}"] = {"interpolation": other}
  return wrong


# ---------------------------------------------------------------------------
# The heads.
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _floatx(dtype):
  old = tf_keras.backend.floatx()
  tf_keras.backend.set_floatx(dtype)
  try:
    yield
  finally:
    tf_keras.backend.set_floatx(old)


def _head(head_type, sides, lam, interpolation, pad, backend, seed=0):
  """A float64 head whose mask projections have random O(1) weights."""
  kwargs = dict(min_level=min(GRIDS), max_level=max(GRIDS), num_classes=2,
                mask_sides=sides, head_type=head_type, num_convs=1,
                class_filters=4, box_filters=4, mask_filters=CHANNELS,
                ops_backend=backend)
  if head_type.startswith("upscale"):
    kwargs.update(upscale_factor=lam, upscale_interpolation=interpolation)
  if pad is not None:
    kwargs["mask_pad"] = pad
  with _floatx("float64"):
    head = tensormask_head.TensorMaskHead(**kwargs)
    head.build(None)  # Builds the mask projections (mask_logits runs them).
  rng = np.random.RandomState(seed)
  for projection in head._mask_projections:  # pylint: disable=protected-access
    assert projection.kernel.dtype == tf.float64
    projection.kernel.assign(
        rng.uniform(-1, 1, projection.kernel.shape) / CHANNELS**0.5)
    projection.bias.assign(rng.uniform(-1, 1, projection.bias.shape))
  return head


def _features(seed=1):
  rng = np.random.RandomState(seed)
  return {str(level): tf.constant(rng.normal(size=(BATCH, h, w, CHANNELS)))
          for level, (h, w) in GRIDS.items()}


def _indices(level, seed):
  """Windows (n, y, x) on the level's grid: its corners, then random."""
  h, w = GRIDS[level]
  rng = np.random.RandomState(seed)
  rows = [[0, 0, 0], [1, h - 1, w - 1], [0, 0, w - 1], [1, h - 1, 0],
          [1, h // 2, w // 2]]
  rows += [[rng.randint(BATCH), rng.randint(h), rng.randint(w)]
           for _ in range(3)]
  return np.array(rows, np.int32)


@pytest.mark.parametrize("backend", ["tf", "custom"])
@pytest.mark.parametrize("head_type,sides,lam,interpolation,pad", CASES)
def test_fig6_head_matches_the_numpy_reference(head_type, sides, lam,
                                               interpolation, pad, backend):
  head = _head(head_type, sides, lam, interpolation, pad, backend)
  pad = ops.DEFAULT_PAD if pad is None else pad
  features = _features()
  tolerance = (RESIZE_FLOAT32 if (head_type, interpolation) == (
      "upscale_natural", "bilinear") else EXACT)
  for level in GRIDS:
    feature = features[str(level)].numpy()
    for a, side in enumerate(sides):
      assert head.mask_side(level, a) == side  # S at every level.
      projection = head._mask_projections[a]  # pylint: disable=protected-access
      projected = _project(feature, projection.kernel.numpy(),
                           projection.bias.numpy())
      want = fig6_masks(head_type, projected, side, lam, interpolation, pad)
      scale = max(1.0, np.abs(want).max())
      where = f"level {level}, S = {side}"

      dense = head.mask_logits(features, level, a)
      assert dense.dtype == tf.float64
      assert dense.shape == (BATCH, *GRIDS[level], side * side)
      dense = dense.numpy().reshape(want.shape)
      np.testing.assert_allclose(dense, want, rtol=0, atol=tolerance * scale,
                                 err_msg=where)

      indices = _indices(level, seed=level + 10 * a)
      gathered = head.mask_logits(features, level, a, tf.constant(indices))
      assert gathered.dtype == tf.float64
      np.testing.assert_allclose(
          gathered, want[indices[:, 0], indices[:, 1], indices[:, 2]],
          rtol=0, atol=tolerance * scale, err_msg=where)

      for name, change in _mutations(head_type, interpolation).items():
        args = dict(head_type=head_type, interpolation=interpolation)
        args.update(change)
        wrong = fig6_masks(projected=projected, side=side, lam=lam, pad=pad,
                           **args)
        assert np.abs(dense - wrong).max() > MUTATION_MARGIN, (where, name)


def test_reference_align2nat_is_the_representation_ops_reference():
  """The head-level align2nat above (a shift, or a 2 x 2 average for even
  S) is tests/reference.py's up_align2nat with lam = 1, for odd and even S;
  and the resize matrices are tf.image.resize's on a tiny example."""
  rng = np.random.RandomState(2)
  for side in (5, 4):
    x = rng.normal(size=(2, 4, 7, side * side))
    np.testing.assert_allclose(
        _channels(_align2nat(_window(x, side), -6.0)),
        reference.up_align2nat(x, 1, "bilinear", -6.0), rtol=0, atol=1e-12)
  for coarse, side in ((10, 15), (4, 6), (5, 15), (2, 6)):
    image = rng.normal(size=(1, coarse, coarse, 1))
    for interpolation in ("bilinear", "nearest"):
      resize = _resize_matrix(side, coarse, interpolation)
      got = tf.image.resize(image, [side, side], method=interpolation)
      np.testing.assert_allclose(
          got[0, ..., 0], resize @ image[0, ..., 0] @ resize.T,
          rtol=0, atol=1e-5 if interpolation == "bilinear" else 0)
  # The two rules by hand: 4 -> 6 (lam 1.5).
  np.testing.assert_allclose(
      _resize_matrix(6, 4, "bilinear") @ np.arange(4.0),
      [0, 0.5, 7 / 6, 11 / 6, 2.5, 3], atol=1e-12)
  np.testing.assert_array_equal(
      _resize_matrix(6, 4, "nearest") @ np.arange(4.0), [0, 1, 1, 2, 3, 3])
