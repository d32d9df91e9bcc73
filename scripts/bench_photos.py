"""Benchmark of the authors' model on photos, served responses and
evaluation memory (issue 29).

    .venv/bin/python scripts/bench_photos.py [--model_dir=M]
        [--sections photos,serving,evaluation] [--work_dir=/tmp/bench_photos]

Without --model_dir the release reference checkpoint of the tests (seed 38,
tests/release_checkpoint.py: a random R50 TensorMask in detectron2's format,
whose masks are blobs over large parts of their windows) is converted as
`scripts/convert_detectron2_checkpoint.py` converts the authors' weights.
The photos are tests/data/detectron2_reference/A.png enlarged to a 12 MP
(4032x3024) and a 24 MP (6000x4000) JPEG with noise; the rotated one is the
12 MP photo stored portrait with EXIF Orientation 6.

1. photos: `scripts/predict.py --model_dir=M --min_score=0.05` as a user
   runs it, each call a fresh process (time and peak RSS from wait4, as
   `/usr/bin/time -v` reports them): every photo as it is, against the same
   photo first downscaled to 1333 px on its longer side (the release's test
   size, so the model's input is the same); then the 12 MP, 24 MP and
   rotated photos in one call (target: exit 0, peak RSS <= 3 GB, the
   full-size photo at most 1.3x the downscaled one).
2. serving: `export_saved_model.py`, then the `serving_default` signature
   on one 1152x768 JPEG: the size of its TF Serving REST JSON reply and of
   its gRPC PredictResponse (target: REST <= 1 MB at 100 detections, gRPC
   under the default 4 MiB), beside the float window masks of
   `--window_masks`; the served masks decoded against predict.py's.
3. evaluation: one COCO evaluation step at 800x1333, batch --eval_batch:
   the masks the step hands to the evaluator (MB) and the evaluator's peak
   Python/numpy memory (tracemalloc) while it pastes and encodes them.
   Runs against an older checkout too (`--repo=DIR`, this script copied
   anywhere) for a before/after.
"""

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
import tracemalloc

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
REFERENCE = os.path.join(REPO, "tests", "data", "detectron2_reference")
GB = 1e9


def _run(args: list[str], what: str) -> dict:
  """Runs a command; its wall time, peak RSS (bytes) and exit status."""
  start = time.perf_counter()
  process = subprocess.Popen(args, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  output = process.stdout.read()
  _, status, usage = os.wait4(process.pid, 0)
  seconds = time.perf_counter() - start
  code = os.waitstatus_to_exitcode(status)
  if code != 0:
    print(f"{what}: exit {code}\n{output[-3000:]}")
  return {"seconds": seconds, "peak_rss": usage.ru_maxrss * 1024,
          "exit": code}


def _model_dir(work_dir: str) -> str:
  path = os.path.join(work_dir, "model")
  if os.path.isfile(os.path.join(path, "params.yaml")):
    return path
  sys.path.insert(0, REPO)
  from tests import release_checkpoint  # pylint: disable=g-import-not-at-top
  pkl = os.path.join(work_dir, "seed38.pkl")
  with open(pkl, "wb") as f:
    pickle.dump({"model": release_checkpoint.build(38)}, f, protocol=4)
  result = _run([sys.executable, os.path.join(
      REPO, "scripts", "convert_detectron2_checkpoint.py"),
                 f"--checkpoint={pkl}", f"--output_dir={path}"], "convert")
  if result["exit"]:
    sys.exit("converting the reference checkpoint failed")
  return path


def _photos(work_dir: str) -> dict[str, str]:
  """{name: JPEG path}: the photos, their 1333 px copies and the rotated
  one (module docstring)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  paths = {}
  source = Image.open(os.path.join(REFERENCE, "A.png")).convert("RGB")
  rng = np.random.default_rng(0)
  for name, size in (("12mp", (4032, 3024)), ("24mp", (6000, 4000))):
    path = os.path.join(work_dir, f"photo_{name}.jpg")
    if not os.path.isfile(path):
      pixels = np.asarray(source.resize(size, Image.BICUBIC), np.float32)
      pixels += rng.normal(0, 4, pixels.shape)
      Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
          path, quality=90)
    paths[name] = path
    small = os.path.join(work_dir, f"photo_{name}_1333.jpg")
    if not os.path.isfile(small):
      with Image.open(path) as photo:
        scale = 1333 / max(photo.size)
        photo.resize((round(photo.width * scale), round(photo.height * scale)),
                     Image.BILINEAR).save(small, quality=90)
    paths[f"{name}_1333"] = small
  rotated = os.path.join(work_dir, "photo_12mp_exif6.jpg")
  if not os.path.isfile(rotated):
    with Image.open(paths["12mp"]) as photo:
      exif = Image.Exif()
      exif[0x0112] = 6  # Displayed after a quarter turn clockwise.
      photo.transpose(Image.Transpose.ROTATE_90).save(rotated, quality=90,
                                                      exif=exif)
  paths["rotated"] = rotated
  return paths


def _predict(model_dir: str, images: list[str], output_dir: str,
             what: str) -> dict:
  return _run([sys.executable, os.path.join(REPO, "scripts", "predict.py"),
               f"--model_dir={model_dir}", *[f"--image={p}" for p in images],
               f"--output_dir={output_dir}", "--min_score=0.05"], what)


def bench_photos(model_dir: str, work_dir: str) -> dict:
  photos = _photos(work_dir)
  rows = {}
  print("\n1. predict.py --min_score=0.05, one process per call")
  print(f"{'photo':<22}{'time s':>9}{'peak RSS GB':>13}"
        f"{'time / 1333 px':>16}{'RSS / 1333 px':>15}")
  for name in ("12mp", "24mp"):
    for key in (f"{name}_1333", name):
      out = os.path.join(work_dir, f"out_{key}")
      subprocess.run(["rm", "-rf", out], check=True)
      rows[key] = _predict(model_dir, [photos[key]], out, key)
    small, full = rows[f"{name}_1333"], rows[name]
    for key, row in ((f"{name}_1333", small), (name, full)):
      ratio = ("" if row is small else
               f"{full['seconds'] / small['seconds']:>16.2f}"
               f"{full['peak_rss'] / small['peak_rss']:>15.2f}")
      print(f"{key:<22}{row['seconds']:>9.1f}{row['peak_rss'] / GB:>13.2f}"
            f"{ratio}")
  out = os.path.join(work_dir, "out_three")
  subprocess.run(["rm", "-rf", out], check=True)
  three = _predict(model_dir, [photos["12mp"], photos["24mp"],
                               photos["rotated"]], out, "three photos")
  with open(os.path.join(out, "detections.json")) as f:
    sizes = {r["file_name"]: r["segmentation"]["size"] for r in json.load(f)}
  print(f"12 MP + 24 MP + rotated 12 MP in one call: exit {three['exit']}, "
        f"{three['seconds']:.1f} s, peak RSS {three['peak_rss'] / GB:.2f} GB;"
        f" mask sizes {sorted(set(map(tuple, sizes.values())))}")
  rows["three"] = three
  return rows


def bench_serving(model_dir: str, work_dir: str) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, REPO)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  from tensormask_tf.serving import client  # pylint: disable=g-import-not-at-top
  from tensormask_tf.serving import predictor  # pylint: disable=g-import-not-at-top
  export_dir = os.path.join(work_dir, "export")
  path = os.path.join(export_dir, "1")
  if not os.path.isfile(os.path.join(path, "saved_model.pb")):
    result = _run([sys.executable, os.path.join(
        REPO, "scripts", "export_saved_model.py"), f"--model_dir={model_dir}",
                   f"--export_dir={export_dir}", "--version=1",
                   "--window_masks"], "export")
    if result["exit"]:
      sys.exit("export failed")
  photo = os.path.join(work_dir, "photo_1152x768.jpg")
  # And one the export and predict.py pad alike (800 x 1333, padded to
  # 800 x 1344 by both), for the equality of their masks.
  same_padding = os.path.join(work_dir, "photo_1333x800.jpg")
  with Image.open(os.path.join(REFERENCE, "A.png")) as source:
    for path, size in ((photo, (1152, 768)), (same_padding, (1333, 800))):
      source.convert("RGB").resize(size, Image.BICUBIC).save(path,
                                                             quality=90)
  with open(photo, "rb") as f:
    encoded = f.read()
  signature = tf.saved_model.load(path).signatures["serving_default"]
  start = time.perf_counter()
  outputs = {k: v.numpy() for k, v in
             signature(inputs=tf.constant([encoded])).items()}
  seconds = time.perf_counter() - start
  served_keys = [k for k in outputs if k not in (
      "detection_window_masks", "detection_mask_sides")]

  def sizes(keys):
    rest = len(json.dumps(client.rest_predictions(
        {k: outputs[k] for k in keys})).encode())
    response = predict_pb2.PredictResponse()
    for key in keys:
      response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
    return rest, response.ByteSize()

  rest, grpc = sizes(served_keys)
  old_rest, old_grpc = sizes(
      [k for k in served_keys if not k.startswith("detection_mask")]
      + ["detection_window_masks", "detection_mask_sides"])
  count = int(outputs["num_detections"][0])
  # predict.py --saved_model sends the pixels predict.py decodes (PIL,
  # EXIF applied) to `image_tensor`; serving_default decodes with TF.
  pixels = predictor.load_image(same_padding)
  found = predictor.SavedModelPredictor(path)(pixels)
  from tensormask_tf import registry_imports  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from tensormask_tf.configs import experiments  # pylint: disable=g-import-not-at-top
  local = predictor.CheckpointPredictor(
      experiments.load_experiment(model_dir=model_dir),
      model_dir)(pixels)
  same = (len(local["scores"]) == len(found["scores"]) and np.array_equal(
      found["masks"].dense(), local["masks"].dense()))
  decoders_agree = np.array_equal(
      tf.io.decode_image(encoded, channels=3).numpy(),
      predictor.load_image(photo))
  print(f"\n2. serving_default on one 1152x768 JPEG ({count} detections, "
        f"{seconds:.1f} s in process)")
  print(f"   served masks (PNG crops): REST JSON {rest / 1e6:.3f} MB, gRPC "
        f"{grpc / 1e6:.3f} MB")
  print(f"   image_tensor (predict.py --saved_model) on a 1333x800 JPEG "
        f"(padded alike): {len(found['scores'])} detections, masks equal to "
        f"predict.py --model_dir's pixel for pixel: {same}; TF's JPEG "
        f"decoder gives PIL's pixels: {decoders_agree}")
  print(f"   float window masks (--window_masks): REST JSON "
        f"{old_rest / 1e6:.1f} MB, gRPC {old_grpc / 1e6:.1f} MB")
  return {"detections": count, "rest_bytes": rest, "grpc_bytes": grpc,
          "window_masks_rest_bytes": old_rest,
          "window_masks_grpc_bytes": old_grpc, "equal": bool(same),
          "decoders_agree": bool(decoders_agree)}


def bench_evaluation(model_dir: str, work_dir: str, batch: int,
                     repo: str) -> dict:
  """One evaluation step's masks and the evaluator's peak (section 3);
  uses only APIs that older checkouts have too."""
  sys.path.insert(0, repo)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from official.vision.ops import preprocess_ops  # pylint: disable=g-import-not-at-top
  from tensormask_tf import registry_imports  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from tensormask_tf.configs import experiments  # pylint: disable=g-import-not-at-top
  from tensormask_tf.evaluation import coco_evaluator  # pylint: disable=g-import-not-at-top
  from tensormask_tf.modeling import factory  # pylint: disable=g-import-not-at-top
  from tensormask_tf.tasks import tensormask as tensormask_task  # pylint: disable=g-import-not-at-top
  params = experiments.load_experiment(model_dir=model_dir)
  model = tensormask_task.TensorMaskTask(params.task).build_model()
  tf.train.Checkpoint(model=model).read(tf.train.latest_checkpoint(
      model_dir)).expect_partial()
  height, width = 800, 1067  # A 640x480 COCO image at the release's size.
  with Image.open(os.path.join(REFERENCE, "A.png")) as source:
    pixels = np.asarray(source.convert("RGB").resize((width, height)))
  images = tf.pad(preprocess_ops.normalize_image(tf.constant(pixels)),
                  [[0, 896 - height], [0, 1152 - width], [0, 0]])
  images = tf.tile(images[None], [batch, 1, 1, 1])
  annotations = os.path.join(work_dir, "eval_annotations.json")
  with open(annotations, "w") as f:
    json.dump({"images": [{"id": i + 1, "height": 480, "width": 640}
                          for i in range(batch)],
               "annotations": [], "categories": [
                   {"id": i, "name": str(i)} for i in
                   params.task.model.category_ids or range(1, 81)]}, f)
  sizes = tf.constant([[height, width]] * batch, tf.float32)
  detect = tf.function(lambda x: factory.postprocess(
      model, model(x, training=False), (896, 1152), params.task.model, sizes))
  found = {k: v.numpy() for k, v in detect(images).items()}
  mask_keys = [k for k in found if k.startswith("detection_mask")]
  mask_bytes = sum(found[k].nbytes for k in mask_keys)
  info = np.array([[[480, 640], [height, width], [height / 480] * 2,
                    [0, 0]]] * batch, np.float32)
  evaluator = coco_evaluator.WindowMaskCocoEvaluator(
      annotations, category_ids=params.task.model.category_ids or None)
  tracemalloc.start()
  start = time.perf_counter()
  evaluator.update_state(dict(found, source_id=np.arange(1, batch + 1),
                              image_info=info))
  seconds = time.perf_counter() - start
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  sides = found["detection_mask_sides"]
  print(f"\n3. evaluation step, batch {batch} at 896x1152 "
        f"({os.path.dirname(os.path.dirname(coco_evaluator.__file__))}): "
        f"{int(found['num_detections'].sum())} detections, mask sides "
        f"{sorted(set(sides.ravel().tolist()) - {0})}")
  print(f"   masks handed to the evaluator ({', '.join(mask_keys)}): "
        f"{mask_bytes / 1e6:.1f} MB; evaluator peak {peak / 1e6:.1f} MB, "
        f"{seconds:.1f} s")
  return {"mask_mb": mask_bytes / 1e6, "evaluator_peak_mb": peak / 1e6,
          "seconds": seconds}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", default=None)
  parser.add_argument("--work_dir", default="/tmp/bench_photos")
  parser.add_argument("--sections", default="photos,serving,evaluation")
  parser.add_argument("--eval_batch", type=int, default=2)
  parser.add_argument("--repo", default=REPO,
                      help="the checkout whose evaluation is measured")
  args = parser.parse_args()
  os.makedirs(args.work_dir, exist_ok=True)
  model_dir = args.model_dir or _model_dir(args.work_dir)
  sections = args.sections.split(",")
  results = {}
  if "photos" in sections:
    results["photos"] = bench_photos(model_dir, args.work_dir)
  if "serving" in sections:
    results["serving"] = bench_serving(model_dir, args.work_dir)
  if "evaluation" in sections:
    results["evaluation"] = bench_evaluation(model_dir, args.work_dir,
                                             args.eval_batch, args.repo)
  with open(os.path.join(args.work_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
