"""Tests of the Keras layers."""

import numpy as np
import pytest
import tf_keras

from tensormask_tf import layers
from tests import reference


@pytest.mark.parametrize("backend", ["tf", "custom"])
def test_swap_align2nat_layer_matches_reference_inside_a_model(backend):
  inputs = tf_keras.Input(shape=(7, 9, 25), batch_size=2)
  outputs = layers.SwapAlign2Nat(lam=2, pad=0.5, backend=backend)(inputs)
  model = tf_keras.Model(inputs, outputs)
  assert model.output_shape == (2, 4, 5, 100)
  x = np.random.RandomState(0).uniform(-2, 2, (2, 7, 9, 25)).astype(np.float32)
  np.testing.assert_allclose(model(x), reference.swap_align2nat(x, 2, 0.5),
                             atol=1e-5)


def test_swap_align2nat_layer_config_round_trip():
  layer = layers.SwapAlign2Nat(lam=4, pad=-3.0, backend="tf", name="swap_p4")
  config = layer.get_config()
  assert (config["lam"], config["pad"], config["backend"]) == (4, -3.0, "tf")
  clone = layers.SwapAlign2Nat.from_config(config)
  assert clone.get_config() == config
  assert clone.compute_output_shape((None, 9, 8, 9)) == (None, 3, 2, 144)
  # Registered for Keras' (de)serialisation by name.
  revived = tf_keras.layers.deserialize(tf_keras.layers.serialize(layer))
  assert isinstance(revived, layers.SwapAlign2Nat)
  assert revived.get_config() == config


@pytest.mark.parametrize("kwargs,message", [
    ({"lam": 0}, "lam must be >= 1"),
    ({"lam": 1.5}, "lam must be a Python integer"),
    ({"lam": 2, "pad": float("inf")}, "pad must be finite"),
    ({"lam": 2, "backend": "xla"}, "backend must be one of"),
])
def test_swap_align2nat_layer_rejects_bad_config(kwargs, message):
  with pytest.raises(ValueError, match=message):
    layers.SwapAlign2Nat(**kwargs)
