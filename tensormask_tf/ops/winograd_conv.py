"""3x3 convolution by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray).

Each 4x4 output tile of a stride-1 3x3 convolution is

    Y = A^T [ (G K G^T) * (B^T D B) ] A

for the 6x6 input tile D around it. The channel mixing, 3x3 x C x F
multiply-adds per output pixel done directly, becomes 36 [tiles, C] x [C, F]
matrix products per 16 output pixels, 2.25 x C x F per pixel: 4x fewer. What
it costs instead is memory traffic: the input is read into 36 overlapping
tile planes (2.25x its size), transformed, and the 36 product planes are
transformed back. So it pays where the channel counts and the grid are
large: the class tower's 256-channel layers on the P2 grid of an 896x1408
input run 2.2-2.4x faster on the CPU, the 128-channel ones 1.1-1.2x, the
backbone's 512-channel ones on its 28x44 C5 grid 1.9x; layers on grids of
~500 pixels or fewer, or with fewer than 128 channels in or out, run slower
or no faster (scripts/bench_winograd_conv.py; `winograd_pays_off` holds the
rule).

Pure TensorFlow (a gather and four matrix products), so export, XLA and
every device run it. The transforms multiply by up to 8 and divide by 24:
in float32 the result differs from the direct convolution by ~1e-5 of the
output's largest value (the direct one's own rounding is ~1e-6); float16
and bfloat16 are refused, their rounding would be amplified.
"""

import numpy as np
import tensorflow as tf

# F(4x4, 3x3) with interpolation points 0, +-1, +-2 and infinity.
_B_T = np.array([[4, 0, -5, 0, 1, 0],
                 [0, -4, -4, 1, 1, 0],
                 [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0],
                 [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]], np.float64)
_A_T = np.array([[1, 1, 1, 1, 1, 0],
                 [0, 1, -1, 2, -2, 0],
                 [0, 1, 1, 4, 4, 0],
                 [0, 1, -1, 8, -8, 1]], np.float64)
_TILE = 4  # Output tile side; input tiles are _TILE + 2 wide.
_SUPPORTED_DTYPES = (tf.float32, tf.float64)

# Where the Winograd form beat tf.nn.conv2d (two cores, float32;
# scripts/bench_winograd_conv.py and grid sweeps with the two forms called
# in turn): grids of at least this many pixels, with both channel counts at
# least _MIN_CHANNELS. For every 128..512-channel shape of the head, the
# release's backbone and its FPN, the P5 grids of COCO-sized inputs (25x34
# .. 28x44, 850-1232 pixels) won 1.15-1.9x, 32x32 1.13-1.9x (0.86-1.62x in
# an earlier run), 576-640 pixels 1.06-1.65x; 500 pixels went 0.77-1.34x and
# ~300 pixels 0.74-1.35x, so they stay direct. 64 -> 64 (the backbone's
# res2) lost on the P2 grid of 896x1408 (224x352: 0.86x) and on grids of
# 1232 pixels or fewer (0.76-0.90x), 128 -> 8 everywhere (up to 2.4x).
_MIN_PIXELS = 800
_MIN_CHANNELS = 128


def winograd_pays_off(height, width, in_channels, out_channels) -> bool:
  """Whether `winograd_conv3x3` is expected to beat tf.nn.conv2d on the CPU.

  Args:
    height, width: the grid (Python ints or None when unknown).
    in_channels, out_channels: C and F.

  Returns:
    False when the grid is unknown: the rule is a static choice.
  """
  if height is None or width is None:
    return False
  return (height * width >= _MIN_PIXELS
          and min(in_channels, out_channels) >= _MIN_CHANNELS)


def _transformed_kernel(kernel: tf.Tensor) -> tf.Tensor:
  """[3, 3, C, F] -> [36, C, F]: G K G^T per (C, F), rows (a, b) row-major."""
  _, _, in_channels, out_channels = kernel.shape
  g = tf.constant(np.kron(_G, _G), kernel.dtype)  # [(a, b), (i, j)]
  return tf.reshape(tf.matmul(g, tf.reshape(kernel, [9, -1])),
                    [36, in_channels, out_channels])


def winograd_conv3x3(inputs: tf.Tensor, kernel: tf.Tensor,
                     padding: str = "SAME") -> tf.Tensor:
  """tf.nn.conv2d(inputs, kernel, 1, padding) by Winograd F(4x4, 3x3).

  Args:
    inputs: [N, H, W, C] float32 or float64 (H, W may be dynamic).
    kernel: [3, 3, C, F], C and F static; cast to the inputs' dtype.
    padding: "SAME" (zero padding 1, an [N, H, W, F] output) or "VALID"
      (none, [N, H - 2, W - 2, F]: for inputs padded already, as the
      release's backbone and FPN pad theirs).

  Returns:
    The stride-1 cross-correlation as tf.nn.conv2d computes it (no bias, no
    activation).

  Raises:
    ValueError: on inputs that are not [N, H, W, C] float32 / float64, a
      kernel that is not [3, 3, C, F] with the inputs' C, another padding,
      or a static grid smaller than 3x3 with "VALID".
  """
  inputs = tf.convert_to_tensor(inputs)
  kernel = tf.convert_to_tensor(kernel)
  if inputs.shape.rank != 4:
    raise ValueError("winograd_conv3x3: inputs must be [N, H, W, C], got "
                     f"shape {inputs.shape}.")
  if (kernel.shape.rank != 4 or tuple(kernel.shape[:2]) != (3, 3)
      or kernel.shape[2] != inputs.shape[-1] or kernel.shape[3] is None):
    raise ValueError("winograd_conv3x3: kernel must be [3, 3, C, F] with the "
                     f"inputs' C = {inputs.shape[-1]}, got shape "
                     f"{kernel.shape}.")
  if inputs.dtype not in _SUPPORTED_DTYPES:
    raise ValueError("winograd_conv3x3: inputs must be float32 or float64 "
                     "(the transforms amplify rounding), got "
                     f"{inputs.dtype.name}.")
  padding = padding.upper() if isinstance(padding, str) else padding
  if padding not in ("SAME", "VALID"):
    raise ValueError("winograd_conv3x3: padding must be 'SAME' or 'VALID', "
                     f"got {padding!r}.")
  # Zero rows / columns before the input's first, 1 for "SAME".
  before = 1 if padding == "SAME" else 0
  static_grid = inputs.shape[1:3].as_list()
  if not before and any(v is not None and v < 3 for v in static_grid):
    raise ValueError("winograd_conv3x3: a 'VALID' convolution needs a grid "
                     f"of at least 3x3, got shape {inputs.shape}.")
  # The output's grid, statically where known.
  out_grid = [None if v is None else v + 2 * before - 2 for v in static_grid]
  kernel = tf.cast(kernel, inputs.dtype)
  channels, filters = kernel.shape[2], kernel.shape[3]
  shape = tf.shape(inputs)
  batch = shape[0]
  height, width = shape[1] + 2 * before - 2, shape[2] + 2 * before - 2
  tiles_y = (height + _TILE - 1) // _TILE
  tiles_x = (width + _TILE - 1) // _TILE
  # `before` zeros, and enough after for whole 6-wide tiles: no copy at all
  # for a "VALID" output of whole tiles (known statically).
  whole_tiles = all(v is not None and v % _TILE == 0 for v in out_grid)
  if before or not whole_tiles:
    padded = tf.pad(inputs, [
        [0, 0], [before, _TILE * tiles_y + 2 - before - shape[1]],
        [before, _TILE * tiles_x + 2 - before - shape[2]], [0, 0]])
  else:
    padded = inputs
  # The 36 tile planes D[i, j] = padded[n, 4 t + i, 4 u + j]:
  # [6, 6, N, tiles_y, tiles_x, C], gathered in one pass.
  offsets = tf.range(_TILE + 2)
  n = tf.range(batch)[None, None, :, None, None]
  rows = (_TILE * tf.range(tiles_y)[None, None, None, :, None]
          + offsets[:, None, None, None, None])
  cols = (_TILE * tf.range(tiles_x)[None, None, None, None, :]
          + offsets[None, :, None, None, None])
  index_shape = [_TILE + 2, _TILE + 2, batch, tiles_y, tiles_x]
  indices = tf.stack([tf.broadcast_to(n, index_shape),
                      tf.broadcast_to(rows, index_shape),
                      tf.broadcast_to(cols, index_shape)], axis=-1)
  planes = tf.gather_nd(padded, indices)
  # B^T D B for every tile at once: the 2-D transform as one [36, 36]
  # (Kronecker) matrix product. Its zeros cost less than the transpose or
  # batched product that a separable 6x6 form needs between its two axes.
  b = tf.constant(np.kron(_B_T, _B_T), inputs.dtype)
  transformed = tf.matmul(b, tf.reshape(planes, [36, -1]))
  num_tiles = batch * tiles_y * tiles_x
  products = tf.matmul(tf.reshape(transformed, [36, num_tiles, channels]),
                       _transformed_kernel(kernel))  # [36, tiles, F]
  a = tf.constant(np.kron(_A_T, _A_T), inputs.dtype)  # [(p, q), (a, b)]
  outputs = tf.matmul(a, tf.reshape(products, [36, -1]))
  outputs = tf.reshape(outputs,
                       [_TILE, _TILE, batch, tiles_y, tiles_x, filters])
  outputs = tf.transpose(outputs, [2, 3, 0, 4, 1, 5])
  outputs = tf.reshape(outputs, [batch, _TILE * tiles_y, _TILE * tiles_x,
                                 filters])
  outputs = outputs[:, :height, :width, :]
  outputs.set_shape([inputs.shape[0], *out_grid, filters])
  return outputs
