"""Keras (tf_keras) layers of TensorMask."""

from tensormask_tf.layers.conv3x3 import Conv3x3
from tensormask_tf.layers.swap_align2nat import SwapAlign2Nat

__all__ = ["Conv3x3", "SwapAlign2Nat"]
