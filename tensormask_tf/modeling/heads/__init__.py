"""TensorMask heads."""
