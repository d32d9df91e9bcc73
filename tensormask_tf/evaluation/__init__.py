"""COCO evaluation of TensorMask detections."""
