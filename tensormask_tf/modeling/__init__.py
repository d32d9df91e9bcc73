"""TensorMask Keras model and its builder."""
