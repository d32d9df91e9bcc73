"""Antialiased bilinear resizing made of standard ops.

`antialiased_resize(images, size)` computes what
`tf.image.resize(images, size, method="bilinear", antialias=True)` computes
(the resampling of PIL's bilinear filter, which the release's resize uses),
to float32 rounding. TensorFlow implements that resize as one op,
`ScaleAndTranslate`, which ONNX has no equivalent of: ONNX's `Resize` with
`antialias=1` weights the taps at the image's border differently (measured
with onnxruntime 1.32: up to 16 levels off on a [0, 255] image's edge rows).
Written with gathers, multiplies and a loop, the same graph runs in
TensorFlow, exports to ONNX and gives the same numbers in onnxruntime.

The rule, along each axis (rows first, then columns, as TensorFlow's
kernel): output pixel i of an input of n pixels resized to m samples the
input at `c = (i + 0.5) * n / m` (in input pixels, pixel j covering
[j, j + 1)). Its taps are the input pixels j whose centre j + 0.5 lies
within `k` of c, `k = max(n / m, 1)` (the triangle filter widens with the
shrink factor, which is the antialiasing), weighted by
`max(0, 1 - |j + 0.5 - c| / k)` and normalized to sum to one over the taps
inside the image.
"""

import tensorflow as tf

# TensorFlow's kernel leaves a pixel whose weights sum to less than this at
# zero (no tap inside the image).
_MIN_WEIGHT_SUM = 1000.0 * 1.17549435e-38  # 1000 x the smallest float32.


def _axis_taps(out_size, in_size, span: int | None = None
               ) -> tuple[tf.Tensor, tf.Tensor]:
  """(sources [m, span] int32, weights [m, span] float32) of one axis.

  Row i lists the input pixels output pixel i reads (clamped into the
  input where past its last tap, with weight zero) and their normalized
  weights; span = min(2 ceil(k) + 1, n), the most taps any pixel has, or
  the given static span when it is larger (its extra taps weigh zero).
  """
  in_f = tf.cast(in_size, tf.float32)
  # float32 where TensorFlow's kernel takes float32 (its scale argument and
  # the sample positions), the inverse in float64 as it computes it.
  scale = tf.cast(out_size, tf.float32) / in_f
  inv_scale = tf.cast(1.0 / tf.cast(scale, tf.float64), tf.float32)
  kernel_scale = tf.maximum(inv_scale, 1.0)
  if span is None:
    span = tf.minimum(
        2 * tf.cast(tf.math.ceil(kernel_scale), tf.int32) + 1, in_size)
  centre = (tf.cast(tf.range(out_size), tf.float32) + 0.5) * inv_scale
  first = tf.clip_by_value(
      tf.cast(tf.math.ceil(centre - kernel_scale - 0.5), tf.int32), 0,
      in_size - 1)
  last = tf.clip_by_value(
      tf.cast(tf.math.floor(centre + kernel_scale - 0.5), tf.int32), 0,
      in_size - 1)
  sources = first[:, None] + tf.range(span)[None, :]  # [m, span]
  distance = (tf.cast(sources, tf.float32) + 0.5 - centre[:, None]) * (
      1.0 / kernel_scale)
  weights = tf.where(sources <= last[:, None],
                     tf.maximum(0.0, 1.0 - tf.abs(distance)), 0.0)
  total = tf.reduce_sum(weights, axis=1, keepdims=True)
  weights = tf.where(total >= _MIN_WEIGHT_SUM, weights * (1.0 / total), 0.0)
  return tf.minimum(sources, in_size - 1), weights


def _resize_axis(images: tf.Tensor, out_size, axis: int) -> tf.Tensor:
  """images [B, H, W, C] float32 resized along axis 1 (rows) or 2
  (columns) to out_size.

  A sum over the taps, each a gather of the whole output and a
  multiply-add, not one gather of all taps: the span grows with the
  shrink factor (11 taps from a 24 MP photo to 800 px) and gathering them
  at once would hold span times the output. With static sizes (masks
  resampled to a fixed side) the sum is unrolled over a static bound of
  the span; else it is a loop (an ONNX Loop once exported).
  """
  in_size = images.shape[axis]
  span = None
  if isinstance(in_size, int) and isinstance(out_size, int):
    # At least the kernel's span min(2 ceil(k) + 1, n) whatever the float32
    # rounding of k = n / m.
    span = min(2 * (-(-in_size // out_size)) + 3, in_size)
  else:
    in_size = tf.shape(images)[axis]
  sources, weights = _axis_taps(out_size, in_size, span)
  # Broadcast each output pixel's weight over the axes after it.
  weight_shape = [-1, 1, 1] if axis == 1 else [-1, 1]

  def tap_term(tap):
    return tf.gather(images, sources[:, tap], axis=axis) * tf.reshape(
        weights[:, tap], weight_shape)

  if span is not None:
    resized = tap_term(0)
    for tap in range(1, span):
      resized += tap_term(tap)
    return resized
  _, resized = tf.while_loop(
      lambda tap, _: tap < tf.shape(weights)[1],
      lambda tap, total: (tap + 1, total + tap_term(tap)),
      (tf.constant(1), tap_term(0)))
  return resized


def antialiased_resize(images, size) -> tf.Tensor:
  """`tf.image.resize(images, size, "bilinear", antialias=True)` in
  standard ops (module docstring).

  Args:
    images: [B, H, W, C] or [H, W, C] images of any real dtype, H, W >= 1.
    size: (height, width) >= 1, Python ints or an int32 tensor [2].

  Returns:
    float32 [B, height, width, C] (or [height, width, C]).
  """
  images = tf.convert_to_tensor(images)
  single = images.shape.rank == 3
  if single:
    images = images[None]
  if not (isinstance(size, (tuple, list))
          and all(isinstance(v, int) for v in size)):
    size = tf.unstack(tf.convert_to_tensor(size, tf.int32), num=2)
  resized = _resize_axis(tf.cast(images, tf.float32), size[0], axis=1)
  resized = _resize_axis(resized, size[1], axis=2)
  return resized[0] if single else resized
