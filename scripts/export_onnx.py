"""Exports a trained TensorMask model's inference to ONNX.

    python scripts/export_onnx.py --model_dir=runs/tensormask_shapes \
        --output=runs/tensormask_shapes/model.onnx
    python scripts/export_onnx.py --saved_model=DIR --output=model.onnx

From a training run (--model_dir, or --checkpoint with --experiment, as
export_saved_model.py) or from an exported SavedModel (its
`raw_detections` signature). The ONNX model takes uint8 images [B, H, W, 3]
of any batch and size and returns the detections before pasting
(tensormask_tf/serving/onnx_export.py); `predict.py --onnx=FILE` runs it
with onnxruntime and pastes the masks as with --model_dir. The graph is
checked with the onnx checker before it is written.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import tensorflow as tf  # noqa: E402

from tensormask_tf import registry_imports  # noqa: E402,F401
from tensormask_tf.serving import export_module  # noqa: E402
from tensormask_tf.serving import model_source  # noqa: E402
from tensormask_tf.serving import onnx_export  # noqa: E402
from tensormask_tf.serving import predictor  # noqa: E402

model_source.define_flags()
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", None,
    "Convert this exported SavedModel (export_saved_model.py) instead of "
    "a training run.")
_OUTPUT = flags.DEFINE_string("output", None, "The .onnx file to write.",
                              required=True)
_OPSET = flags.DEFINE_integer("opset", onnx_export.OPSET, "ONNX opset.")


def _saved_model_signature(path: str):
  """(the raw_detections concrete function, class names) of an export."""
  if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    raise FileNotFoundError(f"{path} is not a SavedModel directory (no "
                            "saved_model.pb)")
  loaded = tf.saved_model.load(path)
  if onnx_export.SIGNATURE not in loaded.signatures:
    raise ValueError(
        f"{path} has no {onnx_export.SIGNATURE!r} signature (signatures: "
        f"{', '.join(sorted(loaded.signatures))}); export it again with "
        "this version's export_saved_model.py, or give --model_dir")
  names_path = os.path.join(path, "assets.extra", "class_names.json")
  names = (predictor.read_class_names(names_path)
           if tf.io.gfile.exists(names_path) else {})
  # The loaded object must outlive the conversion: keep it referenced.
  return loaded, loaded.signatures[onnx_export.SIGNATURE], names


def main(_):
  try:
    if _SAVED_MODEL.value:
      _, function, names = _saved_model_signature(_SAVED_MODEL.value)
    else:
      params, checkpoint = model_source.load()
      module = export_module.TensorMaskExportModule(params, checkpoint)
      function = module.serve_raw_detections
      names = predictor.class_names(params.task)
    onnx_export.convert(function, names, _OUTPUT.value, _OPSET.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"export_onnx.py: error: {str(e).splitlines()[0]}")
  print(f"exported {_OUTPUT.value} "
        f"({os.path.getsize(_OUTPUT.value) / 1e6:.1f} MB)")


if __name__ == "__main__":
  app.run(main)
