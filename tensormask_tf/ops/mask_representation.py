"""TensorMask's tensor-representation ops in pure TensorFlow (docs/ops.md).

A mask tensor is `[N, H, W, S*S]` (NHWC) with channel `c = v*S + u`; `(v, u)`
is the offset inside a window of side S. The ops move between the *aligned*
representation (channel (v, u) at (y, x) is the mask pixel at image offset
(v, u) relative to the pixel (y, x)) and the *natural* one (channel (v, u) at
(y, x) is pixel (v, u) of the window *centred* at (y, x)), optionally
upsampling the window by a factor `lam`:

- `swap_align2nat(x, lam)`: aligned input whose (V, U) unit is `lam` times
  coarser than its (H, W) unit -> natural output on a `lam` times coarser grid,
  `[N, ceil(H/lam), ceil(W/lam), (lam*S)**2]`.
- `swap_align2nat_gather(x, indices, lam)`: the same values at K selected
  output windows only, `[K, lam*S, lam*S]`.
- `up_align2nat(x, lam)`: every input position is a window,
  `[N, H, W, (lam*S)**2]`; `interpolation="nearest"` repeats window pixels.
  lam may be a fraction where lam * S is whole (1.5: 10 x 10 -> 15 x 15).
- `up_align2nat_gather(x, indices, lam)`: its values at K windows only.
- `align2nat(x)` = `up_align2nat(x, 1)`; `nat2align(x)` is its inverse shift.

These are standard TF ops (gather, transpose, multiply-add), differentiable
and XLA-compilable. The channel count must be static, and so must H and W
except for the gathered ops, which take sizes known only at run time (a
graph traced for any image size).
`swap_align2nat`, `up_align2nat` and their gathered forms also have a
compiled custom-op backend with the same numbers, chosen by their `backend`
argument (`backend.py`).
float16 and bfloat16 inputs are computed in float32 and returned in their own
dtype. Taps outside the input read `pad` (default -6.0: sigmoid(-6) ~ 0, "no
mask there"), including window taps past the border of the window.
"""

import fractions
import math
import numbers

import numpy as np
import tensorflow as tf

from tensormask_tf.ops import backend as backend_lib
from tensormask_tf.ops import custom_op_library
from tensormask_tf.ops import window_taps

DEFAULT_PAD = -6.0

# Input dtypes of the ops; float16 and bfloat16 are computed in float32.
FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
_INTERPOLATIONS = ("bilinear", "nearest")


# ---------------------------------------------------------------------------
# The coordinate formulas of docs/ops.md, one axis at a time. `stride` is
# the spacing of the output windows in input cells (lam for swap_align2nat, 1
# otherwise); T = lam * S is the output window side.
# ---------------------------------------------------------------------------
def output_window_side(lam, window: int, op_name: str) -> int:
  """T = lam * S, the output window side, which must be a whole number.

  Raises:
    ValueError: lam * S is not an integer (e.g. lam = 1.5 with S = 11).
  """
  side = lam * window
  if isinstance(lam, numbers.Integral):
    return int(side)
  if abs(side - round(side)) > 1e-9 * max(1.0, side):
    raise ValueError(
        f"{op_name}: lam * S must be a whole number of output mask pixels, "
        f"got lam={lam} and S={window} (lam * S = {side:g}).")
  return int(round(side))


def _window_offsets(lam, window: int) -> np.ndarray:
  """[T] output window offsets v (or u), float64."""
  return np.arange(output_window_side(lam, window, "align2nat"),
                   dtype=np.float64)


def _align2nat_coords(window: int, lam, interpolation: str = "bilinear"
                      ) -> tuple[np.ndarray, np.ndarray]:
  """[T] `oy - stride*y = v - T/2 + 0.5` and [T] `ov = (v + 0.5)/lam - 0.5`.

  The spatial coordinate of output position y is `stride*y` plus the first;
  every value is a multiple of 1/2, so the sum is exact. lam may be a
  fraction (up_align2nat): `ov` is then the window coordinate of the fine
  pixel centre `v + 0.5` in coarse pixels of lam fine ones, as for an
  integer lam.
  """
  v = _window_offsets(lam, window)
  t = v.size
  offset = v - t / 2.0 + 0.5
  if interpolation == "nearest":
    window_coord = np.floor(v / lam)
  else:
    window_coord = (v + 0.5) / lam - 0.5
  return offset, window_coord


def _align2nat_taps(size: int, window: int, lam, stride: int,
                    interpolation: str = "bilinear") -> window_taps.AxisTaps:
  """Taps of `oy = stride*y + v - T/2 + 0.5`, `ov` as `_align2nat_coords`."""
  offset, window_coord = _align2nat_coords(window, lam, interpolation)
  positions = np.arange(-(-size // stride), dtype=np.float64)
  spatial = stride * positions[:, None] + offset[None, :]
  return window_taps.axis_taps(spatial, window_coord, size, window)


def _nat2align_taps(size: int, window: int) -> window_taps.AxisTaps:
  """Taps of `oy = y - v + (S-1)/2`, `ov = v` (odd S: every tap integral)."""
  v = _window_offsets(1, window)
  positions = np.arange(size, dtype=np.float64)
  spatial = positions[:, None] - v[None, :] + (window - 1) / 2.0
  return window_taps.axis_taps(spatial, v, size, window)


# ---------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------
def check_lam(lam, op_name: str, integer: bool = True):
  """Returns lam as an int (a float for a fractional lam where `integer`
  is False), or raises ValueError unless it is a real number >= 1 (an
  integer where `integer`)."""
  if isinstance(lam, bool) or not isinstance(
      lam, numbers.Integral if integer else numbers.Real):
    kind = "integer" if integer else "number"
    raise ValueError(
        f"{op_name}: lam must be a Python {kind} >= 1, got {lam!r} "
        f"({type(lam).__name__}).")
  if not lam >= 1 or not math.isfinite(lam):
    raise ValueError(f"{op_name}: lam must be >= 1, got {lam}.")
  if isinstance(lam, numbers.Integral) or float(lam).is_integer():
    return int(lam)
  return float(lam)


def _checked_lam(lam, window: int, op_name: str):
  """lam, once lam * S is known to be a whole number (else ValueError)."""
  output_window_side(lam, window, op_name)
  return lam


def check_interpolation(interpolation: str, op_name: str) -> None:
  if interpolation not in _INTERPOLATIONS:
    raise ValueError(
        f"{op_name}: interpolation must be one of {_INTERPOLATIONS}, got "
        f"{interpolation!r}.")


def check_pad(pad, op_name: str) -> float:
  """Returns pad as a float, or raises ValueError unless it is a finite real."""
  if isinstance(pad, bool) or not isinstance(pad, numbers.Real):
    raise ValueError(f"{op_name}: pad must be a real number, got {pad!r}.")
  if not math.isfinite(pad):
    raise ValueError(f"{op_name}: pad must be finite, got {pad}.")
  return float(pad)


def compute_dtype(dtype: tf.DType) -> tf.DType:
  """The dtype the ops compute in: float32 for float16 and bfloat16."""
  return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def _check_input(x, op_name: str,
                 static_size: bool = True) -> tuple[tf.Tensor, int]:
  """Validates x and casts it to the compute dtype; returns (x, S).

  H and W must be static unless `static_size` is False (the channel count
  always must be: it gives S).
  """
  x = tf.convert_to_tensor(x)
  if x.dtype not in FLOAT_DTYPES:
    raise ValueError(
        f"{op_name}: x must be float16, bfloat16, float32 or float64, got "
        f"{x.dtype.name}.")
  if x.shape.rank != 4:
    raise ValueError(
        f"{op_name}: x must have rank 4 [N, H, W, S*S], got shape {x.shape}.")
  _, height, width, channels = x.shape.as_list()
  if channels is None or (static_size and None in (height, width)):
    what = "H, W and the channel count" if static_size else "the channel count"
    raise ValueError(
        f"{op_name}: {what} of x must be static, got shape {x.shape}.")
  if min(height or 1, width or 1) < 1:
    raise ValueError(f"{op_name}: H and W must be >= 1, got shape {x.shape}.")
  window = math.isqrt(channels)
  if window < 1 or window * window != channels:
    raise ValueError(
        f"{op_name}: the channel count of x must be S*S for a window side "
        f"S >= 1, got {channels} channels, which is not a non-zero square.")
  return tf.cast(x, compute_dtype(x.dtype)), window


def spatial_size(x: tf.Tensor) -> tuple[int | tf.Tensor, int | tf.Tensor]:
  """(H, W) of an [N, H, W, C] tensor: ints where static, else scalar int32
  tensors."""
  dynamic = tf.shape(x)
  return tuple(x.shape[i] if x.shape[i] is not None else dynamic[i]
               for i in (1, 2))


def check_gather_indices(indices, x: tf.Tensor, lam: int,
                         op_name: str = "swap_align2nat_gather"
                         ) -> tf.Tensor:
  """Validates `[K, 3]` rows `(n, y, x)` against the batch of the
  [N, H, W, C] tensor x and its output grid `[ceil(H/lam), ceil(W/lam)]`
  (lam: the output windows' spacing in input cells; run-time sizes where
  they are not static); returns them as int32."""
  indices = tf.convert_to_tensor(indices)
  if indices.dtype not in (tf.int32, tf.int64):
    raise ValueError(
        f"{op_name}: indices must be int32 or int64, got "
        f"{indices.dtype.name}.")
  if indices.shape.rank != 2 or indices.shape[-1] != 3:
    raise ValueError(
        f"{op_name}: indices must have shape [K, 3] with rows "
        f"(n, y, x), got shape {indices.shape}.")
  # (Not -(-size // lam): ONNX's integer Div truncates, see windows.py.)
  out_height, out_width = ((size + lam - 1) // lam
                           for size in spatial_size(x))
  # The grid's extent in the message where it is static (the assert shows
  # the compared values either way).
  extent = lambda size: f" {size}" if isinstance(size, int) else ""
  # Checked in their own dtype: int64 rows past int32 would wrap when cast.
  n, y, x_pos = tf.unstack(indices, axis=1)
  checks = [
      tf.debugging.assert_non_negative(
          indices, message=f"{op_name}: negative index in indices"),
      tf.debugging.assert_less(
          n, tf.cast(tf.shape(x)[0], indices.dtype),
          message=f"{op_name}: batch index n outside the batch"),
      tf.debugging.assert_less(
          y, tf.cast(out_height, indices.dtype),
          message=(f"{op_name}: row y outside the output grid of "
                   f"height{extent(out_height)}")),
      tf.debugging.assert_less(
          x_pos, tf.cast(out_width, indices.dtype),
          message=(f"{op_name}: column x outside the output grid "
                   f"of width{extent(out_width)}")),
  ]
  with tf.control_dependencies(checks):
    # identity: a cast to the same dtype makes no op to carry the checks.
    return tf.identity(tf.cast(indices, tf.int32))


# ---------------------------------------------------------------------------
# Applying the taps.
# ---------------------------------------------------------------------------
def _pad_term(pad: float, row_outside: tf.Tensor,
              col_outside: tf.Tensor) -> tf.Tensor:
  """`pad` times the weight of the 4D taps outside the input.

  A 4D tap reads the input only if its row and its column tap do, so the
  weight outside is `1 - (1 - r)(1 - c) = r + c - r*c` (each axis' weights sum
  to one). Computed from the per-axis tables by broadcasting, so no
  output-sized constant enters the graph.
  """
  return pad * (row_outside + col_outside - row_outside * col_outside)


def _apply_dense(x: tf.Tensor, window: int, rows: window_taps.AxisTaps,
                 cols: window_taps.AxisTaps, pad: float) -> tf.Tensor:
  """Evaluates the separable interpolation at every output position.

  Rows first: for each row tap, gather the (spatial row, window row) pairs of
  every (y, v) and weight them; then the same for columns. Both gathers read
  small static index tables, so nothing larger than the output (plus one
  intermediate of about the same size) is built.

  Args:
    x: [N, H, W, S*S] input in the compute dtype.
    window: S.
    rows, cols: the taps of each axis, [Py, T, Kr] and [Px, T, Kc].
    pad: value read outside the input.

  Returns:
    [N, Py, Px, T*T] output in the compute dtype.
  """
  dtype = x.dtype
  _, height, width, _ = x.shape.as_list()
  batch = tf.shape(x)[0]
  out_height, t, _ = rows.weight.shape
  out_width = cols.weight.shape[0]

  # [N, H*S, W, S]: row index a*S + c addresses (spatial row a, window row c).
  x_rows = tf.reshape(
      tf.transpose(tf.reshape(x, [batch, height, width, window, window]),
                   [0, 1, 3, 2, 4]),
      [batch, height * window, width, window])
  by_rows = None
  for k in range(rows.num_taps):
    index = rows.spatial[..., k] * window + rows.window[..., k]  # [Py, T]
    weight = tf.constant(rows.weight[..., k][None, :, :, None, None], dtype)
    term = tf.gather(x_rows, index, axis=1) * weight  # [N, Py, T, W, S]
    by_rows = term if by_rows is None else by_rows + term

  # [N, Py, T, W*S]: column index b*S + d addresses (column b, window col d).
  by_rows = tf.reshape(by_rows, [batch, out_height, t, width * window])
  out = None
  for k in range(cols.num_taps):
    index = cols.spatial[..., k] * window + cols.window[..., k]  # [Px, T]
    weight = tf.constant(cols.weight[..., k][None, None, None], dtype)
    term = tf.gather(by_rows, index, axis=3) * weight  # [N, Py, T, Px, T]
    out = term if out is None else out + term
  out = tf.transpose(out, [0, 1, 3, 2, 4])  # [N, Py, Px, T, T]

  if pad != 0.0:
    out += _pad_term(pad,
                     tf.constant(rows.outside[:, None, :, None], dtype),
                     tf.constant(cols.outside[None, :, None, :], dtype))
  return tf.reshape(out, [batch, out_height, out_width, t * t])


def _dense_op(op_name: str, x, pad, make_taps, custom_op=None) -> tf.Tensor:
  """Shared driver of the dense ops: checks, evaluation, output dtype.

  Args:
    op_name: the public op's name, for error messages.
    x: the input as given by the caller.
    pad: value read outside the input.
    make_taps: `(size, S) -> AxisTaps` of one axis, for the pure-TF backend.
    custom_op: `(x, pad) -> y` on the compute-dtype input when the custom-op
      backend was chosen, else None.
  """
  pad = check_pad(pad, op_name)
  out_dtype = tf.convert_to_tensor(x).dtype
  x, window = _check_input(x, op_name)
  if custom_op is not None:
    return tf.cast(custom_op(x, pad), out_dtype)
  _, height, width, _ = x.shape.as_list()
  rows, cols = make_taps(height, window), make_taps(width, window)
  return tf.cast(_apply_dense(x, window, rows, cols, pad), out_dtype)


# ---------------------------------------------------------------------------
# Public ops.
# ---------------------------------------------------------------------------
def swap_align2nat(x, lam: int, pad: float = DEFAULT_PAD,
                   backend: str = "auto",
                   name: str | None = None) -> tf.Tensor:
  """Aligned -> natural representation with swapped units (docs/ops.md).

  Args:
    x: [N, H, W, S*S] aligned mask tensor whose (V, U) unit is `lam` times
      coarser than its (H, W) unit (e.g. a conv1x1 output on the P2 grid).
    lam: Python int >= 1, the window upscale factor (2**k at pyramid level k).
    pad: value read for taps outside the input.
    backend: "auto", "tf" or "custom" (see `backend.py`); use "tf" inside
      XLA-compiled functions.
    name: optional name scope.

  Returns:
    [N, ceil(H/lam), ceil(W/lam), (lam*S)**2] natural masks, channel
    `v*lam*S + u`; the output's (H, W) unit is lam times the input's and its
    (V, U) unit equals the input's (H, W) unit.
  """
  lam = check_lam(lam, "swap_align2nat")
  with tf.name_scope(name or "swap_align2nat"):
    custom_op = None
    if backend_lib.resolve(backend) == "custom":
      library = custom_op_library.load()
      custom_op = lambda x, pad: library.swap_align2_nat(x, lam=lam, pad=pad)
    return _dense_op(
        "swap_align2nat", x, pad,
        lambda size, window: _align2nat_taps(size, window, lam, stride=lam),
        custom_op)


def _lam_fraction(lam, op_name: str) -> tuple[int, int]:
  """(lam_num, lam_den): lam as a fraction in lowest terms, for the custom
  op's exact integer arithmetic (1.5 -> (3, 2))."""
  fraction = fractions.Fraction(lam).limit_denominator(1 << 16)
  if abs(float(fraction) - lam) > 1e-12 * lam:
    raise ValueError(f"{op_name}: the custom-op backend needs lam as a "
                     f"fraction with a denominator <= 65536, got {lam!r}.")
  return fraction.numerator, fraction.denominator


def up_align2nat(x, lam, interpolation: str = "bilinear",
                 pad: float = DEFAULT_PAD, backend: str = "auto",
                 name: str | None = None) -> tf.Tensor:
  """Aligned -> natural representation, upsampling windows by `lam`.

  Args:
    x: [N, H, W, S*S] aligned mask tensor; its (V, U) unit is lam times its
      (H, W) unit.
    lam: Python number >= 1, the window upscale factor; lam * S must be a
      whole number T (e.g. 1.5 with S = 10: 10 x 10 -> 15 x 15 windows).
    interpolation: "bilinear" (the aligned upscale of docs/ops.md) or
      "nearest" (window taps `floor(v/lam)`, the unaligned ablation).
    pad: value read for taps outside the input.
    backend: "auto", "tf" or "custom" (see `backend.py`); use "tf" inside
      XLA-compiled functions.
    name: optional name scope.

  Returns:
    [N, H, W, T*T] natural masks, one window per input position, channel
    `v*T + u`.
  """
  op_name = "up_align2nat"
  lam = check_lam(lam, op_name, integer=False)
  check_interpolation(interpolation, op_name)
  with tf.name_scope(name or op_name):
    custom_op = None
    if backend_lib.resolve(backend) == "custom":
      library = custom_op_library.load()
      lam_num, lam_den = _lam_fraction(lam, op_name)

      def custom_op(x, pad):
        output_window_side(lam, math.isqrt(x.shape[-1]), op_name)
        return library.up_align2_nat(
            x, lam_num=lam_num, lam_den=lam_den,
            interpolation=interpolation, pad=pad)

    return _dense_op(
        op_name, x, pad,
        lambda size, window: _align2nat_taps(
            size, window, _checked_lam(lam, window, op_name),
            stride=1, interpolation=interpolation),
        custom_op)


def align2nat(x, pad: float = DEFAULT_PAD, backend: str = "auto",
              name: str | None = None) -> tf.Tensor:
  """Aligned -> natural representation at the same scale: `up_align2nat(x, 1)`.

  For odd S this is the shift of the paper's eq. (1),
  `Y[y, x, v, u] = X[y + v - (S-1)/2, x + u - (S-1)/2, v, u]`.

  Args:
    x: [N, H, W, S*S] aligned mask tensor.
    pad: value read for taps outside the input.
    backend: "auto", "tf" or "custom", as for `up_align2nat`.
    name: optional name scope.

  Returns:
    [N, H, W, S*S] natural masks.
  """
  return up_align2nat(x, 1, pad=pad, backend=backend,
                      name=name or "align2nat")


def nat2align(x, pad: float = DEFAULT_PAD,
              name: str | None = None) -> tf.Tensor:
  """Natural -> aligned representation, the inverse shift of `align2nat`.

  `Xhat[y, x, v, u] = X[y - v + c, x - u + c, v, u]` with `c = (S-1)/2`.

  Args:
    x: [N, H, W, S*S] natural mask tensor with odd S.
    pad: value read for taps outside the input.
    name: optional name scope.

  Returns:
    [N, H, W, S*S] aligned masks.
  """
  with tf.name_scope(name or "nat2align"):
    channels = tf.convert_to_tensor(x).shape[-1]
    window = math.isqrt(channels) if channels else 0
    if window * window == channels and window % 2 == 0:
      raise ValueError(
          f"nat2align: the window side S must be odd (a window has a centre "
          f"pixel), got S={window}.")
    return _dense_op("nat2align", x, pad, _nat2align_taps)


def _gathered_axis_taps(taps: window_taps.StridedAxisTaps, positions,
                        stride: int, size, dtype: tf.DType,
                        index_dtype: tf.DType):
  """The taps of one axis at K run-time output positions.

  Args:
    taps: the axis' position-free tables (`window_taps.strided_axis_taps`),
      Kt tap slots.
    positions: [K] int32 output positions (y or x).
    stride: output window spacing in input cells (lam).
    size: the input's extent along the axis (H or W): int or scalar tensor.
    dtype: the compute dtype.
    index_dtype: int32 or int64, the dtype of the flat input offsets.

  Returns:
    spatial: [K, T, Kt] index_dtype spatial input index of each tap,
      clamped into the input (its weight is zero when clamped).
    window: [T, Kt] index_dtype window input index of each tap.
    weight: [K, T, Kt] dtype interpolation weight, zero outside the input.
    outside: [K, T] dtype summed weight of the taps outside the input.
  """
  size = tf.cast(size, index_dtype)
  base = tf.cast(positions, index_dtype)[:, None] * stride  # [K, 1]
  inside = lambda index: (index >= 0) & (index < size)
  spatial = base[:, :, None] + tf.constant(taps.spatial, index_dtype)
  weight = tf.where(inside(spatial), tf.constant(taps.weight, dtype),
                    tf.zeros([], dtype))
  # The outside sum depends on the position only through which of the low
  # and high spatial taps are inside: a lookup in its [T, 2, 2] table.
  low_inside = inside(base + tf.constant(taps.low, index_dtype))  # [K, T]
  high_inside = inside(base + tf.constant(taps.high, index_dtype))
  t = taps.low.shape[0]
  outside = tf.gather(
      tf.constant(taps.outside.reshape(-1), dtype),
      tf.constant(np.arange(t, dtype=np.int32) * 4) +
      tf.cast(low_inside, tf.int32) * 2 + tf.cast(high_inside, tf.int32))
  spatial = tf.minimum(tf.maximum(spatial, 0), size - 1)
  return spatial, tf.constant(taps.window, index_dtype), weight, outside


def swap_align2nat_gather(x, indices, lam: int, pad: float = DEFAULT_PAD,
                          backend: str = "auto",
                          name: str | None = None) -> tf.Tensor:
  """`swap_align2nat` evaluated at K selected output windows only.

  Costs O(K * (lam*S)**2) time and memory and never builds the dense output:
  each output pixel reads its taps straight from x through flat indices.
  H, W and the batch may be known only at run time (a graph traced for any
  image size); the channel count must be static.

  Args:
    x: [N, H, W, S*S] aligned mask tensor, as for `swap_align2nat`.
    indices: [K, 3] int32 (or int64) rows `(n, y, x)`, a batch index and a
      position on the output grid `[ceil(H/lam), ceil(W/lam)]`. Indices
      outside the batch or grid raise InvalidArgumentError (outside XLA, where
      the checks cannot run).
    lam: Python int >= 1, the window upscale factor.
    pad: value read for taps outside the input.
    backend: "auto", "tf" or "custom" (see `backend.py`); use "tf" inside
      XLA-compiled functions.
    name: optional name scope.

  Returns:
    [K, lam*S, lam*S] natural masks; row k equals
    `reshape(swap_align2nat(x, lam, pad)[n_k, y_k, x_k], [lam*S, lam*S])`.
  """
  op_name = "swap_align2nat_gather"
  lam = check_lam(lam, op_name)
  pad = check_pad(pad, op_name)
  with tf.name_scope(name or op_name):
    out_dtype = tf.convert_to_tensor(x).dtype
    x, window = _check_input(x, op_name, static_size=False)
    indices = check_gather_indices(indices, x, lam)
    if backend_lib.resolve(backend) == "custom":
      return tf.cast(custom_op_library.load().swap_align2_nat_gather(
          x, indices, lam=lam, pad=pad), out_dtype)
    return tf.cast(_gather(x, window, indices, lam,
                           _align2nat_coords(window, lam), pad), out_dtype)


def _gather(x: tf.Tensor, window: int, indices: tf.Tensor, stride: int,
            coords: tuple[np.ndarray, np.ndarray], pad: float) -> tf.Tensor:
  """The pure-TF gathered ops: the output windows at `indices` of the
  align2nat arithmetic whose per-axis coordinates are `coords`
  (`_align2nat_coords`: spatial offsets from `stride * y`, window
  coordinates).

  Args:
    x: [N, H, W, S*S] in the compute dtype; H and W may be run-time sizes.
    window: S.
    indices: [K, 3] int32 checked rows (n, y, x).
    stride: the output windows' spacing in input cells.
    coords: ([T] spatial offsets, [T] window coordinates), float64.
    pad: value read outside the input.

  Returns:
    [K, T, T] in the compute dtype.
  """
  dtype = x.dtype
  # The tables that do not depend on the position or the input's size are
  # static (both axes have the same); the rest is computed for the K
  # windows, so one graph serves every H and W, and static shapes use it
  # too (as fast as static [P, T, K] tables: one rule, one graph). Slots
  # that the static tables of a small input would drop (outside it at
  # every position) stay with weight zero and add x * 0: the sums are the
  # same, up to the sign of a sum that is zero (pad 0, every tap outside).
  taps = window_taps.strided_axis_taps(*coords, window)
  height, width = spatial_size(x)
  # Flat offset of x[n, a, b, c, d] = n*H*W*S*S + (a*W*S*S + c*S) +
  # (b*S*S + d): int32 where the whole input is known to fit, else int64
  # (a run-time size; about 3% slower forward, 30% backward on a CPU).
  static = [x.shape[0], height, width]
  small = (all(isinstance(v, int) for v in static) and
           math.prod(static) * window * window < 2**31)
  index_dtype = tf.int32 if small else tf.int64
  n, y, x_pos = tf.unstack(indices, axis=1)
  row_spatial, row_window, row_weight, row_outside = _gathered_axis_taps(
      taps, y, stride, height, dtype, index_dtype)  # [K, T, Kt] ...
  col_spatial, col_window, col_weight, col_outside = _gathered_axis_taps(
      taps, x_pos, stride, width, dtype, index_dtype)
  row_size = tf.cast(width, index_dtype) * (window * window)  # W*S*S
  row_offset = row_spatial * row_size + row_window * window
  col_offset = col_spatial * (window * window) + col_window
  base = tf.cast(n, index_dtype) * (tf.cast(height, index_dtype) * row_size)

  flat = tf.reshape(x, [-1])
  out = None
  for i in range(taps.num_taps):
    row = (base[:, None] + row_offset[..., i])[:, :, None]  # [K, T, 1]
    row_w = row_weight[:, :, None, i]
    for j in range(taps.num_taps):
      term = (tf.gather(flat, row + col_offset[:, None, :, j]) *
              (row_w * col_weight[:, None, :, j]))  # [K, T, T]
      out = term if out is None else out + term

  if pad != 0.0:
    out += _pad_term(pad, row_outside[:, :, None], col_outside[:, None, :])
  return out


def up_align2nat_gather(x, indices, lam, interpolation: str = "bilinear",
                        pad: float = DEFAULT_PAD, backend: str = "auto",
                        name: str | None = None) -> tf.Tensor:
  """`up_align2nat` evaluated at K selected windows only.

  Costs O(K * T**2) (T = lam * S) and never builds the dense output; H, W
  and the batch may be known only at run time, as for
  `swap_align2nat_gather`.

  Args:
    x: [N, H, W, S*S] aligned mask tensor, as for `up_align2nat`.
    indices: [K, 3] int32 (or int64) rows `(n, y, x)`, a batch index and a
      position of x's grid [H, W]; outside ones raise InvalidArgumentError
      (outside XLA).
    lam: Python number >= 1 with lam * S whole, as for `up_align2nat`.
    interpolation: "bilinear" or "nearest", as for `up_align2nat`.
    pad: value read for taps outside the input.
    backend: "auto", "tf" or "custom" (see `backend.py`); use "tf" inside
      XLA-compiled functions.
    name: optional name scope.

  Returns:
    [K, T, T] natural masks; row k equals
    `reshape(up_align2nat(x, lam, interpolation, pad)[n_k, y_k, x_k],
    [T, T])`.
  """
  op_name = "up_align2nat_gather"
  lam = check_lam(lam, op_name, integer=False)
  check_interpolation(interpolation, op_name)
  pad = check_pad(pad, op_name)
  with tf.name_scope(name or op_name):
    out_dtype = tf.convert_to_tensor(x).dtype
    x, window = _check_input(x, op_name, static_size=False)
    coords = _align2nat_coords(window, _checked_lam(lam, window, op_name),
                               interpolation)
    indices = check_gather_indices(indices, x, 1, op_name)
    if backend_lib.resolve(backend) == "custom":
      lam_num, lam_den = _lam_fraction(lam, op_name)
      return tf.cast(custom_op_library.load().up_align2_nat_gather(
          x, indices, lam_num=lam_num, lam_den=lam_den,
          interpolation=interpolation, pad=pad), out_dtype)
    return tf.cast(_gather(x, window, indices, 1, coords, pad), out_dtype)
