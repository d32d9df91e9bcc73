"""SavedModel export: stock TF ops only, loads without tensormask_tf, and
gives the in-process model's detections (issue 6)."""

import base64
import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tensormask_tf.modeling import detection_generator
from tensormask_tf.serving import client
from tensormask_tf.serving import export_module
from tensormask_tf.serving import predictor
from tests import serving_fixtures
from tests import tiny_experiment

REPO = os.path.join(os.path.dirname(__file__), "..")
# The tiny model's category ids (its 4 classes), not 1..4: every output
# must carry them.
CATEGORY_IDS = [2, 5, 7, 9]

# Runs in a fresh interpreter that imports TensorFlow only.
_LOADER = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry
path, inputs, out = sys.argv[1:4]
proto = saved_model_pb2.SavedModel()
with open(os.path.join(path, "saved_model.pb"), "rb") as f:
  proto.ParseFromString(f.read())
functions = {f.signature.name for g in proto.meta_graphs
             for f in g.graph_def.library.function}
ops = set()
for graph in proto.meta_graphs:
  ops |= {n.op for n in graph.graph_def.node}
  for function in graph.graph_def.library.function:
    ops |= {n.op for n in function.node_def}
unregistered = sorted(o for o in ops
                      if o not in functions and op_def_registry.get(o) is None)
model = tf.saved_model.load(path)
data = np.load(inputs, allow_pickle=True)
arrays = {}
for name, key in (("serving_default", "encoded"), ("image_tensor", "images"),
                  ("tf_example", "examples"), ("raw_detections", "images")):
  result = model.signatures[name](inputs=tf.constant(data[key]))
  arrays.update({f"{name}/{k}": v.numpy() for k, v in result.items()})
np.savez(out, **arrays)
print(json.dumps({"ops": len(ops), "unregistered": unregistered,
                  "signatures": sorted(model.signatures),
                  "tensormask_tf_imported": "tensormask_tf" in sys.modules}))
"""


def _encode_png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


@pytest.fixture(scope="module")
def exported(shapes_records, tmp_path_factory):
  """A tiny model's checkpoint, its export, and the fresh process' run."""
  root = tmp_path_factory.mktemp("export")
  params = tiny_experiment.tiny_shapes_experiment(shapes_records)
  params.task.model.category_ids = CATEGORY_IDS
  # Every window scores: D detections per image, masks and all.
  params.task.model.detection_generator.override(
      {"score_threshold": 0.0, "max_detections": 12, "mask_size": 32})
  tf.random.set_seed(1)
  model = tiny_experiment.build_model(params)
  checkpoint = tf.train.Checkpoint(model=model).save(str(root / "ckpt"))
  path = export_module.export_saved_model(
      params, checkpoint, str(root / "export"), version=7, image_masks=True,
      window_masks=True)

  rng = np.random.RandomState(0)
  images = [predictor.load_image(os.path.join(
      shapes_records["root"], "val", f"val_{i:06d}.png")) for i in (1, 2)]
  images.append(rng.randint(0, 255, (90, 150, 3)).astype(np.uint8))
  encoded = [_encode_png(x) for x in images]
  # Examples as in the TFRecords: the encoded image under image/encoded.
  records = [tf.train.Example(features=tf.train.Features(feature={
      "image/encoded": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[data])),
      "image/source_id": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[b"1"]))})).SerializeToString()
             for data in encoded[:2]]
  inputs = str(root / "inputs.npz")
  np.savez(inputs, encoded=np.array(encoded, dtype=object),
           images=np.stack(images[:2]), examples=np.array(records,
                                                          dtype=object))
  out = str(root / "outputs.npz")
  result = subprocess.run(
      [sys.executable, "-c", _LOADER, path, inputs, out], capture_output=True,
      text=True, timeout=600, check=False,
      env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  return {"params": params, "checkpoint": checkpoint, "path": path,
          "images": images, "report": report,
          "outputs": dict(np.load(out, allow_pickle=True))}


def test_saved_model_uses_only_stock_tensorflow_ops(exported):
  report = exported["report"]
  assert not report["tensormask_tf_imported"]
  assert report["ops"] > 20
  assert report["unregistered"] == []
  assert set(report["signatures"]) == {"serving_default", "image_tensor",
                                       "tf_example", "raw_detections"}
  names = predictor.read_class_names(os.path.join(
      exported["path"], "assets.extra", "class_names.json"))
  assert list(names) == CATEGORY_IDS


# How far from the 0.5 threshold a pixel's probability may be and still be
# pasted differently when the sampling canvas changes.
_BAND = 0.01


def _iou(a, b):
  union = np.logical_or(a, b).sum()
  return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def test_fresh_process_outputs_equal_the_in_process_model(exported):
  reference = predictor.CheckpointPredictor(exported["params"],
                                            exported["checkpoint"])
  out = exported["outputs"]
  for n, image in enumerate(exported["images"]):
    want = reference(image)
    count = int(out["serving_default/num_detections"][n])
    assert count == len(want["scores"]) == 12
    np.testing.assert_allclose(out["serving_default/detection_scores"][n],
                               want["scores"], atol=1e-4)
    np.testing.assert_allclose(out["serving_default/detection_boxes"][n],
                               want["boxes"], atol=1e-4)
    np.testing.assert_array_equal(out["serving_default/detection_classes"][n],
                                  np.array(CATEGORY_IDS)[want["classes"]])
    np.testing.assert_array_equal(
        out["serving_default/detection_mask_sides"][n], [32] * count)
    height, width = image.shape[:2]
    np.testing.assert_allclose(out["serving_default/image_info"][n][0],
                               [height, width])
    # The served PNG masks decode into exactly the masks pasted locally.
    served = predictor.detections_from_outputs(
        {k.split("/")[1]: v for k, v in out.items()
         if k.startswith("serving_default/")}, n, CATEGORY_IDS)
    np.testing.assert_array_equal(served["masks"].dense(),
                                  want["masks"].dense())
    np.testing.assert_array_equal(served["masks"].offsets,
                                  want["masks"].offsets)
    assert served["masks"].areas().min() > 0
    # The research output: the float window masks, pasted here.
    paste = lambda threshold: detection_generator.paste_window_masks(
        out["serving_default/detection_window_masks"][n],
        out["serving_default/detection_mask_sides"][n],
        out["serving_default/detection_windows"][n], (height, width),
        threshold=threshold).numpy()
    pasted = paste(0.5)
    # Pixels whose probability is clearly above / at least near 0.5.
    surely_on, maybe_on = paste(0.5 + _BAND), paste(0.5 - _BAND)
    image_masks = out["serving_default/detection_image_masks"][n]
    for d in range(count):
      assert _iou(pasted[d], want["masks"].mask(d)) >= 0.99
      # The image-size masks are the same pasting, at the batch's largest
      # size with this image in the top-left corner, sampled on a larger
      # canvas: only pixels within _BAND of the threshold may differ.
      got = image_masks[d, :height, :width]
      assert got[surely_on[d]].all() and not got[~maybe_on[d]].any()
      assert not image_masks[d, height:].any()
      assert not image_masks[d, :, width:].any()


def test_natural_masks_through_the_export_and_the_predictor(exported):
  # mask_size 0: every detection's natural mask (S = 6 or 10 at P2 for the
  # tiny model, doubled per level) in the top-left of R x R, R the batch's
  # largest; the export's pasted masks are the checkpoint predictor's.
  params = exported["params"].replace()
  params.task.model.detection_generator.mask_size = 0
  module = export_module.TensorMaskExportModule(
      params, exported["checkpoint"], image_masks=True, window_masks=True)
  images = exported["images"][:2]
  out = {k: v.numpy() for k, v in module.serve_image_tensors(
      tf.constant(np.stack(images))).items()}
  reference = predictor.CheckpointPredictor(params, exported["checkpoint"])
  natural = {side * 2**k for side in (6, 10) for k in range(4)}
  sides = out["detection_mask_sides"]
  assert out["detection_window_masks"].shape[2:] == (sides.max(),) * 2
  for n, image in enumerate(images):
    want = reference(image)
    count = int(out["num_detections"][n])
    assert count == len(want["scores"]) == 12
    # (Which sides occur depends on the briefly trained model; mixed sides
    # are covered by test_release_postprocess and the release's detections
    # in test_release_equivalence.)
    assert set(sides[n]) <= natural
    for d, side in enumerate(sides[n]):
      assert not out["detection_window_masks"][n, d, side:].any()
      assert not out["detection_window_masks"][n, d, :, side:].any()
    np.testing.assert_array_equal(out["detection_classes"][n],
                                  np.array(CATEGORY_IDS)[want["classes"]])
    height, width = image.shape[:2]
    for d in range(count):
      assert _iou(out["detection_image_masks"][n, d, :height, :width] > 0,
                  want["masks"].mask(d)) >= 0.99
    served = predictor.detections_from_outputs(out, n, CATEGORY_IDS)
    np.testing.assert_array_equal(served["masks"].dense(),
                                  want["masks"].dense())


def test_image_masks_of_padded_detection_rows_are_empty(shapes_records):
  # A trained model keeps fewer than max_detections above its score
  # threshold; the padded rows' windows are zero. Here no window passes
  # (the random head scores ~0.01), so every row is padding.
  params = tiny_experiment.tiny_shapes_experiment(shapes_records)
  params.task.model.detection_generator.override(
      {"score_threshold": 0.9, "max_detections": 5})
  module = export_module.TensorMaskExportModule(params, None,
                                                image_masks=True)
  images = tf.zeros([2, 40, 60, 3], tf.uint8)
  out = module.serve_image_tensors(images)
  assert out["num_detections"].numpy().tolist() == [0, 0]
  assert out["detection_image_masks"].shape == (2, 5, 40, 60)
  assert not out["detection_image_masks"].numpy().any()


def test_the_three_signatures_agree(exported):
  out = exported["outputs"]
  for name in ("image_tensor", "tf_example"):
    for key in ("detection_boxes", "detection_scores",
                "detection_window_masks"):
      got = out[f"{name}/{key}"]
      np.testing.assert_allclose(got, out[f"serving_default/{key}"][:2],
                                 atol=1e-5, err_msg=f"{name} {key}")
    # The same pixels in: the same binary masks out.
    for key in ("detection_masks_png_bytes", "detection_mask_offsets"):
      np.testing.assert_array_equal(out[f"{name}/{key}"],
                                    out[f"serving_default/{key}"][:2])


def test_raw_detections_are_the_served_ones_before_pasting(exported):
  out = exported["outputs"]
  raw = {k.split("/")[1]: v for k, v in out.items()
         if k.startswith("raw_detections/")}
  served = {k.split("/")[1]: v for k, v in out.items()
            if k.startswith("image_tensor/")}
  np.testing.assert_array_equal(raw["num_detections"],
                                served["num_detections"])
  np.testing.assert_array_equal(raw["detection_scores"],
                                served["detection_scores"])
  np.testing.assert_array_equal(
      np.asarray(CATEGORY_IDS)[raw["detection_classes"]],
      served["detection_classes"])
  np.testing.assert_array_equal(raw["detection_mask_sides"],
                                served["detection_mask_sides"])
  np.testing.assert_array_equal(
      detection_generator.padded_window_masks(
          raw["detection_mask_values"], raw["detection_mask_sides"]),
      served["detection_window_masks"])
  # Model-input pixels: the served boxes are them over the scale.
  scale = np.tile(raw["image_info"][:, 2:3, :], [1, 1, 2])
  np.testing.assert_allclose(raw["detection_windows"] / scale,
                             served["detection_windows"], rtol=1e-6)


def test_onnx_export_of_the_saved_model_equals_it(exported, tmp_path):
  # export_onnx.py --saved_model converts the raw_detections signature;
  # onnxruntime's outputs equal the fresh process' TensorFlow ones.
  onnx_path = str(tmp_path / "model.onnx")
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "export_onnx.py"),
       f"--saved_model={exported['path']}", f"--output={onnx_path}"],
      capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  session = predictor.OnnxPredictor(onnx_path)
  assert session.category_ids == CATEGORY_IDS
  out = exported["outputs"]
  serving_fixtures.assert_same_raw_detections(
      session.run(np.stack(exported["images"][:2])),
      {k.split("/")[1]: v for k, v in out.items()
       if k.startswith("raw_detections/")})


def test_export_refuses_to_overwrite_a_version(exported):
  with pytest.raises(FileExistsError, match="version"):
    export_module.export_saved_model(
        exported["params"], exported["checkpoint"],
        os.path.dirname(exported["path"]), version=7)


# --- The TF Serving client (scripts/serving_client.py). --------------------

def _expected(exported, n):
  out = exported["outputs"]
  count = int(out["serving_default/num_detections"][n])
  return {key: out[f"serving_default/{key}"][n][:count]
          for key in ("detection_boxes", "detection_scores",
                      "detection_classes")}


def _check_reply(exported, outputs, count):
  assert outputs["detection_boxes"].shape[0] == count
  for n in range(count):
    found = predictor.detections_from_outputs(outputs, n, CATEGORY_IDS)
    want = _expected(exported, n)
    np.testing.assert_allclose(found["boxes"], want["detection_boxes"],
                               atol=1e-4)
    np.testing.assert_allclose(found["scores"], want["detection_scores"],
                               atol=1e-5)
    np.testing.assert_array_equal(np.array(CATEGORY_IDS)[found["classes"]],
                                  want["detection_classes"])
    assert found["masks"].shape[1:] == exported["images"][n].shape[:2]
    served = predictor.detections_from_outputs(
        {k.split("/")[1]: v for k, v in exported["outputs"].items()
         if k.startswith("serving_default/")}, n, CATEGORY_IDS)
    np.testing.assert_array_equal(found["masks"].dense(),
                                  served["masks"].dense())


def test_rest_request_is_accepted_by_the_signature(exported):
  encoded = [_encode_png(x) for x in exported["images"]]
  body = json.loads(json.dumps(client.rest_request(encoded)))
  assert body["signature_name"] == "serving_default"
  # What TF Serving does with a row-format request of one input.
  values = [base64.b64decode(x["b64"]) for x in body["instances"]]
  signature = tf.saved_model.load(exported["path"]).signatures[
      body["signature_name"]]
  outputs = {k: v.numpy() for k, v in
             signature(inputs=tf.constant(values)).items()}
  _check_reply(exported, outputs, len(values))


def test_requests_without_images_are_refused():
  for make in (client.rest_request,
               lambda images: client.grpc_request("tensormask", images)):
    with pytest.raises(ValueError, match="at least one image"):
      make([])


def test_rest_and_grpc_clients_against_local_servers(exported):
  encoded = [_encode_png(x) for x in exported["images"]]
  rest, url = serving_fixtures.start_rest_server(exported["path"],
                                                 "tensormask")
  grpc_server, address = serving_fixtures.start_grpc_server(exported["path"],
                                                            "tensormask")
  try:
    _check_reply(exported, client.rest_predict(url, "tensormask", encoded), 3)
    _check_reply(exported,
                 client.grpc_predict(address, "tensormask", encoded), 3)
    with pytest.raises(client.ServingError, match="HTTP 404"):
      client.rest_predict(url, "other", encoded[:1])
    with pytest.raises(client.ServingError, match="NOT_FOUND"):
      client.grpc_predict(address, "other", encoded[:1])
  finally:
    rest.shutdown()
    rest.server_close()
    grpc_server.stop(None)
  with pytest.raises(client.ServingError):
    client.rest_predict(url, "tensormask", encoded[:1], timeout=5)


def test_serving_client_script_writes_coco_json_and_pictures(exported,
                                                             tmp_path):
  images = []
  for n, image in enumerate(exported["images"]):
    path = tmp_path / f"image{n}.png"
    Image.fromarray(image).save(path)
    images.append(path)
  # A TIFF reads locally but not on the server: skipped, the rest served.
  Image.fromarray(exported["images"][0]).save(tmp_path / "other.tif")
  server, address = serving_fixtures.start_grpc_server(exported["path"],
                                                       "tensormask")
  try:
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "serving_client.py"),
         f"--grpc={address}", f"--image={tmp_path}/image*.png",
         f"--image={tmp_path}/other.tif", "--batch_size=2",
         f"--output_dir={tmp_path / 'out'}", "--min_score=0",
         "--class_names=" + os.path.join(exported["path"], "assets.extra",
                                         "class_names.json")],
        capture_output=True, text=True, timeout=300, check=False)
  finally:
    server.stop(None)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "skipped" in result.stderr and "TIFF images are not decoded" in (
      result.stderr)
  assert "1 of 4 images could not be read or served" in result.stderr
  with open(tmp_path / "out" / "detections.json") as f:
    results = json.load(f)
  assert len(results) == 3 * 12
  first = [r for r in results if r["file_name"] == "image0.png"]
  want = _expected(exported, 0)
  # The served category ids, written as they are.
  np.testing.assert_array_equal([r["category_id"] for r in first],
                                want["detection_classes"])
  ymin, xmin, ymax, xmax = want["detection_boxes"][0]
  np.testing.assert_allclose(first[0]["bbox"],
                             [xmin, ymin, xmax - xmin, ymax - ymin], atol=1e-3)
  assert first[0]["segmentation"]["size"] == list(
      exported["images"][0].shape[:2])
  for n, image in enumerate(exported["images"]):
    picture = np.asarray(Image.open(tmp_path / "out" / f"image{n}.png"))
    assert picture.shape[2] == 3 and picture.shape[0] >= image.shape[0]


def test_predict_script_with_the_saved_model_skips_bad_files(exported,
                                                             tmp_path):
  Image.fromarray(exported["images"][0]).save(tmp_path / "good.png")
  (tmp_path / "empty.png").write_bytes(b"")
  # Readable, but 0 pixels high at the model's scale: the model refuses it.
  Image.fromarray(np.zeros((1, 3000, 3), np.uint8)).save(tmp_path / "thin.png")
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "predict.py"),
       f"--saved_model={exported['path']}", f"--image={tmp_path}/*.png",
       f"--output_dir={tmp_path / 'out'}", "--min_score=0",
       f"--overview={tmp_path / 'overview.png'}"],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0  # One file could not be read...
  assert "empty.png: the file is empty" in result.stderr
  assert "thin.png: output dimensions must be positive" in result.stderr
  assert "2 of 3 images could not be read or run" in result.stderr
  # ... and the other one was predicted.
  with open(tmp_path / "out" / "detections.json") as f:
    results = json.load(f)
  assert len(results) == 12 and {r["file_name"] for r in results} == {
      "good.png"}
  want = _expected(exported, 0)
  np.testing.assert_allclose(sorted(r["score"] for r in results),
                             sorted(want["detection_scores"]), atol=1e-5)
  assert sorted(r["category_id"] for r in results) == sorted(
      want["detection_classes"])
  assert (tmp_path / "out" / "good.png").is_file()
  # The overview holds the one picture, its longer side 256 px.
  overview = np.asarray(Image.open(tmp_path / "overview.png"))
  picture = np.asarray(Image.open(tmp_path / "out" / "good.png"))
  assert overview.shape == (256, 256, 3)
  scale = 256 / max(picture.shape[:2])
  assert (overview[round(picture.shape[0] * scale):] == 255).all()
