"""Inference, export and serving of TensorMask models."""
