"""ops.upsampled_conv3x3 (the bipyramid's fuse on a level's own grid) against
a numpy float64 reference of upsampling then convolving, its gradients as
adjoints, XLA, dynamic shapes and errors."""

import numpy as np
import pytest
import tensorflow as tf

from tensormask_tf import ops
from tests import conv_reference

# scale, coarse (h, w), fine size (H, W) <= (h, w) * scale.
CASES = [(1, (5, 7), (5, 7)), (2, (5, 7), (9, 14)), (3, (4, 3), (12, 7)),
         (4, (3, 5), (12, 17)), (4, (6, 4), (24, 16)), (8, (2, 3), (13, 24)),
         (32, (1, 2), (30, 64))]


def _inputs(h, w, seed=0):
  rng = np.random.RandomState(seed)
  return rng.normal(size=(2, h, w, 6)), rng.normal(size=(3, 3, 6, 5))


def _reference(x, kernel, scale, size):
  up = conv_reference.upsample_bilinear(x, scale)[:, :size[0], :size[1]]
  return conv_reference.conv3x3(up, kernel)


@pytest.mark.parametrize("scale,coarse,size", CASES)
def test_matches_upsampling_then_convolving(scale, coarse, size):
  x, kernel = _inputs(*coarse)
  want = _reference(x, kernel, scale, size)
  got = ops.upsampled_conv3x3(x, kernel, scale, size)
  assert got.dtype == tf.float64 and got.shape == (2,) + size + (5,)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
  got32 = ops.upsampled_conv3x3(x.astype(np.float32), kernel, scale, size)
  assert got32.dtype == tf.float32
  np.testing.assert_allclose(got32, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("scale,coarse,size", CASES[1::2])
def test_gradients_are_the_adjoints(scale, coarse, size):
  # The op is linear in x and in the kernel: <y, dy> = <x, dx> = <k, dk>.
  x, kernel = (tf.constant(v) for v in _inputs(*coarse, seed=1))
  dy = tf.constant(np.random.RandomState(2).normal(size=(2,) + size + (5,)))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, kernel])
    y = ops.upsampled_conv3x3(x, kernel, scale, size)
  dx, dk = tape.gradient(y, [x, kernel], output_gradients=dy)
  inner = float(tf.reduce_sum(y * dy))
  np.testing.assert_allclose(float(tf.reduce_sum(x * dx)), inner, rtol=1e-10)
  np.testing.assert_allclose(float(tf.reduce_sum(kernel * dk)), inner,
                             rtol=1e-10)


def test_xla_and_unknown_shapes_give_the_same_values():
  x, kernel = _inputs(3, 5)
  x = tf.constant(x, tf.float32)
  want = ops.upsampled_conv3x3(x, kernel, 4, (12, 17))
  xla = tf.function(lambda x: ops.upsampled_conv3x3(x, kernel, 4, (12, 17)),
                    jit_compile=True)
  np.testing.assert_allclose(xla(x), want, rtol=0, atol=1e-5)
  dynamic = tf.function(
      lambda x: ops.upsampled_conv3x3(x, kernel, 4, tf.shape(x)[1:3] * 4 - [0, 3]),
      input_signature=[tf.TensorSpec([None, None, None, 6], tf.float32)])
  np.testing.assert_allclose(dynamic(x), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("features,kernel,scale,size,message", [
    ((1, 2, 2, 3), (3, 3, 3, 4), 0, (2, 2), "scale must be an integer >= 1"),
    ((1, 2, 2, 3), (3, 3, 3, 4), 2.0, (2, 2), "scale must be an integer >= 1"),
    ((2, 2, 3), (3, 3, 3, 4), 2, (2, 2), "features must have rank 4"),
    ((1, 2, 2, 3), (3, 3, 2, 4), 2, (2, 2),
     "kernel must have shape \\[3, 3, C, F\\] with C = 3"),
    ((1, 2, 2, 3), (1, 1, 3, 4), 2, (2, 2), "kernel must have shape"),
    ((1, 2, 2, 3), (3, 3, 3, 4), 2, (5, 4),
     "size \\(5, 4\\) exceeds the upsampled features' \\(4, 4\\)"),
])
def test_bad_inputs_raise_clear_errors(features, kernel, scale, size, message):
  with pytest.raises(ValueError, match=message):
    ops.upsampled_conv3x3(np.zeros(features), np.zeros(kernel), scale, size)
