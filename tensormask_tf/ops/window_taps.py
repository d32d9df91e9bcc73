"""Interpolation taps of the tensor-representation ops, one image axis at a time.

Every op of SPEC.md section 2 reads, for an output element `(y, x, v, u)`, the
input at four fractional coordinates: a spatial and a window coordinate per axis
(`oy, ov` for rows, `ox, ou` for columns). Each fractional coordinate `o` has two
linear taps, `floor(o)` with weight `1 - frac(o)` and `ceil(o)` with weight
`frac(o)`, and a tap outside the tensor reads the constant `pad`. The row and
column coordinates are independent, so the 16 taps of the 4D interpolation are
the product of 4 (spatial, window) taps per axis.

This module turns the per-axis coordinates into static tables (numpy, float64,
computed once at trace time). The ops in `mask_representation.py` read the input with
them; keeping the expansion here means the tap rule exists once.
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
