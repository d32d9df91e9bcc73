"""Interpolation taps of the tensor-representation ops, one image axis at a time.

Every op of docs/ops.md reads, for an output element `(y, x, v, u)`, the
input at four fractional coordinates: a spatial and a window coordinate per axis
(`oy, ov` for rows, `ox, ou` for columns). Each fractional coordinate `o` has two
linear taps, `floor(o)` with weight `1 - frac(o)` and `ceil(o)` with weight
`frac(o)`, and a tap outside the tensor reads the constant `pad`. The row and
column coordinates are independent, so the 16 taps of the 4D interpolation are
the product of 4 (spatial, window) taps per axis.

This module turns the per-axis coordinates into static tables (numpy, float64,
computed once at trace time). The ops in `mask_representation.py` read the input with
them; keeping the expansion here means the tap rule exists once.
`axis_taps` tabulates every output position of an input of known size;
`strided_axis_taps` tabulates what does not depend on the position or the
size, for positions and inputs known only at run time (the gathered op).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class AxisTaps:
  """The (spatial, window) taps of one axis for every output position.

  P is the number of output positions along the axis, T the output window side
  and K <= 4 the number of tap slots that have a non-zero weight somewhere.

  Attributes:
    spatial: [P, T, K] int64, spatial input index of each tap, clamped into
      the input so it can always be read (its weight is zero when clamped).
    window: [P, T, K] int64, window input index of each tap, clamped likewise.
    weight: [P, T, K] float64, interpolation weight of the taps that read the
      input; zero for taps that fall outside it.
    outside: [P, T] float64, the summed weight of the taps that fall outside
      the input (spatially or in the window) and so read `pad`.
  """

  spatial: np.ndarray
  window: np.ndarray
  weight: np.ndarray
  outside: np.ndarray

  @property
  def num_taps(self) -> int:
    return self.weight.shape[-1]


def _linear_taps(coord: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
  """The two linear taps `(index, weight)` of a fractional coordinate."""
  low = np.floor(coord)
  frac = coord - low
  return [(low.astype(np.int64), 1.0 - frac),
          (np.ceil(coord).astype(np.int64), frac)]


def axis_taps(spatial_coord: np.ndarray, window_coord: np.ndarray,
              size: int, window: int) -> AxisTaps:
  """Expands the fractional coordinates of one axis into its taps.

  Args:
    spatial_coord: [P, T] float64 spatial coordinate (`oy` or `ox`), in input
      cells, of output window offset t at output position p.
    window_coord: [T] or [P, T] float64 window coordinate (`ov` or `ou`), in
      input mask pixels. An integral coordinate gives a single tap.
    size: the input's spatial extent along this axis (H or W).
    window: the input's window side S.

  Returns:
    The AxisTaps of the axis; tap slots whose weight is zero everywhere (the
    second tap of an integral coordinate) are dropped.
  """
  spatial_coord = np.asarray(spatial_coord, np.float64)
  window_coord = np.broadcast_to(
      np.asarray(window_coord, np.float64), spatial_coord.shape)
  spatial, window_idx, weight = [], [], []
  outside = np.zeros(spatial_coord.shape, np.float64)
  for s_idx, s_w in _linear_taps(spatial_coord):
    for w_idx, w_w in _linear_taps(window_coord):
      inside = ((s_idx >= 0) & (s_idx < size) &
                (w_idx >= 0) & (w_idx < window))
      tap_weight = s_w * w_w
      outside += np.where(inside, 0.0, tap_weight)
      spatial.append(np.clip(s_idx, 0, size - 1))
      window_idx.append(np.clip(w_idx, 0, window - 1))
      weight.append(np.where(inside, tap_weight, 0.0))
  keep = [k for k, w in enumerate(weight) if np.any(w != 0.0)]
  if not keep:  # Every tap reads pad (e.g. an input smaller than one window).
    keep = [0]
  return AxisTaps(
      spatial=np.stack([spatial[k] for k in keep], axis=-1),
      window=np.stack([window_idx[k] for k in keep], axis=-1),
      weight=np.stack([weight[k] for k in keep], axis=-1),
      outside=outside)


@dataclasses.dataclass(frozen=True)
class StridedAxisTaps:
  """The taps of one axis at output positions known only at run time.

  For the spatial coordinates `stride * p + offset[t]` of output position p
  (an integer stride), the fractional part of the coordinate, and so every
  weight, does not depend on p: the two spatial taps are
  `stride * p + low[t]` and `stride * p + high[t]`. What depends on p and on
  the input's extent is only whether each of them lies inside the input;
  these tables hold the rest, with `outside` for each of the four cases.

  T is the output window side and K <= 4 the number of tap slots that have a
  non-zero weight for some t when both spatial taps are inside (the slots
  `axis_taps` drops for every input size are dropped here as well).

  Attributes:
    low: [T] int64, `floor(offset)`: the low spatial tap at p = 0.
    high: [T] int64, `ceil(offset)`: the high spatial tap at p = 0.
    spatial: [T, K] int64, each slot's spatial index at p = 0 (its low or
      high tap), unclamped.
    window: [T, K] int64, window index of each slot, clamped into the window.
    weight: [T, K] float64, the slot's weight when its spatial tap lies
      inside the input (zero when its window tap does not).
    outside: [T, 2, 2] float64, the summed weight of the taps outside the
      input, indexed [t, low tap inside, high tap inside] (where low ==
      high, only [t, 0, 0] and [t, 1, 1] can be read).
  """

  low: np.ndarray
  high: np.ndarray
  spatial: np.ndarray
  window: np.ndarray
  weight: np.ndarray
  outside: np.ndarray

  @property
  def num_taps(self) -> int:
    return self.weight.shape[-1]


# Where a coordinate's low spatial tap is put on a 2-cell axis so that its
# taps are inside or not as indexed [low tap inside, high tap inside]: at -2
# neither is, at -1 only the high one (at 0), at 1 only the low one (the high
# one is at 2), at 0 both.
_SHIFTS = np.array([[-2.0, -1.0], [1.0, 0.0]])


def strided_axis_taps(offset_coord: np.ndarray, window_coord: np.ndarray,
                      window: int) -> StridedAxisTaps:
  """The position-free taps of spatial coordinates `stride * p + offset`.

  Computed by `axis_taps` itself on a 2-cell axis whose coordinates have the
  offsets' fractional parts, shifted so that the spatial taps fall inside it
  or not in each of the four ways (`_SHIFTS`): the weights, window taps and
  outside sums are then those `axis_taps` gives at any position and input
  size, bit for bit, since they depend on the spatial coordinate only
  through its fractional part and the inside-ness of its taps.

  Args:
    offset_coord: [T] float64 spatial coordinate at p = 0, in input cells;
      its fractional part must survive adding a small integer exactly (true
      of the representation ops' multiples of 1/2).
    window_coord: [T] float64 window coordinate, as for `axis_taps`.
    window: the input's window side S.

  Returns:
    The StridedAxisTaps of the axis.
  """
  offset = np.asarray(offset_coord, np.float64)
  low = np.floor(offset)
  frac = offset - low
  coords = frac + _SHIFTS[..., None]  # [2, 2, T]
  if np.any(coords - _SHIFTS[..., None] != frac) or np.any(
      np.floor(coords) != _SHIFTS[..., None]):
    raise ValueError("strided_axis_taps: offsets whose fractional part is "
                     "not exact under a small integer shift.")
  taps = axis_taps(coords.reshape(4, -1), window_coord, size=2, window=window)
  both_inside = 3  # Row [1, 1]: the low tap at cell 0, the high one at 0 or 1.
  low = low.astype(np.int64)
  return StridedAxisTaps(
      low=low, high=np.ceil(offset).astype(np.int64),
      spatial=low[:, None] + taps.spatial[both_inside],
      window=taps.window[both_inside],
      weight=taps.weight[both_inside],
      outside=np.moveaxis(taps.outside.reshape(2, 2, -1), -1, 0))
