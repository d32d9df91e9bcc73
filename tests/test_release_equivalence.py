"""The authors' release, reproduced: a detectron2 TensorMask checkpoint
converted by `tensormask_tf.convert` computes what the release computed.

The reference (tests/data/detectron2_reference, see its README.md) was made
by running the release's own code on the CPU with a random R50 checkpoint
(seed 38, regenerated here by tests/release_checkpoint.py) on two images:
FPN levels, head outputs, natural and aligned mask logits, the final
detections with pasted masks, and one labelled image's training losses,
positives, targets and gradients. Tolerances are the README's.
"""

import json
import os
import pickle

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from official.vision.ops import preprocess_ops
from tensormask_tf import convert
from tensormask_tf.configs import experiments
from tensormask_tf.modeling import detection_generator
from tensormask_tf.modeling import detectron2_converter as converter
from tensormask_tf.modeling import factory
from tensormask_tf.ops import window_labeler
from tensormask_tf.serving import export_module
from tensormask_tf.serving import predictor as predictor_lib
from tensormask_tf.tasks import tensormask as tensormask_task

DATA = os.path.join(os.path.dirname(__file__), "data", "detectron2_reference")
IMAGES = {"A": (256, 384), "B": (384, 256)}
# The README's tolerances.
RELATIVE = 1e-4  # max |diff| <= RELATIVE * max |reference|, per array
SCORE_ABS, BOX_PX, MASK_IOU, BOX_IOU = 1e-4, 0.05, 0.99, 0.99
GRADNORM_RELATIVE = 5e-3


def _unpack(packed: np.ndarray, shape) -> np.ndarray:
  n, height, width = (int(v) for v in shape)
  return np.unpackbits(packed, axis=1, count=height * width).reshape(
      n, height, width).astype(bool)


def _assert_close(ours, reference, what: str):
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference,
                                                             np.float64)
  assert ours.shape == reference.shape, (what, ours.shape, reference.shape)
  error = np.abs(ours - reference).max() / np.abs(reference).max()
  assert error <= RELATIVE, f"{what}: max|diff| / max|ref| = {error:.2e}"


def _image(name: str) -> np.ndarray:
  return np.asarray(Image.open(os.path.join(DATA, f"{name}.png")).convert(
      "RGB"))


def _exact_override(name: str) -> str:
  """No resize and no padding: the image is the model's input."""
  height, width = IMAGES[name]
  return (f"task.model.input_size=[{height},{width},3],"
          f"task.validation_data.parser.short_side={min(height, width)},"
          f"task.validation_data.parser.long_side={max(height, width)}")


@pytest.fixture(scope="module")
def model_dir(release_checkpoint_seed38, tmp_path_factory):
  """The seed-38 release checkpoint as a .pkl, converted to a model_dir."""
  root = tmp_path_factory.mktemp("release")
  pkl = str(root / "model_final.pkl")
  with open(pkl, "wb") as f:
    pickle.dump({"model": release_checkpoint_seed38,
                 "__author__": "tensormask-tf tests"}, f, protocol=4)
  convert.convert(pkl, str(root / "converted"))
  return str(root / "converted")


_MODELS = {}


def _release_model(model_dir: str, name: str):
  """(params, model) of the converted model at image `name`'s exact size."""
  if name not in _MODELS:
    params = experiments.load_experiment(
        model_dir=model_dir, params_override=_exact_override(name))
    model = tensormask_task.TensorMaskTask(params.task).build_model()
    tf.train.Checkpoint(model=model).read(
        predictor_lib.resolve_checkpoint(model_dir)).expect_partial(
            ).assert_existing_objects_matched()
    _MODELS[name] = (params, model)
  return _MODELS[name]


def _inputs(name: str) -> tf.Tensor:
  return preprocess_ops.normalize_image(tf.constant(_image(name)))[None]


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_forward_matches_release(model_dir, name):
  ref = np.load(os.path.join(DATA, f"infer_{name}.npz"))
  _, model = _release_model(model_dir, name)
  images = _inputs(name)
  levels = model.decoder(model.backbone(images, training=False),
                         training=False)
  outputs = model(images, training=False)
  for level in range(2, 8):
    feature = levels[str(level)].numpy()[0]
    assert [1, 256, *feature.shape[:2]] == list(ref[f"fpn_p{level}_shape"])
    flat = feature.reshape(-1, 256).astype(np.float64)
    _assert_close(flat.mean(0), ref[f"fpn_p{level}_chan_mean"],
                  f"P{level} channel means")
    _assert_close(flat.std(0), ref[f"fpn_p{level}_chan_std"],
                  f"P{level} channel stds")
    y, x = ref[f"pos_p{level}_yx"].T
    _assert_close(feature[y, x], ref[f"fpn_p{level}_at_pos"], f"P{level}")
    logits = outputs["class_outputs"][str(level)].numpy()[0]
    deltas = outputs["box_outputs"][str(level)].numpy()[0]
    # Ours (dy, dx, dh, dw) per window size; the release's (dx, dy, dw, dh).
    deltas = deltas.reshape(*deltas.shape[:2], -1, 4)[..., [1, 0, 3, 2]]
    deltas = deltas.reshape(*deltas.shape[:2], -1)
    if level >= 5:  # Stored in full (NCHW).
      _assert_close(logits, ref[f"cls_logits_p{level}"][0].transpose(1, 2, 0),
                    f"class logits P{level}")
      _assert_close(deltas, ref[f"box_deltas_p{level}"][0].transpose(1, 2, 0),
                    f"box deltas P{level}")
    else:
      _assert_close(logits[y, x], ref[f"cls_logits_p{level}_at_pos"],
                    f"class logits P{level}")
      _assert_close(deltas[y, x], ref[f"box_deltas_p{level}_at_pos"],
                    f"box deltas P{level}")
  features = outputs["mask_features"]
  # Aligned masks: the 1x1 projections of the fused P2-grid features.
  y, x = ref["aligned_mask_pos_p2_yx"].T
  for level in range(6):
    for a in range(2):
      projected = model.head._mask_projections[a](  # pylint: disable=protected-access
          features[str(level + 2)]).numpy()[0]
      _assert_close(projected[y, x],
                    ref[f"aligned_mask_logits_l{level}_a{a}_at_pos"],
                    f"aligned mask logits P{level + 2} size {a}")
  # Natural masks (after SwapAlign2Nat) of detections on every level.
  for j in ref["mask_logit_det_index"]:
    level, a = int(ref["det_level"][j]) + 2, int(ref["det_anchor"][j])
    y, x = ref["det_grid_yx"][j]
    natural = model.head.mask_logits(features, level, a,
                                     tf.constant([[0, y, x]], tf.int32))
    _assert_close(natural.numpy()[0], ref[f"mask_logits_det{j}"],
                  f"natural mask of detection {j}")


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
  """IoU of two [x0, y0, x1, y1] boxes."""
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
  return w * h / union if union > 0 else 0.0


def assert_detections_match(found: dict, ref, what: str):
  """`found` (detections_in_original_image) against infer_*.npz's."""
  boxes = found["boxes"][:, [1, 0, 3, 2]]  # -> x0, y0, x1, y1
  ref_masks = _unpack(ref["det_masks_packed"], ref["det_masks_shape"])
  assert len(boxes) == len(ref["det_scores"]), (
      f"{what}: {len(boxes)} detections, the release {len(ref['det_scores'])}")
  used = set()
  for j, ref_box in enumerate(ref["det_boxes_xyxy"]):
    # Consecutive scores can be 1e-5 apart: match by class and box.
    candidates = [i for i in range(len(boxes)) if i not in used
                  and found["classes"][i] == ref["det_classes"][j]
                  and _box_iou(boxes[i], ref_box) > BOX_IOU]
    assert candidates, f"{what}: release detection {j} unmatched"
    i = min(candidates, key=lambda i: abs(found["scores"][i] -
                                          ref["det_scores"][j]))
    used.add(i)
    assert abs(found["scores"][i] - ref["det_scores"][j]) <= SCORE_ABS, (
        what, j)
    assert np.abs(boxes[i] - ref_box).max() <= BOX_PX, (what, j)
    mask = found["masks"].mask(i)
    union = (mask | ref_masks[j]).sum()
    iou = (mask & ref_masks[j]).sum() / max(union, 1)
    assert iou >= MASK_IOU, f"{what}: detection {j} mask IoU {iou:.4f}"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_candidates_and_detections_match_release(model_dir, name):
  ref = np.load(os.path.join(DATA, f"infer_{name}.npz"))
  params, model = _release_model(model_dir, name)
  outputs = model(_inputs(name), training=False)
  # Candidates: every (window, class) scoring above 0.05, exactly.
  found = set()
  for level in range(2, 8):
    logits = outputs["class_outputs"][str(level)].numpy()[0]
    probs = 1.0 / (1.0 + np.exp(-logits.reshape(*logits.shape[:2], 2, 80)))
    for y, x, a, k in zip(*np.nonzero(probs > 0.05)):
      found.add((level - 2, y, x, a, k))
  expected = {(*map(int, where), int(k)) for where, k in
              zip(ref["cand_level_y_x_a"], ref["cand_classes"])}
  assert found == expected
  predictor = predictor_lib.CheckpointPredictor(params, model_dir)
  assert_detections_match(predictor(_image(name)), ref, name)


# Slow (about 4 min on 2 cores: an R50 export): the same detections through
# the SavedModel; the in-process model is checked in the fast suite.
@pytest.mark.slow
def test_saved_model_detections_match_release(model_dir, tmp_path):
  params, _ = _release_model(model_dir, "A")
  path = export_module.export_saved_model(params, model_dir,
                                          str(tmp_path / "export"), version=1)
  saved = predictor_lib.SavedModelPredictor(path)
  assert_detections_match(saved(_image("A")),
                          np.load(os.path.join(DATA, "infer_A.npz")),
                          "SavedModel A")


def test_onnx_detections_match_release(model_dir, tmp_path):
  # The converted checkpoint through export_onnx.py's graph in
  # onnxruntime: A's exact configuration leaves A (256 x 384) and B
  # (384 x 256) unresized, so both give the release's detections; a third
  # image is resized (250 x 370 -> 256 x 379) in the graph. onnxruntime
  # equals --model_dir (CheckpointPredictor) on all three, masks pixel for
  # pixel but for pixels whose probability is 0.5 to float32 noise
  # (measured: 1 of B's 98,304 in one of its 33 masks).
  from tensormask_tf.serving import onnx_export  # pylint: disable=g-import-not-at-top
  from tests import serving_fixtures  # pylint: disable=g-import-not-at-top
  params, _ = _release_model(model_dir, "A")
  # The export runs at run-time sizes, where the 3x3 convolutions are
  # direct (Winograd needs static sizes): --model_dir likewise here, so the
  # two differ by the runtimes' summation order only, not by Winograd's
  # own rounding (tested against the direct form in
  # test_release_backbone_winograd.py).
  params = params.replace()
  params.override({"task": {"model": {
      "head": {"winograd_at_inference": False},
      "backbone": {"msra_resnet": {"winograd_at_inference": False}},
      "decoder": {"detectron2_fpn": {"winograd_at_inference": False}}}}})
  module = export_module.TensorMaskExportModule(params, model_dir)
  path = str(tmp_path / "model.onnx")
  onnx_export.convert(module.serve_raw_detections,
                      predictor_lib.class_names(params.task), path)
  session = predictor_lib.OnnxPredictor(path)
  checkpoint = predictor_lib.CheckpointPredictor(params, model_dir)
  images = {name: _image(name) for name in IMAGES}
  images["A cropped"] = _image("A")[:250, :370]
  for name, image in images.items():
    found, raw = session.detections_and_raw(image)
    if name in IMAGES:
      assert_detections_match(
          found, np.load(os.path.join(DATA, f"infer_{name}.npz")),
          f"ONNX {name}")
    serving_fixtures.assert_same_detections(
        found, checkpoint(image), f"ONNX vs --model_dir {name}",
        found_raw=raw)


def test_training_matches_release(model_dir):
  ref = np.load(os.path.join(DATA, "train_A.npz"))
  params, model = _release_model(model_dir, "A")
  params = params.replace(task={"losses": {"l2_weight_decay": 0.0}})
  task = tensormask_task.TensorMaskTask(params.task)
  spec = factory.window_spec(params.task.model)
  masks = _unpack(ref["gt_masks_packed"], ref["gt_masks_shape"])
  # Every positive's mask learned: caps above any count.
  labels = window_labeler.label_windows(
      spec, IMAGES["A"], ref["gt_boxes_xyxy"][:, [1, 0, 3, 2]],
      ref["gt_classes"].astype(np.int32), masks.astype(np.float32),
      {level: 1000 for level in spec.levels})

  # Positives, their gts, deltas and mask targets, in anchor-row order.
  positives = []
  for level in spec.levels:
    classes = labels[f"class_targets_{level}"].numpy()
    for y, x, a in zip(*np.nonzero(classes >= 0)):
      positives.append((level - 2, y, x, a))
  assert positives == [tuple(p) for p in ref["pos_level_y_x_a"]]
  assert labels["num_positives"].numpy() == ref["num_fg"]
  for (level, y, x, a), gt, deltas in zip(
      positives, ref["pos_matched_gt"], ref["pos_gt_deltas"]):
    assert labels[f"class_targets_{level + 2}"][y, x, a] == (
        ref["gt_classes"][gt])
    ours = labels[f"box_targets_{level + 2}"].numpy()[y, x, 4 * a:4 * a + 4]
    np.testing.assert_allclose(ours[[1, 0, 3, 2]], deltas, atol=1e-5)
  for level in range(6):
    for a in range(2):
      key = f"mask_target_l{level}_a{a}"
      if f"{key}_packed" not in ref.files:
        continue
      shape = ref[f"{key}_shape"]
      expected = _unpack(ref[f"{key}_packed"], shape).reshape(shape)
      key_of = lambda what: labels[window_labeler.mask_label_key(  # noqa: E731
          level + 2, a, what)].numpy()
      rows = {tuple(yx): i for i, (yx, valid) in enumerate(
          zip(key_of("indices"), key_of("valid"))) if valid > 0}
      targets = key_of("targets")
      for (_, y, x), target in zip(ref[f"{key}_nhw"], expected):
        np.testing.assert_array_equal(targets[rows[(y, x)]] > 0.5, target,
                                      err_msg=f"{key} at ({y}, {x})")

  batch = {k: v[None] for k, v in labels.items()}
  variables = converter.release_variables(model)
  names = [str(n) for n in ref["gradnorm_names"]]
  with tf.GradientTape() as tape:
    outputs = model(_inputs("A"), training=True)
    losses = task.build_losses(outputs, batch, model)
  grads = dict(zip(names, tape.gradient(losses["total_loss"],
                                        [variables[n] for n in names])))
  for ours, theirs in (("class_loss", "loss_cls"), ("box_loss", "loss_box_reg"),
                       ("mask_loss", "loss_mask")):
    np.testing.assert_allclose(losses[ours].numpy(), ref[theirs], rtol=1e-4)
  # Exactly the release's trained parameters (FREEZE_AT=2: not the stem and
  # res2), each with its gradient norm.
  trained = {v.ref() for v in model.trainable_variables}
  assert trained == {variables[n].ref() for n in names}
  for name, norm in zip(names, ref["gradnorm_values"]):
    np.testing.assert_allclose(
        np.linalg.norm(grads[name].numpy().astype(np.float64)), norm,
        rtol=GRADNORM_RELATIVE, err_msg=name)
  for key in ref.files:
    if not key.startswith("grad/"):
      continue
    name = key[len("grad/"):]
    grad = grads[name].numpy()
    if grad.ndim == 4:
      grad = grad.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if name.startswith("head.bbox_pred"):  # back to (dx, dy, dw, dh)
      grad = grad[[4 * (i // 4) + (1, 0, 3, 2)[i % 4] for i in range(8)]]
    _assert_close(grad, ref[key], f"gradient of {name}")
  # The two factored weight gradients, rebuilt in float64.
  for module, stride in (("backbone.fpn_output5", 1),
                         ("backbone.top_block.p7", 2)):
    inputs = np.pad(ref[f"gradfactor/{module}.input"].astype(np.float64),
                    [(0, 0), (0, 0), (1, 1), (1, 1)])
    grad_output = ref[f"gradfactor/{module}.grad_output"].astype(np.float64)
    height, width = grad_output.shape[2:]
    expected = np.zeros((256, 256, 3, 3))
    for ky in range(3):
      for kx in range(3):
        window = inputs[0, :, ky:ky + stride * height:stride,
                        kx:kx + stride * width:stride]
        expected[:, :, ky, kx] = np.einsum("ohw,ihw->oi", grad_output[0],
                                           window)
    _assert_close(grads[f"{module}.weight"].numpy().transpose(3, 2, 0, 1),
                  expected, f"gradient of {module}.weight")


@pytest.mark.slow
def test_readme_commands_on_a_converted_checkpoint(release_checkpoint_seed38,
                                                   tmp_path):
  # The README's "Use the authors' weights": convert, predict, export, as a
  # user runs them (about 2.5 minutes here).
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  pkl = str(tmp_path / "model_final.pkl")
  with open(pkl, "wb") as f:
    pickle.dump({"model": release_checkpoint_seed38}, f, protocol=4)
  run_dir = str(tmp_path / "tensormask_r50_1x_release")

  def run(script, *args):
    subprocess.run([sys.executable, os.path.join(root, "scripts", script),
                    *args], check=True, cwd=str(tmp_path))

  run("convert_detectron2_checkpoint.py", f"--checkpoint={pkl}",
      f"--output_dir={run_dir}")
  run("predict.py", f"--model_dir={run_dir}",
      f"--image={os.path.join(DATA, 'B.png')}",
      f"--output_dir={tmp_path / 'predictions'}", "--min_score=0.05",
      f"--params_override={_exact_override('B')}")
  with open(tmp_path / "predictions" / "detections.json") as f:
    found = json.load(f)
  with open(os.path.join(DATA, "infer_B_detections.json")) as f:
    release = json.load(f)
  key = lambda d: (d["category_id"], d["score"])  # noqa: E731
  found, release = sorted(found, key=key), sorted(release, key=key)
  assert [d["category_id"] for d in found] == [
      d["category_id"] for d in release]
  np.testing.assert_allclose([d["score"] for d in found],
                             [d["score"] for d in release], atol=SCORE_ABS)
  run("export_saved_model.py", f"--model_dir={run_dir}",
      f"--export_dir={run_dir}/saved_model", "--version=1")
  assert os.path.isfile(os.path.join(run_dir, "saved_model", "1",
                                     "saved_model.pb"))


def test_sides_not_multiples_of_32_are_padded_as_the_release_pads(model_dir):
  # The release pads a 250 x 370 image with zeros (after normalization) to
  # 256 x 384 and clips to 250 x 370: the same detections as image A with
  # those rows and columns set to the mean colour, clipped there.
  image = _image("A")[:250, :370]
  params = experiments.load_experiment(
      model_dir=model_dir,
      params_override="task.model.input_size=[250,370,3],"
      "task.validation_data.parser.short_side=250,"
      "task.validation_data.parser.long_side=370")
  found = predictor_lib.CheckpointPredictor(params, model_dir)(image)
  _, model = _release_model(model_dir, "A")
  padded = tf.pad(preprocess_ops.normalize_image(tf.constant(image)),
                  [[0, 6], [0, 14], [0, 0]])[None]
  outputs = model(padded, training=False)
  detections = factory.postprocess(
      model, outputs, (256, 384), params.task.model,
      tf.constant([[250.0, 370.0]]))
  info = np.array([[250, 370], [250, 370], [1, 1], [0, 0]], np.float32)
  expected = detection_generator.detections_in_original_image(
      {k: v.numpy() if k == "detection_mask_values" else v[0].numpy()
       for k, v in detections.items()}, info)
  assert 0 < len(found["scores"]) == len(expected["scores"])
  # The predictor's resize (at scale 1) moves the inputs by ~7e-7; through
  # the Winograd convolutions (each rounding to ~1e-5 of its largest
  # output) the scores move by up to ~2e-6.
  np.testing.assert_allclose(found["scores"], expected["scores"], atol=1e-5)
  np.testing.assert_allclose(found["boxes"], expected["boxes"], atol=1e-3)
  assert found["masks"].shape[1:] == (250, 370)
  assert (found["masks"].dense() == expected["masks"].dense()).mean() > 0.9999
