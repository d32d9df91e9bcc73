"""The ONNX export run by onnxruntime against TensorFlow: the tiny model's
detections from `export_onnx.py` and `predict.py --onnx` equal the
checkpoint's (`--model_dir`) and the SavedModel's.

(The release's checkpoint through ONNX is in test_release_equivalence.py.)
"""

import json
import os
import subprocess
import sys

import numpy as np
from official.modeling import hyperparams
import onnx
from pycocotools import mask as mask_api
import pytest
from PIL import Image
import tensorflow as tf

from tensormask_tf.modeling import detection_generator
from tensormask_tf.serving import export_module
from tensormask_tf.serving import predictor
from tests import serving_fixtures
from tests import tiny_experiment

REPO = os.path.join(os.path.dirname(__file__), "..")
CATEGORY_IDS = [2, 5, 7, 9]
SCORE_ABS, BOX_ABS = serving_fixtures.SCORE_ABS, serving_fixtures.BOX_ABS


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, os.path.join(REPO, "scripts", script),
                         *args], capture_output=True, text=True, timeout=900,
                        check=False)


@pytest.fixture(scope="module")
def exported(shapes_records, tmp_path_factory):
  """The tiny model's checkpoint, its export module and its ONNX export
  made as a user makes it (`export_onnx.py --checkpoint`; one conversion
  for all tests: each takes a minute)."""
  root = tmp_path_factory.mktemp("onnx")
  params = tiny_experiment.tiny_shapes_experiment(shapes_records)
  # Low enough that most windows score: many detections, masks resampled
  # to 32 x 32 in the graph (the antialiased resize).
  overrides = (f"task.model.category_ids={CATEGORY_IDS},".replace(" ", "") +
               "task.model.detection_generator.score_threshold=0.01,"
               "task.model.detection_generator.max_detections=20,"
               "task.model.detection_generator.mask_size=32")
  params = hyperparams.override_params_dict(params, overrides,
                                           is_strict=True)
  tf.random.set_seed(1)
  model = tiny_experiment.build_model(params)
  # A random head's mask logits are near 0: probabilities near 0.5, where
  # float32 noise flips pasted pixels. Scaled up, masks are decided as a
  # trained model's are.
  for variable in model.variables:
    if "mask_projection" in variable.name:
      variable.assign(variable * 50.0)
  checkpoint = tf.train.Checkpoint(model=model).save(str(root / "ckpt"))
  source = [f"--checkpoint={checkpoint}", "--experiment=tensormask_shapes",
            "--params_override=" + tiny_experiment.params_override_string(
                shapes_records, overrides)]
  onnx_path = str(root / "model.onnx")
  result = _run("export_onnx.py", *source, f"--output={onnx_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  rng = np.random.RandomState(0)
  images = [predictor.load_image(os.path.join(
      shapes_records["root"], "val", f"val_{i:06d}.png")) for i in (1, 2)]
  images.append(rng.randint(0, 255, (90, 150, 3)).astype(np.uint8))
  return {"params": params, "checkpoint": checkpoint, "source": source,
          "module": export_module.TensorMaskExportModule(params, checkpoint),
          "onnx": onnx_path, "images": images, "root": root}


def test_the_model_is_standard_onnx_with_dynamic_batch_and_size(exported):
  model = onnx.load(exported["onnx"])
  onnx.checker.check_model(model, full_check=True)
  assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
  dims = [d.dim_param or d.dim_value
          for d in model.graph.input[0].type.tensor_type.shape.dim]
  assert len(dims) == 4 and dims[3] == 3
  assert all(isinstance(d, str) for d in dims[:3]), dims  # symbolic
  session = predictor.OnnxPredictor(exported["onnx"])
  assert session.category_ids == CATEGORY_IDS


def test_onnxruntime_equals_tensorflow(exported):
  session = predictor.OnnxPredictor(exported["onnx"])
  checkpoint = predictor.CheckpointPredictor(exported["params"],
                                             exported["checkpoint"])
  for n, image in enumerate(exported["images"]):
    found, raw = session.detections_and_raw(image)
    serving_fixtures.assert_same_detections(
        found, checkpoint(image), f"image {n}", found_raw=raw)
  # A batch: each image's raw outputs as the graph's in TensorFlow.
  batch = np.stack(exported["images"][:2])
  serving_fixtures.assert_same_raw_detections(
      session.run(batch),
      {k: v.numpy() for k, v in
       exported["module"].serve_raw_detections(batch).items()})


def test_a_failing_image_is_reported_as_a_run_error(exported):
  session = predictor.OnnxPredictor(exported["onnx"])
  with pytest.raises(predictor.RunError):
    session.run(np.zeros((4, 5, 3), np.uint8))  # No batch dimension.


def _decode(rle: dict) -> np.ndarray:
  return mask_api.decode({"size": rle["size"],
                          "counts": rle["counts"].encode()})


def test_export_onnx_and_predict_onnx_commands(exported, tmp_path):
  # As a user runs them: predict.py --onnx (on the fixture's
  # export_onnx.py output) against --checkpoint.
  image = tmp_path / "image.png"
  Image.fromarray(exported["images"][2]).save(image)
  found = {}
  for name, flags in (("checkpoint", exported["source"]),
                      ("onnx", [f"--onnx={exported['onnx']}"])):
    result = _run("predict.py", *flags, f"--image={image}",
                  f"--output_dir={tmp_path / name}", "--min_score=0.01")
    assert result.returncode == 0, (name, result.stderr[-3000:])
    with open(tmp_path / name / "detections.json") as f:
      found[name] = json.load(f)
    assert os.path.isfile(tmp_path / name / "image.png")
  want, got = found["checkpoint"], found["onnx"]
  assert want
  key = lambda d: (d["category_id"], round(d["score"], 4), d["bbox"][:2])  # noqa: E731
  want, got = sorted(want, key=key), sorted(got, key=key)
  assert [d["category_id"] for d in got] == [d["category_id"] for d in want]
  np.testing.assert_allclose([d["score"] for d in got],
                             [d["score"] for d in want], atol=SCORE_ABS)
  np.testing.assert_allclose([d["bbox"] for d in got],
                             [d["bbox"] for d in want], atol=BOX_ABS)
  # Masks pixel for pixel but where onnxruntime's probability is 0.5 to
  # float32 noise (its raw outputs, in process, give the probabilities).
  session = predictor.OnnxPredictor(exported["onnx"])
  detections, raw = session.detections_and_raw(exported["images"][2])
  ids = detection_generator.category_ids_of(detections["classes"],
                                            session.category_ids)
  (y0, x0, y1, x1), unmatched = detections["boxes"].T, list(range(len(ids)))
  xywh = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
  for n, (d, w) in enumerate(zip(got, want)):
    twin = [i for i in unmatched if ids[i] == d["category_id"]
            and abs(detections["scores"][i] - d["score"]) <= SCORE_ABS
            and np.abs(xywh[i] - d["bbox"]).max() <= BOX_ABS][0]
    unmatched.remove(twin)
    got_mask, want_mask = _decode(d["segmentation"]), _decode(w["segmentation"])
    serving_fixtures.assert_flips_are_ties(
        got_mask, want_mask, None if (got_mask == want_mask).all() else
        serving_fixtures.pasted_probabilities(raw, twin), f"detection {n}")


def test_bad_inputs_are_named(exported, tmp_path):
  result = _run("export_onnx.py", f"--saved_model={tmp_path}",
                f"--output={tmp_path / 'x.onnx'}")
  assert result.returncode != 0
  assert "is not a SavedModel directory" in result.stderr
  not_onnx = tmp_path / "not.onnx"
  not_onnx.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="not a loadable ONNX model"):
    predictor.OnnxPredictor(str(not_onnx))
  with pytest.raises(FileNotFoundError, match="no ONNX model"):
    predictor.OnnxPredictor(str(tmp_path / "missing.onnx"))
