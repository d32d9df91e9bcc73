"""Keras (tf_keras) layers of TensorMask."""

from tensormask_tf.layers.swap_align2nat import SwapAlign2Nat

__all__ = ["SwapAlign2Nat"]
