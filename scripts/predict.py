"""Detections of image files as COCO-style JSON plus PNG pictures.

    python scripts/predict.py --model_dir=runs/tensormask_shapes \
        --image=data/shapes/val/000000.png --output_dir=/tmp/predictions

--saved_model uses an exported SavedModel; --onnx an ONNX export
(export_onnx.py) run by onnxruntime; --model_dir the run's params.yaml and
latest checkpoint; or give --checkpoint with --experiment (and
--config_file/--params_override).
Writes <output_dir>/detections.json (one entry per detection: file_name,
category_id, bbox [x, y, w, h], score, RLE segmentation) and
<output_dir>/<image name>.png with the masks, boxes, labels and scores
(and with --overview one PNG of them all). Images are taken as displayed:
their EXIF orientation applied.

For many images: each finished image is appended to
<output_dir>/detections.jsonl as it finishes (its picture written first),
so the same command run again after a crash or a kill goes on with the
images not in it; detections.json is written from it at the end. The next
images are decoded in the background while the model runs. With
--num_shards=N --shard_index=i (machines sharing a folder, or not) this
run takes the images whose index in the sorted list is i modulo N and
writes detections-0000i-of-0000N.jsonl/.json;
scripts/merge_predictions.py joins the shards' into detections.json.
Images that cannot be read or run are reported, left out of the journal
(a rerun tries them again) and make the exit status 1.
"""

import glob
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
# TensorFlow's oneDNN convolutions keep primitives and reordered weights for
# every input shape they meet, and photos of several aspect ratios give the
# model several shapes: measured on three 12-24 MP photos with the release
# R50 (docs/benchmarks.md, issue 29), peak RSS 2.78-3.06 GB with oneDNN,
# 2.57-2.77 GB without, at 1.09x the time. Set TF_ENABLE_ONEDNN_OPTS=1 for the
# speed instead.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from PIL import Image  # noqa: E402
import tensorflow as tf  # noqa: E402

from tensormask_tf import registry_imports  # noqa: E402,F401
from tensormask_tf.evaluation import visualization  # noqa: E402
from tensormask_tf.serving import batch_prediction  # noqa: E402
from tensormask_tf.serving import model_source  # noqa: E402
from tensormask_tf.serving import predictor as predictor_lib  # noqa: E402

model_source.define_flags()
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", None, "An exported SavedModel (export_saved_model.py).")
_ONNX = flags.DEFINE_string(
    "onnx", None, "An ONNX export (export_onnx.py), run by onnxruntime.")
_ONNX_THREADS = flags.DEFINE_integer(
    "onnx_threads", 0, "onnxruntime's intra-op threads with --onnx (0: one "
    "per physical core).")
_IMAGES = flags.DEFINE_multi_string(
    "image", [], "Image files or globs (repeat the flag for more).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write.",
                                  required=True)
_MIN_SCORE = flags.DEFINE_float("min_score", 0.5,
                                "Detections drawn and written above it.")
_OVERVIEW = flags.DEFINE_string(
    "overview", None, "Also writes this PNG: every picture side by side, "
    "4 to a row, 256 px each (the README's picture).")
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", 1, "Split the images into this many shards, each run by "
    "its own predict.py (see --shard_index).")
_SHARD_INDEX = flags.DEFINE_integer(
    "shard_index", 0, "The shard this run predicts, 0..num_shards-1: the "
    "images whose index in the sorted list is shard_index modulo "
    "num_shards.")


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
  output_dir = _OUTPUT_DIR.value
  try:
    batch_prediction.check_shard(_NUM_SHARDS.value, _SHARD_INDEX.value)
    paths = _image_paths()
    os.makedirs(output_dir, exist_ok=True)
    # Opened before the model loads: a journal of another run is refused
    # at once.
    journal = batch_prediction.Journal(output_dir, batch_prediction.header(
        paths, _NUM_SHARDS.value, _SHARD_INDEX.value, _MIN_SCORE.value))
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"predict.py: error: {str(e).splitlines()[0]}")
  with journal:
    try:
      if _SAVED_MODEL.value:
        predictor = predictor_lib.SavedModelPredictor(_SAVED_MODEL.value)
      elif _ONNX.value:
        predictor = predictor_lib.OnnxPredictor(_ONNX.value,
                                                _ONNX_THREADS.value)
      else:
        predictor = predictor_lib.CheckpointPredictor(*model_source.load())
    except (ValueError, FileNotFoundError) as e:
      sys.exit(f"predict.py: error: {str(e).splitlines()[0]}")
    _predict(predictor, paths, journal)


def _predict(predictor: (predictor_lib.CheckpointPredictor
                         | predictor_lib.SavedModelPredictor
                         | predictor_lib.OnnxPredictor),
             paths: list[str], journal: batch_prediction.Journal) -> None:
  """Predicts this shard's images not in the journal yet, then writes the
  results and the overview of all the shard's images done."""
  output_dir = _OUTPUT_DIR.value
  ids = batch_prediction.shard_ids(len(paths), _NUM_SHARDS.value,
                                   _SHARD_INDEX.value)
  pictures = predictor_lib.picture_names(paths, output_dir)
  todo = [k for k in ids if k not in journal.done
          or journal.done[k].path != paths[k]]
  if len(todo) < len(ids):
    print(f"resuming: {len(ids) - len(todo)} of {len(ids)} images are "
          f"done in {journal.path}")
  progress = batch_prediction.Progress(len(ids), len(ids) - len(todo))
  failures = 0
  # Decoded in the background, one image ahead of the model (decoding a
  # 24 MP JPEG takes 0.3 s, the model seconds; each decoded photo held is
  # 72 MB).
  for image_id, loading in batch_prediction.prefetch(
      todo, lambda k: predictor_lib.load_image(paths[k]), ahead=1):
    path = paths[image_id]
    try:
      image = loading.result()  # Raises the ImageError of its decoding.
      detections = predictor(image)
    except predictor_lib.ImageError as e:
      progress.step()
      print(f"predict.py: skipped {e}", file=sys.stderr)
      failures += 1
      continue
    except tf.errors.OpError as e:  # This image only: go on with the rest.
      progress.step()
      print(f"predict.py: skipped {path}: {_reason(e)}", file=sys.stderr)
      failures += 1
      continue
    except predictor_lib.RunError as e:
      progress.step()
      print(f"predict.py: skipped {path}: {e}", file=sys.stderr)
      failures += 1
      continue
    entries, picture = predictor_lib.save_prediction(
        path, image, detections, image_id, predictor.class_names,
        output_dir, _MIN_SCORE.value, pictures[image_id],
        category_ids=predictor.category_ids)
    journal.append(image_id, path, pictures[image_id], entries)
    print(progress.line(path, len(entries), picture))
  stem = batch_prediction.file_stem(_NUM_SHARDS.value, _SHARD_INDEX.value)
  results = os.path.join(output_dir, f"{stem}.json")
  count = journal.write_results(results)
  print(f"{len(journal.done)} of {len(ids)} images, {count} detections -> "
        f"{results}")
  if _OVERVIEW.value and journal.done:
    written = [os.path.join(output_dir, journal.done[k].picture)
               for k in sorted(journal.done)]
    Image.fromarray(visualization.tile_pictures(
        batch_prediction.PictureFiles(written))).save(_OVERVIEW.value)
    print(f"overview of {len(written)} pictures -> {_OVERVIEW.value}")
  if failures:
    sys.exit(f"predict.py: error: {failures} of {len(todo)} images could "
             "not be read or run (they are not in the journal: running "
             "the command again tries them again)")


if __name__ == "__main__":
  app.run(main)
