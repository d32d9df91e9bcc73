"""ops.winograd_conv3x3 against a numpy float64 'same' 3x3 convolution (and
'valid' on padded inputs), its gradients against the numpy adjoints, XLA,
unknown shapes, errors, and ops.winograd_pays_off's rule."""

import numpy as np
import pytest
import tensorflow as tf

from tensormask_tf import ops
from tests import conv_reference

# (N, H, W, C, F): whole tiles, partial tiles on either axis, grids smaller
# than one tile, one channel.
CASES = [(1, 8, 12, 5, 3), (2, 9, 14, 4, 6), (1, 5, 3, 7, 2), (2, 1, 1, 3, 4),
         (1, 2, 11, 1, 1), (1, 17, 6, 8, 9)]


def _inputs(n, h, w, c, f, seed=0):
  rng = np.random.RandomState(seed)
  return rng.normal(size=(n, h, w, c)), rng.normal(size=(3, 3, c, f))


def _reference_gradients(x, kernel, dy):
  """dx, dk of sum(dy * conv3x3(x, kernel)), in float64 numpy."""
  _, h, w, _ = x.shape
  padded_dy = np.pad(dy, ((0, 0), (1, 1), (1, 1), (0, 0)))
  padded_x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dx = np.zeros_like(x)
  dk = np.zeros_like(kernel)
  for i in range(3):
    for j in range(3):
      # y[p] += x[p + (i-1, j-1)] k[i, j]: x[q] gets dy[q - (i-1, j-1)].
      dx += padded_dy[:, 2 - i:2 - i + h, 2 - j:2 - j + w] @ kernel[i, j].T
      dk[i, j] = np.einsum("nhwc,nhwf->cf", padded_x[:, i:i + h, j:j + w], dy)
  return dx, dk


@pytest.mark.parametrize("shape", CASES)
def test_matches_a_numpy_convolution(shape):
  x, kernel = _inputs(*shape)
  want = conv_reference.conv3x3(x, kernel)
  got = ops.winograd_conv3x3(x, kernel)
  assert got.dtype == tf.float64 and got.shape == shape[:3] + (shape[4],)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
  got32 = ops.winograd_conv3x3(x.astype(np.float32), kernel)
  assert got32.dtype == tf.float32
  np.testing.assert_allclose(got32, want, rtol=0,
                             atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("shape", CASES)
def test_valid_padding_on_a_padded_input_matches_same_padding(shape):
  # What the release's backbone and FPN run: ZeroPadding2D, then "VALID".
  # Whole output tiles (8x12) read the input in place, partial ones pad it.
  x, kernel = _inputs(*shape)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = conv_reference.conv3x3(x, kernel)
  got = ops.winograd_conv3x3(padded, kernel, "VALID")
  assert got.shape == shape[:3] + (shape[4],)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
  dynamic = tf.function(
      lambda v: ops.winograd_conv3x3(v, kernel, padding="valid"),
      input_signature=[tf.TensorSpec([None] * 3 + [shape[3]], tf.float64)])
  np.testing.assert_allclose(dynamic(padded), want, rtol=0, atol=1e-10)
  graph = tf.function(lambda v: ops.winograd_conv3x3(v, kernel, "VALID")
                      ).get_concrete_function(tf.constant(padded)).graph
  pads = [op for op in graph.get_operations() if op.type.startswith("Pad")]
  assert bool(pads) == bool(shape[1] % 4 or shape[2] % 4)
  with tf.GradientTape() as tape:
    inputs = tf.constant(padded)
    tape.watch(inputs)
    y = ops.winograd_conv3x3(inputs, kernel, "VALID")
  dy = np.random.RandomState(3).normal(size=y.shape)
  want_dx, _ = _reference_gradients(x, kernel, dy)
  # The padding's own gradient is dropped: compare inside it.
  dx = tape.gradient(y, inputs, output_gradients=tf.constant(dy))
  np.testing.assert_allclose(dx[:, 1:-1, 1:-1], want_dx, rtol=0, atol=1e-10)


def test_float32_error_at_the_heads_width_stays_near_the_direct_ones():
  # 256 channels: the transforms' rounding against tf.nn.conv2d's, both
  # measured against float64.
  x, kernel = _inputs(1, 16, 20, 256, 16)
  want = conv_reference.conv3x3(x, kernel)
  scale = np.abs(want).max()
  x32, k32 = x.astype(np.float32), kernel.astype(np.float32)
  direct = np.abs(tf.nn.conv2d(x32, k32, 1, "SAME") - want).max() / scale
  winograd = np.abs(ops.winograd_conv3x3(x32, k32) - want).max() / scale
  assert winograd < 2e-5 and winograd < 30 * direct


@pytest.mark.parametrize("shape", CASES[1::2])
def test_gradients_match_the_numpy_adjoints(shape):
  x, kernel = (tf.constant(v) for v in _inputs(*shape, seed=1))
  dy = np.random.RandomState(2).normal(size=shape[:3] + (shape[4],))
  with tf.GradientTape() as tape:
    tape.watch([x, kernel])
    y = ops.winograd_conv3x3(x, kernel)
  dx, dk = tape.gradient(y, [x, kernel], output_gradients=tf.constant(dy))
  want_dx, want_dk = _reference_gradients(x.numpy(), kernel.numpy(), dy)
  np.testing.assert_allclose(dx, want_dx, rtol=0, atol=1e-10)
  np.testing.assert_allclose(dk, want_dk, rtol=0, atol=1e-10)


def test_xla_and_unknown_shapes_give_the_same_values():
  x, kernel = _inputs(2, 9, 14, 4, 6)
  x = tf.constant(x, tf.float32)
  want = conv_reference.conv3x3(x.numpy().astype(np.float64), kernel)
  xla = tf.function(lambda x: ops.winograd_conv3x3(x, kernel),
                    jit_compile=True)
  np.testing.assert_allclose(xla(x), want, rtol=0, atol=1e-4)
  dynamic = tf.function(
      lambda x: ops.winograd_conv3x3(x, kernel),
      input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32)])
  got = dynamic(x)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  assert dynamic.get_concrete_function().outputs[0].shape.as_list() == [
      None, None, None, 6]


@pytest.mark.parametrize("inputs,kernel,dtype,message", [
    ((2, 2, 3), (3, 3, 3, 4), np.float32, "inputs must be \\[N, H, W, C\\]"),
    ((1, 2, 2, 3), (3, 3, 2, 4), np.float32,
     "kernel must be \\[3, 3, C, F\\] with the inputs' C = 3"),
    ((1, 2, 2, 3), (1, 1, 3, 4), np.float32, "kernel must be \\[3, 3, C, F\\]"),
    ((1, 2, 2, 3), (3, 3, 3, 4), np.float16,
     "inputs must be float32 or float64 .* got float16"),
    ((1, 2, 5, 3), (3, 3, 3, 4), np.float32,
     "a 'VALID' convolution needs a grid of at least 3x3"),
])
def test_bad_inputs_raise_clear_errors(inputs, kernel, dtype, message):
  with pytest.raises(ValueError, match=message):
    ops.winograd_conv3x3(np.zeros(inputs, dtype), np.zeros(kernel, dtype),
                         "VALID" if "VALID" in message else "SAME")


def test_other_paddings_are_refused():
  with pytest.raises(ValueError, match="padding must be 'SAME' or 'VALID'"):
    ops.winograd_conv3x3(np.zeros((1, 4, 4, 2)), np.zeros((3, 3, 2, 2)),
                         "CAUSAL")


@pytest.mark.parametrize("grid,channels,filters,expected", [
    ((224, 352), 256, 256, True),   # P2 of 896x1408: 2.2x faster
    ((28, 44), 128, 128, True),     # P5 of 896x1408: 1.4x
    ((25, 42), 512, 512, True),     # C5 of 800x1344: 1.6x
    ((32, 32), 256, 256, True),     # P4 of 512x512: 1.4-1.9x
    ((20, 25), 256, 256, False),    # 500 pixels: 0.8-1.3x
    ((224, 352), 128, 8, False),    # box deltas: 2.4x slower
    ((224, 352), 64, 64, False),    # res2 of 896x1408: 0.86x
    ((224, 352), 64, 256, False),
    ((None, 352), 256, 256, False),  # unknown grid: a static choice
])
def test_winograd_pays_off_rule(grid, channels, filters, expected):
  assert ops.winograd_pays_off(*grid, channels, filters) is expected
