"""numpy float64 references of the head's dense layers (docs/model.md): 'same'
3x3 convolution and bilinear upsampling by an integer factor, NHWC."""

import numpy as np


def conv3x3(x, kernel, bias=0.0):
  """'same' (zero-padded) 3x3 convolution: kernel [3, 3, C, F]."""
  _, height, width, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],)) + bias
  for i in range(3):
    for j in range(3):
      out += padded[:, i:i + height, j:j + width, :] @ kernel[i, j]
  return out


def layer_conv3x3(x, layer):
  """conv3x3 (with bias) of x by a built Keras 3x3 conv layer's weights,
  in float64; the layer's activation is not applied."""
  kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
  return conv3x3(x, kernel, bias)


def upsample_bilinear(x, scale):
  """Bilinear resize by an integer factor, align_corners=False (half-pixel
  centres), reading the edge pixel past the borders."""
  def axis_taps(size):
    source = (np.arange(size * scale) + 0.5) / scale - 0.5
    low = np.floor(source)
    frac = source - low
    low = low.astype(int)
    return (np.clip(low, 0, size - 1), np.clip(low + 1, 0, size - 1), frac)
  y0, y1, fy = axis_taps(x.shape[1])
  x0, x1, fx = axis_taps(x.shape[2])
  rows = (x[:, y0] * (1 - fy)[None, :, None, None] +
          x[:, y1] * fy[None, :, None, None])
  return (rows[:, :, x0] * (1 - fx)[None, None, :, None] +
          rows[:, :, x1] * fx[None, None, :, None])
