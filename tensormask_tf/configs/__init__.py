"""Model Garden config dataclasses of TensorMask."""
