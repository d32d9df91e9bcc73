"""layers.Conv3x3: tf.nn.conv2d in training, Winograd at inference where the
rule picks it, the same numbers as a numpy convolution either way, Conv2D's
checkpoints, config round trip, and low precision kept direct."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tensormask_tf import layers
from tests import conv_reference

# A grid and width where ops.winograd_pays_off picks Winograd.
WIDE = (1, 40, 32, 128)


def _layer(filters=128, **kwargs):
  layer = layers.Conv3x3(filters, activation="relu", **kwargs)
  layer.build([None, None, None, WIDE[-1]])
  rng = np.random.RandomState(0)
  layer.kernel.assign(rng.normal(0, 0.05, layer.kernel.shape))
  layer.bias.assign(rng.normal(0, 0.5, layer.bias.shape))
  return layer


def _op_types(fn, *args):
  graph = tf.function(fn).get_concrete_function(*args).graph
  return {op.type for op in graph.get_operations()}


def _reference(layer, x):
  return np.maximum(conv_reference.layer_conv3x3(x, layer), 0.0)


@pytest.mark.parametrize("training", [False, None])
def test_inference_runs_winograd_and_matches_numpy(training):
  layer = _layer()
  x = np.random.RandomState(1).normal(size=WIDE)
  x32 = tf.constant(x, tf.float32)
  assert "GatherNd" in _op_types(lambda v: layer(v, training=training), x32)
  assert "Conv2D" not in _op_types(lambda v: layer(v, training=training), x32)
  want = _reference(layer, x)
  np.testing.assert_allclose(layer(x32, training=training), want, rtol=0,
                             atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("training", [True, tf.constant(False)])
def test_training_or_a_symbolic_flag_runs_tf_conv2d_exactly(training):
  layer = _layer()
  x = tf.random.normal(WIDE, seed=3)
  assert "GatherNd" not in _op_types(lambda v: layer(v, training=training),
                                     x)
  want = tf.nn.relu(tf.nn.conv2d(x, layer.kernel, 1, "SAME") + layer.bias)
  np.testing.assert_array_equal(layer(x, training=training), want)


def test_winograd_in_training_has_the_gradients_of_numpy_and_conv2d():
  # Forward against the numpy convolution; the gradients of the input and
  # the kernel against tf.nn.conv2d's (float64, so Winograd's transforms
  # add no visible rounding).
  layer = _layer(winograd_in_training=True, dtype="float64")
  x = tf.constant(np.random.RandomState(1).normal(size=WIDE))
  cotangent = tf.constant(np.random.RandomState(2).normal(size=WIDE))
  assert "GatherNd" in _op_types(lambda v: layer(v, training=True), x)
  np.testing.assert_allclose(layer(x, training=True), _reference(layer, x),
                             rtol=0, atol=1e-10)

  def gradients(forward):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(forward(x) * cotangent)
    return tape.gradient(loss, [x, layer.kernel])

  got = gradients(lambda v: layer(v, training=True))
  want = gradients(lambda v: tf.nn.relu(
      tf.nn.conv2d(v, layer.kernel, 1, "SAME") + layer.bias))
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-9 * np.abs(w).max())


@pytest.mark.parametrize("make,shape", [
    (lambda: _layer(winograd_at_inference=False), WIDE),
    (lambda: _layer(filters=8), WIDE),           # too few output channels
    (lambda: _layer(), (1, 20, 20, 128)),        # grid too small
])
def test_stays_direct_where_winograd_is_off_or_does_not_pay(make, shape):
  layer = make()
  x = tf.random.normal(shape, seed=4)
  assert "GatherNd" not in _op_types(lambda v: layer(v, training=False), x)
  want = tf.nn.relu(tf.nn.conv2d(x, layer.kernel, 1, "SAME") + layer.bias)
  np.testing.assert_array_equal(layer(x, training=False), want)


def test_bfloat16_compute_stays_direct():
  layer = layers.Conv3x3(128, dtype="mixed_bfloat16")
  x = tf.random.normal(WIDE, seed=5)
  types = _op_types(lambda v: layer(v, training=False), x)
  assert "GatherNd" not in types and "Conv2D" in types
  assert layer(x, training=False).dtype == tf.bfloat16


def test_reads_a_conv2d_checkpoint_and_round_trips_its_config(tmp_path):
  conv2d = tf_keras.layers.Conv2D(6, 3, padding="same", activation="relu")
  conv2d.build([None, None, None, 4])
  conv2d.kernel.assign(tf.random.normal(conv2d.kernel.shape, seed=6))
  conv2d.bias.assign(tf.random.normal(conv2d.bias.shape, seed=7))
  path = tf.train.Checkpoint(layer=conv2d).write(str(tmp_path / "ckpt"))
  layer = layers.Conv3x3(6, activation="relu")
  layer.build([None, None, None, 4])
  tf.train.Checkpoint(layer=layer).read(path).assert_consumed()
  x = tf.random.normal([2, 7, 5, 4], seed=8)
  np.testing.assert_array_equal(layer(x), conv2d(x))
  config = layer.get_config()
  copy = layers.Conv3x3.from_config(config)
  assert copy.get_config() == config
  assert config["winograd_at_inference"] is True


def test_refuses_arguments_it_fixes():
  with pytest.raises(ValueError, match="\\['strides'\\] cannot be set"):
    layers.Conv3x3(4, strides=2)
  with pytest.raises(ValueError, match="padding must be one of"):
    layers.Conv3x3(4, padding="causal")


@pytest.mark.parametrize("training", [False, True])
def test_valid_padding_on_a_padded_input(training):
  # The release's backbone and FPN: ZeroPadding2D, then a "valid" conv; the
  # rule judges the output's grid (40x32 here).
  layer = _layer(padding="valid")
  x = np.random.RandomState(1).normal(size=WIDE)
  padded = tf.constant(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))),
                       tf.float32)
  types = _op_types(lambda v: layer(v, training=training), padded)
  assert ("GatherNd" in types) is not training
  want = _reference(layer, x)
  got = layer(padded, training=training)
  assert got.shape == WIDE
  if training:
    np.testing.assert_array_equal(got, tf.nn.relu(tf.nn.conv2d(
        padded, layer.kernel, 1, "VALID") + layer.bias))
  np.testing.assert_allclose(got, want, rtol=0,
                             atol=2e-5 * np.abs(want).max())
  config = layer.get_config()
  assert config["padding"] == "valid"
  assert layers.Conv3x3.from_config(config).get_config() == config


def test_winograd_inference_survives_a_savedmodel(tmp_path):
  layer = _layer()
  x = tf.random.normal(WIDE, seed=9)

  class Module(tf.Module):

    def __init__(self):
      super().__init__()
      self.layer = layer

    @tf.function(input_signature=[tf.TensorSpec(WIDE, tf.float32)])
    def serve(self, inputs):
      return self.layer(inputs, training=False)

  tf.saved_model.save(Module(), str(tmp_path / "saved"))
  loaded = tf.saved_model.load(str(tmp_path / "saved"))
  graph_def = loaded.serve.get_concrete_function().graph.as_graph_def()
  op_types = {node.op for function in graph_def.library.function
              for node in function.node_def}
  assert "GatherNd" in op_types and "Conv2D" not in op_types
  want = _reference(layer, x.numpy().astype(np.float64))
  np.testing.assert_allclose(loaded.serve(x), want, rtol=0,
                             atol=2e-5 * np.abs(want).max())
