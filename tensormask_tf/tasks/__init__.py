"""The TensorMask Model Garden task."""
