"""Detections of image files as COCO-style JSON plus PNG pictures.

    python scripts/predict.py --model_dir=runs/tensormask_shapes \
        --image=data/shapes/val/000000.png --output_dir=/tmp/predictions

--saved_model uses an exported SavedModel; --model_dir the run's params.yaml
and latest checkpoint; or give --checkpoint with --experiment (and
--config_file/--params_override).
Writes <output_dir>/detections.json (one entry per detection: file_name,
category_id, bbox [x, y, w, h], score, RLE segmentation) and
<output_dir>/<image name>.png with the masks, boxes, labels and scores.
"""

import glob
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from PIL import Image  # noqa: E402

from tensormask_tf import registry_imports  # noqa: E402,F401
from tensormask_tf.configs import experiments  # noqa: E402
from tensormask_tf.evaluation import coco_evaluator  # noqa: E402
from tensormask_tf.evaluation import visualization  # noqa: E402
from tensormask_tf.serving import predictor as predictor_lib  # noqa: E402

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "A training run: its params.yaml and latest checkpoint.")
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", None, "An exported SavedModel (export_saved_model.py).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "A checkpoint (file prefix or directory).")
_EXPERIMENT = flags.DEFINE_string("experiment", None,
                                  "The experiment, with --checkpoint.")
_CONFIG_FILE = flags.DEFINE_multi_string("config_file", [], "YAML overrides.")
_PARAMS_OVERRIDE = flags.DEFINE_string("params_override", "",
                                       "key=value overrides.")
_IMAGES = flags.DEFINE_multi_string(
    "image", [], "Image files or globs (repeat the flag for more).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write.",
                                  required=True)
_MIN_SCORE = flags.DEFINE_float("min_score", 0.5,
                                "Detections drawn and written above it.")


def _params():
  params = experiments.load_experiment(
      _MODEL_DIR.value, _EXPERIMENT.value, tuple(_CONFIG_FILE.value),
      _PARAMS_OVERRIDE.value)
  checkpoint = _CHECKPOINT.value or _MODEL_DIR.value
  if not checkpoint:
    raise ValueError("give --model_dir, or --checkpoint with --experiment")
  return params, checkpoint


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


def main(_):
  try:
    paths = _image_paths()
    if _SAVED_MODEL.value:
      predictor = predictor_lib.SavedModelPredictor(_SAVED_MODEL.value)
    else:
      predictor = predictor_lib.CheckpointPredictor(*_params())
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"predict.py: error: {str(e).splitlines()[0]}")
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  results, failures = [], 0
  for image_id, path in enumerate(paths):
    try:
      image = predictor_lib.load_image(path)
    except predictor_lib.ImageError as e:
      print(f"predict.py: skipped {e}", file=sys.stderr)
      failures += 1
      continue
    found = predictor(image)
    keep = found["scores"] >= _MIN_SCORE.value
    found = {k: v[keep] for k, v in found.items()}
    for entry in coco_evaluator.coco_results(image_id, found):
      entry["file_name"] = os.path.basename(path)
      results.append(entry)
    picture = visualization.draw_detections(image, found,
                                            predictor.class_names,
                                            min_score=_MIN_SCORE.value)
    name = os.path.splitext(os.path.basename(path))[0] + ".png"
    Image.fromarray(picture).save(os.path.join(_OUTPUT_DIR.value, name))
    print(f"{path}: {len(found['scores'])} detections -> "
          f"{os.path.join(_OUTPUT_DIR.value, name)}")
  with open(os.path.join(_OUTPUT_DIR.value, "detections.json"), "w") as f:
    json.dump(results, f)
  if failures:
    sys.exit(f"predict.py: error: {failures} of {len(paths)} images could "
             "not be read")


if __name__ == "__main__":
  app.run(main)
