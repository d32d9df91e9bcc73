"""Detections of image files as COCO-style JSON plus PNG pictures.

    python scripts/predict.py --model_dir=runs/tensormask_shapes \
        --image=data/shapes/val/000000.png --output_dir=/tmp/predictions

--saved_model uses an exported SavedModel; --model_dir the run's params.yaml
and latest checkpoint; or give --checkpoint with --experiment (and
--config_file/--params_override).
Writes <output_dir>/detections.json (one entry per detection: file_name,
category_id, bbox [x, y, w, h], score, RLE segmentation) and
<output_dir>/<image name>.png with the masks, boxes, labels and scores
(and with --overview one PNG of them all).
"""

import glob
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import tensorflow as tf  # noqa: E402

from tensormask_tf import registry_imports  # noqa: E402,F401
from tensormask_tf.evaluation import visualization  # noqa: E402
from tensormask_tf.serving import model_source  # noqa: E402
from tensormask_tf.serving import predictor as predictor_lib  # noqa: E402

model_source.define_flags()
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", None, "An exported SavedModel (export_saved_model.py).")
_IMAGES = flags.DEFINE_multi_string(
    "image", [], "Image files or globs (repeat the flag for more).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write.",
                                  required=True)
_MIN_SCORE = flags.DEFINE_float("min_score", 0.5,
                                "Detections drawn and written above it.")
_OVERVIEW = flags.DEFINE_string(
    "overview", None, "Also writes this PNG: every picture side by side, "
    "4 to a row, 256 px each (the README's picture).")


def _image_paths() -> list[str]:
  paths = []
  for pattern in _IMAGES.value:
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise FileNotFoundError(f"--image {pattern!r} matches no files")
    paths += matches
  if not paths:
    raise ValueError("give at least one --image")
  return paths


def _reason(error: tf.errors.OpError) -> str:
  """The line of a graph error's message that says what failed (after
  "Graph execution error:" and the traceback, before the node names)."""
  lines = [line.strip() for line in error.message.splitlines()]
  lines = [line for line in lines if line and not line.startswith(
      ("File ", "[[", "Graph execution error", "Detected at node"))]
  return lines[-1] if lines else type(error).__name__


def main(_):
  try:
    paths = _image_paths()
    if _SAVED_MODEL.value:
      predictor = predictor_lib.SavedModelPredictor(_SAVED_MODEL.value)
    else:
      predictor = predictor_lib.CheckpointPredictor(*model_source.load())
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"predict.py: error: {str(e).splitlines()[0]}")
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  results, written, failures = [], [], 0
  pictures = predictor_lib.picture_names(paths, _OUTPUT_DIR.value)
  for image_id, path in enumerate(paths):
    try:
      image = predictor_lib.load_image(path)
      detections = predictor(image)
    except predictor_lib.ImageError as e:
      print(f"predict.py: skipped {e}", file=sys.stderr)
      failures += 1
      continue
    except tf.errors.OpError as e:  # This image only: go on with the rest.
      print(f"predict.py: skipped {path}: {_reason(e)}", file=sys.stderr)
      failures += 1
      continue
    entries, picture = predictor_lib.save_prediction(
        path, image, detections, image_id, predictor.class_names,
        _OUTPUT_DIR.value, _MIN_SCORE.value, pictures[image_id],
        category_ids=predictor.category_ids)
    results += entries
    written.append(picture)
    print(f"{path}: {len(entries)} detections -> {picture}")
  with open(os.path.join(_OUTPUT_DIR.value, "detections.json"), "w") as f:
    json.dump(results, f)
  if _OVERVIEW.value and written:
    Image.fromarray(visualization.tile_pictures(
        [np.asarray(Image.open(p)) for p in written])).save(_OVERVIEW.value)
    print(f"overview of {len(written)} pictures -> {_OVERVIEW.value}")
  if failures:
    sys.exit(f"predict.py: error: {failures} of {len(paths)} images could "
             "not be read or run")


if __name__ == "__main__":
  app.run(main)
