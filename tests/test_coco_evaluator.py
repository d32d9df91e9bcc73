"""Tests of the COCO evaluator of window-relative masks (pycocotools)."""

import json

import numpy as np
import pytest

from tensormask_tf.configs import tensormask_config
from tensormask_tf.data import shapes_dataset
from tensormask_tf.evaluation import coco_evaluator

SIZE = 96
R = 96  # window-mask side: fine enough that resampling costs no AP


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
  root = tmp_path_factory.mktemp("gt")
  json_path = shapes_dataset.write_shapes_dataset(
      str(root), "val", 4, height=SIZE, width=SIZE, seed=11)
  with open(json_path) as f:
    return json_path, json.load(f)


def _update(evaluator, predictions):
  """update_state with the padded [N, D, R, R] "detection_masks" the tests
  build turned into generate_detections' layout: each detection's M x M
  mask (M its side), concatenated in (image, detection) order."""
  predictions = dict(predictions)
  padded = predictions.pop("detection_masks")
  sides = predictions["detection_mask_sides"]
  predictions["detection_mask_values"] = np.concatenate(
      [padded[n, d, :m, :m].ravel() for n in range(len(sides))
       for d, m in enumerate(sides[n])] + [np.zeros(0, np.float32)])
  evaluator.update_state(predictions)


def _predictions(coco, scale, shift=0.0):
  """Each object detected with its box; its window a square of side 2x the
  box's longer side centred on it (partly outside the image), and the mask
  of that window taken from the ground truth by nearest sampling; all in the
  coordinates of an input resized by `scale`."""
  from pycocotools import mask as mask_api  # pylint: disable=g-import-not-at-top
  images = coco["images"]
  per_image = {im["id"]: [a for a in coco["annotations"]
                          if a["image_id"] == im["id"]] for im in images}
  d = max(len(v) for v in per_image.values())
  n = len(images)
  out = {k: np.zeros(s, np.float32) for k, s in {
      "detection_boxes": (n, d, 4), "detection_scores": (n, d),
      "detection_windows": (n, d, 4), "detection_masks": (n, d, R, R)}.items()}
  out["detection_classes"] = np.zeros((n, d), np.int32)
  out["detection_mask_sides"] = np.zeros((n, d), np.int32)
  out["num_detections"] = np.zeros(n, np.int32)
  out["source_id"] = np.array([im["id"] for im in images])
  out["image_info"] = np.array([[[SIZE, SIZE], [SIZE * scale] * 2,
                                 [scale, scale], [0, 0]]] * n, np.float32)
  for i, im in enumerate(images):
    out["num_detections"][i] = len(per_image[im["id"]])
    for j, a in enumerate(per_image[im["id"]]):
      mask = mask_api.decode(mask_api.frPyObjects(a["segmentation"], SIZE,
                                                  SIZE))[..., 0]
      x, y, w, h = a["bbox"]
      side = 2 * max(w, h)
      cy, cx = y + h / 2 + shift, x + w / 2 + shift
      window = np.array([cy - side / 2, cx - side / 2, cy + side / 2,
                         cx + side / 2])
      centres = window[0] + (np.arange(R) + 0.5) * side / R
      cols = window[1] + (np.arange(R) + 0.5) * side / R
      rows_i = np.floor(centres - shift).astype(int)
      cols_i = np.floor(cols - shift).astype(int)
      inside = ((rows_i >= 0) & (rows_i < SIZE))[:, None] & (
          (cols_i >= 0) & (cols_i < SIZE))[None, :]
      sampled = mask[np.clip(rows_i, 0, SIZE - 1)][:, np.clip(cols_i, 0,
                                                              SIZE - 1)]
      out["detection_masks"][i, j] = np.where(inside, sampled, 0)
      out["detection_mask_sides"][i, j] = R
      out["detection_windows"][i, j] = window * scale
      out["detection_boxes"][i, j] = np.array([y, x, y + h, x + w]) * scale
      out["detection_classes"][i, j] = a["category_id"] - 1
      out["detection_scores"][i, j] = 0.9
  return out


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_perfect_detections_score_full_ap(ground_truth, scale, tmp_path):
  json_path, coco = ground_truth
  evaluator = coco_evaluator.WindowMaskCocoEvaluator(json_path)
  _update(evaluator, _predictions(coco, scale))
  metrics = evaluator.result()
  assert metrics["box_AP"] == pytest.approx(1.0)
  assert metrics["mask_AP"] == pytest.approx(1.0)
  evaluator.write_results(str(tmp_path / "results.json"))
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert len(results) == len(coco["annotations"])
  assert {"bbox", "segmentation", "score"} <= results[0].keys()


def test_shifted_masks_lower_mask_ap_only(ground_truth):
  json_path, coco = ground_truth
  evaluator = coco_evaluator.WindowMaskCocoEvaluator(json_path)
  shifted = _predictions(coco, 1.0, shift=0.0)
  # Move every window (and so its mask) by 6 px; boxes stay right.
  shifted["detection_windows"] += 6.0
  _update(evaluator, shifted)
  metrics = evaluator.result()
  assert metrics["box_AP"] == pytest.approx(1.0)
  assert metrics["mask_AP"] < 0.8


def test_no_detections_give_zero_ap(ground_truth):
  json_path, _ = ground_truth
  evaluator = coco_evaluator.WindowMaskCocoEvaluator(json_path)
  assert evaluator.result()["mask_AP"] == 0.0


def test_ap_counts_only_the_images_evaluated(ground_truth):
  # Perfect detections of the first two of four images: a partial
  # evaluation (validation_steps) scores those two, not the file's four.
  json_path, coco = ground_truth
  full = _predictions(coco, 1.0)
  evaluator = coco_evaluator.WindowMaskCocoEvaluator(json_path)
  _update(evaluator, {k: v[:2] for k, v in full.items()})
  assert evaluator.result()["mask_AP"] == pytest.approx(1.0)
  # An evaluated image without detections still counts: its objects are
  # missed.
  missed = {k: v[2:3].copy() for k, v in full.items()}
  missed["num_detections"][:] = 0
  for key in ("detection_boxes", "detection_scores", "detection_windows",
              "detection_masks", "detection_classes"):
    missed[key][:] = 0
  _update(evaluator, missed)
  assert evaluator.result()["mask_AP"] < 0.9


def test_an_image_evaluated_twice_counts_once(ground_truth):
  # Its detections a second time would be duplicates, false positives.
  json_path, coco = ground_truth
  full = _predictions(coco, 1.0)
  evaluator = coco_evaluator.WindowMaskCocoEvaluator(json_path)
  _update(evaluator, full)
  _update(evaluator, {k: v[:1] for k, v in full.items()})
  metrics = evaluator.result()
  assert metrics["mask_AP"] == pytest.approx(1.0)
  assert metrics["box_AP"] == pytest.approx(1.0)


def test_mask_ap_sizes_come_from_the_masks_not_the_boxes(ground_truth,
                                                         tmp_path):
  # A false positive whose mask is tiny (4 px: "small") but whose box spans
  # the image ("medium" by area): it must count against mask APs, as
  # pycocotools does when a segm result has no bbox.
  json_path, coco = ground_truth
  out = _predictions(coco, 1.0)
  n = int(out["num_detections"][0])
  out = {k: (np.concatenate([v, np.zeros_like(v[:, :1])], 1)
             if v.ndim > 1 and k != "image_info" else v.copy())
         for k, v in out.items()}
  out["num_detections"][0] = n + 1
  out["detection_boxes"][0, n] = [0, 0, SIZE, SIZE]
  out["detection_windows"][0, n] = [0, 0, 8, 8]
  out["detection_masks"][0, n, :R // 4, :R // 4] = 1.0
  out["detection_mask_sides"][0, n] = R
  out["detection_classes"][0, n] = out["detection_classes"][0, 0]
  out["detection_scores"][0, n] = 0.95
  evaluator = coco_evaluator.WindowMaskCocoEvaluator(json_path)
  _update(evaluator, out)
  metrics = evaluator.result()
  assert metrics["mask_APs"] < 0.99
  assert metrics["box_APs"] == pytest.approx(1.0)
  # The written results are the entries as built, without pycocotools'
  # additions.
  evaluator.write_results(str(tmp_path / "r.json"))
  with open(tmp_path / "r.json") as f:
    assert all("area" not in r and "id" not in r for r in json.load(f))


def test_results_carry_the_models_category_ids(ground_truth, tmp_path):
  # A model whose classes 0..3 are category ids 3, 1, 4, 2: detections of
  # class k are written as (and matched with) annotations of that id.
  json_path, coco = ground_truth
  ids = [3, 1, 4, 2]
  out = _predictions(coco, 1.0)
  out["detection_classes"] = np.vectorize(
      lambda c: ids.index(c + 1))(out["detection_classes"]).astype(np.int32)
  evaluator = coco_evaluator.WindowMaskCocoEvaluator(json_path,
                                                     category_ids=ids)
  _update(evaluator, out)
  assert evaluator.result()["mask_AP"] == pytest.approx(1.0)
  evaluator.write_results(str(tmp_path / "r.json"))
  with open(tmp_path / "r.json") as f:
    written = sorted(r["category_id"] for r in json.load(f))
  assert written == sorted(a["category_id"] for a in coco["annotations"])
  # The same classes read as ids k + 1 miss most objects.
  plain = coco_evaluator.WindowMaskCocoEvaluator(json_path)
  _update(plain, out)
  assert plain.result()["mask_AP"] < 0.9
  # COCO's 80 ids: class 11 is id 13, class 79 is id 90.
  found = {"boxes": np.zeros((2, 4)), "classes": np.array([11, 79]),
           "scores": np.ones(2), "masks": None}
  entries = coco_evaluator.coco_results(7, found,
                                        tensormask_config.COCO_CATEGORY_IDS)
  assert [e["category_id"] for e in entries] == [13, 90]
