"""conv3x3 of a bilinearly upsampled tensor, computed on the coarse grid.

The bipyramid's fuse (docs/model.md) convolves every level's mask feature after
upsampling it by 2**k to the P2 grid. Channel mixing commutes with the
per-channel upsampling, so

    conv3x3(up(x))[p] = sum over taps (i, j) with p + (i-1, j-1) on the grid
                        of up(x @ K[i, j])[p + (i-1, j-1)]

and the 3x3 x C x F products run on x's own grid (scale**2 times fewer
positions); what is left on the fine grid is a bilinear resampling of the
nine products, one matrix product per axis with a [fine, 3 * coarse] tap
matrix. At the P2 grid of an 896x1408 input (128 channels, float32, two
cores) this is 1.15x faster than upsampling and convolving at scale 4,
2.3-3.7x at scales 8-32, and half as fast at scale 2, where the dense tap
matrices' zeros cost more than the convolution saved
(scripts/bench_bipyramid_fuse.py).
"""

import tensorflow as tf


def bilinear_tap_matrix(out_size, in_size, scale: int,
                        dtype: tf.DType) -> tf.Tensor:
  """Resampling weights of the three 3x3 taps along one axis.

  Args:
    out_size: fine length L (<= in_size * scale: the upsampled axis cropped).
    in_size: coarse length l.
    scale: integer upsampling factor.
    dtype: of the result.

  Returns:
    [L, 3 * l]: entry (q, t * l + r) is the weight of coarse position r in
    the bilinear upsampling (half-pixel centres, align_corners=False, edge
    values past the ends, as tf.image.resize) read at fine position
    q + t - 1; 0 where that position is outside [0, L) (the convolution's
    zero padding).
  """
  fine = tf.range(out_size, dtype=tf.float64)
  columns = []
  for tap in range(3):
    position = fine + (tap - 1)
    source = (position + 0.5) / scale - 0.5
    low = tf.floor(source)
    frac = source - low
    low = tf.clip_by_value(tf.cast(low, tf.int32), 0, in_size - 1)
    high = tf.clip_by_value(tf.cast(tf.math.ceil(source), tf.int32), 0,
                            in_size - 1)
    inside = tf.cast((position >= 0) & (position < tf.cast(out_size,
                                                           tf.float64)),
                     tf.float64)[:, None]
    # (Indicator matrices compared against a range, not tf.one_hot, which
    # tf2onnx 1.17 fails to convert with a run-time depth.)
    coarse = tf.range(in_size)[None, :]
    columns.append(inside * (
        tf.cast(low[:, None] == coarse, tf.float64) * (1.0 - frac)[:, None] +
        tf.cast(high[:, None] == coarse, tf.float64) * frac[:, None]))
  return tf.cast(tf.concat(columns, axis=1), dtype)


def upsampled_conv3x3(features: tf.Tensor, kernel: tf.Tensor, scale: int,
                      size) -> tf.Tensor:
  """conv3x3(upsample(features, scale)[:, :H, :W]), 'same' zero padding.

  Args:
    features: [N, h, w, C].
    kernel: [3, 3, C, F], as tf.nn.conv2d's.
    scale: integer factor >= 1 of the bilinear upsampling (half-pixel
      centres, as tf.image.resize).
    size: (H, W) of the result, at most (h * scale, w * scale): the
      upsampled tensor is cropped to it before the convolution.

  Returns:
    [N, H, W, F] in features' dtype; no bias, no activation.
  """
  if not isinstance(scale, int) or scale < 1:
    raise ValueError(f"upsampled_conv3x3: scale must be an integer >= 1, "
                     f"got {scale!r}.")
  features = tf.convert_to_tensor(features)
  kernel = tf.cast(kernel, features.dtype)
  if features.shape.rank != 4:
    raise ValueError(f"upsampled_conv3x3: features must have rank 4 "
                     f"[N, h, w, C], got shape {features.shape}.")
  if (kernel.shape.rank != 4 or kernel.shape[:2] != (3, 3) or
      kernel.shape[2] != features.shape[3]):
    raise ValueError(f"upsampled_conv3x3: kernel must have shape [3, 3, C, F] "
                     f"with C = {features.shape[3]}, got {kernel.shape}.")
  dims = tf.shape(features)
  n, h, w = dims[0], dims[1], dims[2]
  out_h, out_w = size[0], size[1]
  wanted = tuple(tf.get_static_value(v) for v in (out_h, out_w))
  available = tuple(None if v is None else v * scale
                    for v in features.shape[1:3])
  if None not in wanted + available:
    wanted = tuple(int(v) for v in wanted)
    if wanted[0] > available[0] or wanted[1] > available[1]:
      raise ValueError(f"upsampled_conv3x3: size {wanted} exceeds the "
                       f"upsampled features' {available}.")
  else:
    tf.debugging.assert_less_equal(
        tf.stack([out_h, out_w]), tf.stack([h * scale, w * scale]),
        message="upsampled_conv3x3: size exceeds the upsampled features")
  filters = kernel.shape[3]
  # x @ K[i, j] for the nine taps, on the coarse grid: [N, 3 (i), h, w,
  # 3 (j), F].
  products = tf.einsum("nhwc,ijcf->nihwjf", features, kernel)
  rows = tf.einsum("qk,nkm->nqm",
                   bilinear_tap_matrix(out_h, h, scale, features.dtype),
                   tf.reshape(products, [n, 3 * h, w * 3 * filters]))
  rows = tf.transpose(tf.reshape(rows, [n, out_h, w, 3, filters]),
                      [0, 1, 3, 2, 4])
  return tf.einsum("pk,nqkf->nqpf",
                   bilinear_tap_matrix(out_w, w, scale, features.dtype),
                   tf.reshape(rows, [n, out_h, 3 * w, filters]))
