"""ONNX export of a TensorMask model's inference (tf2onnx).

The ONNX model is the SavedModel's `raw_detections` signature
(`export_module`): uint8 images `[B, H, W, 3]` (any batch, any size; one
size per batch) in, the detections before pasting out. Everything from
the image's normalization and resize to NMS and the kept windows' masks is
in the graph; pasting each mask into the image (a per-detection crop of
variable size, which ONNX cannot express without a loop of dynamic
shapes) and PNG or RLE encoding are left to the caller, done by
`detection_generator.detections_in_original_image` for every backend
(`predictor.OnnxPredictor`).

Inputs: `inputs` uint8 [B, H, W, 3], RGB.
Outputs (D = the config's `max_detections`, entries past num_detections
zero; pixels of the model input, the image resized and padded):
- `num_detections` int32 [B];
- `detection_boxes` float32 [B, D, 4] `[ymin, xmin, ymax, xmax]`;
- `detection_scores` float32 [B, D];
- `detection_classes` int32 [B, D], 0-based (the metadata's
  `category_ids` maps them to category ids);
- `detection_windows` float32 [B, D, 4], the detections' windows;
- `detection_mask_sides` int32 [B, D], each mask's side M;
- `detection_mask_values` float32 [T], each kept detection's M x M mask
  probabilities over its window, row-major, concatenated in (image,
  detection) order;
- `image_info` float32 [B, 4, 2]: original size, scaled size, scale,
  offset of each image.

Metadata (`metadata_props`): `class_names`, the JSON {"<category id>":
name, ...} in class order (its keys are the classes' category ids), as the
SavedModel's `assets.extra/class_names.json`.
"""

import json

import tensorflow as tf

# 17: the newest opset whose every op here onnxruntime 1.32 runs on the CPU
# and tf2onnx 1.17 converts (18 adds nothing this graph uses).
OPSET = 17
SIGNATURE = "raw_detections"


def convert(function, class_names: dict[int, str], output_path: str,
            opset: int = OPSET):
  """Converts a `raw_detections` tf.function (or a SavedModel signature) to
  ONNX at `output_path`, checks it with the onnx checker and returns the
  onnx.ModelProto.

  Args:
    function: a tf.function with an input signature of uint8 [B, H, W, 3],
      or a concrete function of a loaded SavedModel's signature (keyword
      input `inputs`).
    class_names: {category id: name} in class order.
    output_path: the .onnx file to write.
    opset: the ONNX opset.

  Raises:
    ValueError: the graph has ops tf2onnx cannot convert (named).
  """
  # Imported here: only exporting needs tf2onnx and onnx.
  import onnx  # pylint: disable=g-import-not-at-top
  import tf2onnx  # pylint: disable=g-import-not-at-top

  spec = [tf.TensorSpec([None, None, None, 3], tf.uint8)]
  if not hasattr(function, "input_signature"):
    signature = function

    @tf.function(input_signature=spec)
    def function(inputs):  # pylint: disable=function-redefined
      return signature(inputs=inputs)

  model, _ = tf2onnx.convert.from_function(function, input_signature=spec,
                                           opset=opset)
  unsupported = [node.op_type for node in model.graph.node
                 if node.domain not in ("", "ai.onnx")]
  if unsupported:
    raise ValueError(
        f"ONNX export: tf2onnx could not convert {sorted(set(unsupported))}")
  entry = model.metadata_props.add()
  entry.key = "class_names"
  entry.value = json.dumps({str(k): v for k, v in class_names.items()})
  onnx.checker.check_model(model, full_check=True)
  onnx.save(model, output_path)
  return model
