"""Exports a trained TensorMask model as a SavedModel for TF Serving.

    python scripts/export_saved_model.py --model_dir=runs/tensormask_shapes \
        --export_dir=runs/tensormask_shapes/saved_model

Writes <export_dir>/<version>/ (TF Serving's layout) with the signatures
serving_default (encoded images), image_tensor (uint8) and tf_example; see
tensormask_tf/serving/export_module.py for inputs and outputs. The graph
uses stock TensorFlow ops only.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tensormask_tf import registry_imports  # noqa: E402,F401
from tensormask_tf.serving import export_module  # noqa: E402
from tensormask_tf.serving import model_source  # noqa: E402

model_source.define_flags()
_EXPORT_DIR = flags.DEFINE_string("export_dir", None,
                                  "The model base path TF Serving watches.",
                                  required=True)
_VERSION = flags.DEFINE_integer("version", None,
                                "Version folder (default: Unix time).")
_IMAGE_MASKS = flags.DEFINE_bool(
    "image_masks", False,
    "Also output image-size binary masks (detection_image_masks).")
_WINDOW_MASKS = flags.DEFINE_bool(
    "window_masks", False,
    "Also output the float mask probabilities over each window before "
    "pasting (detection_window_masks, detection_mask_sides), for research: "
    "[batch, 100, R, R] float32, up to 92 MB for one image.")


def main(_):
  try:
    params, checkpoint = model_source.load()
    path = export_module.export_saved_model(
        params, checkpoint, _EXPORT_DIR.value, version=_VERSION.value,
        image_masks=_IMAGE_MASKS.value, window_masks=_WINDOW_MASKS.value)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f"export_saved_model.py: error: {str(e).splitlines()[0]}")
  print(f"exported {path}")


if __name__ == "__main__":
  app.run(main)
