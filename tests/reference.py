"""Independent numpy float64 reference of the representation ops (docs/ops.md).

Written from the formulas, not from the TensorFlow code: every output element
evaluates its four fractional coordinates and sums the 16 tap combinations,
reading `pad` for any tap outside the tensor. Vectorised over output elements
with numpy broadcasting; `swap_align2nat_loops` is the same formula as plain
Python loops, used to check this file itself on tiny inputs.
"""

import math

import numpy as np


def _taps(coord):
  """The two taps of a fractional coordinate: (floor, 1-frac), (ceil, frac)."""
  low = np.floor(coord)
  frac = coord - low
  return [(low.astype(np.int64), 1.0 - frac),
          (np.ceil(coord).astype(np.int64), frac)]


def _read(x, n, a, b, c, d, pad):
  """x[n, a, b, c*S + d], or pad where any index is outside the tensor."""
  _, height, width, channels = x.shape
  s = math.isqrt(channels)
  inside = ((a >= 0) & (a < height) & (b >= 0) & (b < width) &
            (c >= 0) & (c < s) & (d >= 0) & (d < s))
  values = x[n, np.clip(a, 0, height - 1), np.clip(b, 0, width - 1),
             np.clip(c, 0, s - 1) * s + np.clip(d, 0, s - 1)]
  return np.where(inside, values, pad)


def _interpolate(x, n, oy, ox, ov, ou, pad):
  out = 0.0
  for a, wa in _taps(oy):
    for b, wb in _taps(ox):
      for c, wc in _taps(ov):
        for d, wd in _taps(ou):
          out = out + wa * wb * wc * wd * _read(x, n, a, b, c, d, pad)
  return out


def _grid(x, lam, out_h, out_w):
  """Broadcastable index arrays n, y, x, v, u of an [N, P, Q, T, T] output."""
  t = round(lam * math.isqrt(x.shape[-1]))  # lam may be 1.5 (S = 10: 15)
  n = np.arange(x.shape[0]).reshape(-1, 1, 1, 1, 1)
  y = np.arange(out_h, dtype=np.float64).reshape(1, -1, 1, 1, 1)
  xx = np.arange(out_w, dtype=np.float64).reshape(1, 1, -1, 1, 1)
  v = np.arange(t, dtype=np.float64).reshape(1, 1, 1, -1, 1)
  u = np.arange(t, dtype=np.float64).reshape(1, 1, 1, 1, -1)
  return n, y, xx, v, u, t


def swap_align2nat(x, lam, pad=-6.0):
  """[N, H, W, S*S] -> [N, ceil(H/lam), ceil(W/lam), (lam*S)**2], float64."""
  x = np.asarray(x, np.float64)
  out_h, out_w = -(-x.shape[1] // lam), -(-x.shape[2] // lam)
  n, y, xx, v, u, t = _grid(x, lam, out_h, out_w)
  oy = lam * y + v - t / 2 + 0.5
  ox = lam * xx + u - t / 2 + 0.5
  ov = (v + 0.5) / lam - 0.5
  ou = (u + 0.5) / lam - 0.5
  out = _interpolate(x, n, oy, ox, ov, ou, pad)
  return out.reshape(x.shape[0], out_h, out_w, t * t)


def up_align2nat(x, lam, interpolation="bilinear", pad=-6.0):
  """[N, H, W, S*S] -> [N, H, W, (lam*S)**2], float64."""
  x = np.asarray(x, np.float64)
  n, y, xx, v, u, t = _grid(x, lam, x.shape[1], x.shape[2])
  oy = y + v - t / 2 + 0.5
  ox = xx + u - t / 2 + 0.5
  if interpolation == "nearest":
    ov, ou = np.floor(v / lam), np.floor(u / lam)
  else:
    ov, ou = (v + 0.5) / lam - 0.5, (u + 0.5) / lam - 0.5
  out = _interpolate(x, n, oy, ox, ov, ou, pad)
  return out.reshape(x.shape[0], x.shape[1], x.shape[2], t * t)


def nat2align(x, pad=-6.0):
  """Xhat[y, x, v, u] = X[y - v + c, x - u + c, v, u], c = (S-1)/2, float64."""
  x = np.asarray(x, np.float64)
  n, y, xx, v, u, s = _grid(x, 1, x.shape[1], x.shape[2])
  c = (s - 1) // 2
  a = (y - v + c).astype(np.int64)
  b = (xx - u + c).astype(np.int64)
  out = _read(x, n, a, b, v.astype(np.int64), u.astype(np.int64), pad)
  return out.reshape(x.shape)


def swap_align2nat_loops(x, lam, pad=-6.0):
  """The swap_align2nat formula as scalar loops (slow; tiny inputs only)."""
  x = np.asarray(x, np.float64)
  batch, height, width, channels = x.shape
  s = math.isqrt(channels)
  t = lam * s
  out_h, out_w = -(-height // lam), -(-width // lam)
  out = np.zeros((batch, out_h, out_w, t, t))

  def taps(o):
    f = math.floor(o)
    return [(f, 1.0 - (o - f)), (math.ceil(o), o - f)]

  def read(n, a, b, c, d):
    if 0 <= a < height and 0 <= b < width and 0 <= c < s and 0 <= d < s:
      return x[n, a, b, c * s + d]
    return pad

  for n in range(batch):
    for y in range(out_h):
      for xx in range(out_w):
        for v in range(t):
          for u in range(t):
            total = 0.0
            for a, wa in taps(lam * y + v - t / 2 + 0.5):
              for b, wb in taps(lam * xx + u - t / 2 + 0.5):
                for c, wc in taps((v + 0.5) / lam - 0.5):
                  for d, wd in taps((u + 0.5) / lam - 0.5):
                    total += wa * wb * wc * wd * read(n, a, b, c, d)
            out[n, y, xx, v, u] = total
  return out.reshape(batch, out_h, out_w, t * t)


def jacobian(fn, shape):
  """[out, in] Jacobian of an affine numpy function of an array of `shape`:
  column i is fn(e_i) - fn(0) (the layout of tf.test.compute_gradient)."""
  size = int(np.prod(shape))
  base = np.asarray(fn(np.zeros(shape))).ravel()
  columns = []
  for i in range(size):
    e = np.zeros(size)
    e[i] = 1.0
    columns.append(np.asarray(fn(e.reshape(shape))).ravel() - base)
  return np.stack(columns, axis=1)
