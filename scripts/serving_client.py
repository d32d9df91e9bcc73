"""Sends images to a TF Serving endpoint; writes COCO JSON and pictures.

    # REST (port 8501) or gRPC (port 8500) of a server started as in README.md
    python scripts/serving_client.py --rest=http://localhost:8501 \
        --model_name=tensormask --image='data/shapes/val/*.png' \
        --output_dir=/tmp/served
    python scripts/serving_client.py --grpc=localhost:8500 ...

--class_names reads names for the pictures and the model's category ids
(the export's assets.extra/class_names.json); the served category ids are
written as they are either way.

Boxes, masks and pictures refer to each image as displayed, its EXIF
Orientation applied (as predict.py does). The server decodes with
TensorFlow, which ignores EXIF, so a file whose orientation is not 1 is
sent as a lossless PNG of the turned pixels instead of its own bytes
(`predictor.request_bytes`); other files are sent as they are.
"""

import glob
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tensormask_tf.serving import client  # noqa: E402
from tensormask_tf.serving import predictor  # noqa: E402

_REST = flags.DEFINE_string("rest", None, "REST base URL, e.g. "
                            "http://localhost:8501")
_GRPC = flags.DEFINE_string("grpc", None, "gRPC host:port, e.g. "
                            "localhost:8500")
_MODEL_NAME = flags.DEFINE_string("model_name", "tensormask",
                                  "The served model's name.")
_IMAGES = flags.DEFINE_multi_string("image", [], "Image files or globs.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write.",
                                  required=True)
_CLASS_NAMES = flags.DEFINE_string("class_names", None,
                                   "JSON {id: name} for the pictures.")
_MIN_SCORE = flags.DEFINE_float("min_score", 0.5,
                                "Detections written and drawn above it.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Images per request.")


def main(_):
  if bool(_REST.value) == bool(_GRPC.value):
    sys.exit("serving_client.py: error: give exactly one of --rest, --grpc")
  paths = [p for pattern in _IMAGES.value for p in sorted(glob.glob(pattern))]
  if not paths:
    sys.exit("serving_client.py: error: --image matches no files")
  names, category_ids = {}, None
  if _CLASS_NAMES.value:
    names = predictor.read_class_names(_CLASS_NAMES.value)
    category_ids = list(names)
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  results, failures = [], 0
  pictures = predictor.picture_names(paths, _OUTPUT_DIR.value)

  def skip(skipped: list[str], reason: str):
    nonlocal failures
    print(f"serving_client.py: skipped {', '.join(skipped)}: {reason}",
          file=sys.stderr)
    failures += len(skipped)

  for start in range(0, len(paths), _BATCH.value):
    batch = []  # (image id, path, image) of the readable ones
    for image_id in range(start, min(start + _BATCH.value, len(paths))):
      path = paths[image_id]
      try:
        image = predictor.load_image(path, client.DECODABLE_FORMATS)
      except predictor.ImageError as e:
        skip([path], str(e).removeprefix(f"{path}: "))
        continue
      batch.append((image_id, path, image))
    if not batch:
      continue
    # Turned by their EXIF orientation where they have one (see above).
    encoded = [predictor.request_bytes(path, image)
               for _, path, image in batch]
    try:
      if _REST.value:
        outputs = client.rest_predict(_REST.value, _MODEL_NAME.value, encoded)
      else:
        outputs = client.grpc_predict(_GRPC.value, _MODEL_NAME.value, encoded)
    except client.ServingError as e:  # This request only: go on.
      skip([path for _, path, _ in batch], str(e))
      continue
    for n, (image_id, path, image) in enumerate(batch):
      entries, _ = predictor.save_prediction(
          path, image,
          predictor.detections_from_outputs(outputs, n, category_ids), image_id,
          names, _OUTPUT_DIR.value, _MIN_SCORE.value, pictures[image_id],
          category_ids=category_ids)
      results += entries
      print(f"{path}: {len(entries)} detections")
  with open(os.path.join(_OUTPUT_DIR.value, "detections.json"), "w") as f:
    json.dump(results, f)
  if failures:
    sys.exit(f"serving_client.py: error: {failures} of {len(paths)} images "
             "could not be read or served")


if __name__ == "__main__":
  app.run(main)
