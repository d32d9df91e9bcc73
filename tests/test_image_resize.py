"""image_resize.antialiased_resize against TensorFlow's own antialiased
resize (its ScaleAndTranslate kernel) and a float64 numpy reference of the
filter written from its definition."""

import numpy as np
import pytest
import tensorflow as tf

from tensormask_tf.ops import image_resize


def _numpy_resize_axis(x: np.ndarray, out_size: int, axis: int) -> np.ndarray:
  """Each output pixel i samples c = (i + 0.5) n / m; input pixels j with
  |j + 0.5 - c| < k, k = max(n / m, 1), weighted by the triangle
  1 - |j + 0.5 - c| / k, normalized over the image. In float64, except
  that c and n / m are rounded as TensorFlow's kernel rounds them (float32
  scale m / n, its inverse, float32 positions): positions off by 1e-4
  pixel at i ~ 1000 move the result by 1e-4 of the values."""
  n = x.shape[axis]
  inv_scale = np.float32(1.0 / np.float64(np.float32(out_size) / np.float32(n)))
  k = max(float(inv_scale), 1.0)
  rows = []
  for i in range(out_size):
    c = float(np.float32(np.float32(i + 0.5) * inv_scale))
    j = np.arange(n)
    w = np.maximum(0.0, 1.0 - np.abs(j + 0.5 - c) / k)
    rows.append(w / w.sum())
  matrix = np.stack(rows)  # [m, n]
  return np.moveaxis(np.tensordot(matrix, np.moveaxis(x, axis, 0), 1), 0,
                     axis)


def _numpy_resize(x, size):
  x = np.asarray(x, np.float64)
  return _numpy_resize_axis(_numpy_resize_axis(x, size[0], 1), size[1], 2)


CASES = [
    ((256, 384), (800, 1200)),   # the release's images up to COCO's size
    ((480, 640), (800, 1067)),   # a COCO image for training
    ((900, 1200), (600, 800)),   # shrinking by 1.5
    ((1500, 2000), (30, 40)),    # shrinking by 50: 101 taps
    ((15, 15), (28, 28)),        # a mask resampled up
    ((480, 480), (28, 28)),      # a P7 mask resampled down
    ((100, 73), (37, 200)),      # one axis up, one down
    ((64, 96), (64, 96)),        # the same size
    ((1, 5), (3, 2)),            # one row
]


@pytest.mark.parametrize("in_size,out_size", CASES)
def test_equals_tensorflow_and_the_definition(in_size, out_size):
  rng = np.random.default_rng(sum(in_size) + sum(out_size))
  images = rng.uniform(-128, 128, (2, *in_size, 3)).astype(np.float32)
  got = image_resize.antialiased_resize(images, out_size).numpy()
  expected = tf.image.resize(images, out_size, method="bilinear",
                             antialias=True).numpy()
  assert got.shape == (2, *out_size, 3) and got.dtype == np.float32
  # float32 rounding of values up to 128: a few ulps.
  np.testing.assert_allclose(got, expected, rtol=0, atol=128 * 4e-7)
  np.testing.assert_allclose(got, _numpy_resize(images, out_size), rtol=0,
                             atol=128 * 4e-7)


def test_single_image_uint8_and_run_time_sizes():
  image = np.random.default_rng(3).integers(0, 256, (37, 50, 3), np.uint8)

  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                                tf.TensorSpec([2], tf.int32)])
  def resize(image, size):
    return image_resize.antialiased_resize(image, size)

  for size in ((20, 27), (74, 100)):
    got = resize(image, tf.constant(size)).numpy()
    np.testing.assert_allclose(
        got, _numpy_resize(image[None], size)[0], rtol=0, atol=255 * 4e-7)
