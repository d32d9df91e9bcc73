"""Tables 1 and 2's ablations: the shapes_large data, every row's experiment through
the task, and the report of scripts/run_ablations.py."""

import json
import os

import numpy as np
from pycocotools import mask as mask_api
import pytest
from scipy import spatial

from official.core import exp_factory
from tensormask_tf import ablations
from tensormask_tf import registry_imports  # noqa: F401
from tensormask_tf.configs import experiments
from tensormask_tf.data import coco_tfrecord
from tensormask_tf.data import shapes_dataset
from tests import training_helpers


def _solidity(mask: np.ndarray) -> float:
  """Area over the convex hull's area (1 for a convex shape)."""
  rows, cols = np.nonzero(mask)
  corners = np.concatenate([np.stack([rows + dy, cols + dx], 1)
                            for dy in (0, 1) for dx in (0, 1)])
  return mask.sum() / spatial.ConvexHull(corners).volume


def test_shapes_large_has_holes_concave_outlines_and_large_objects():
  rng = np.random.RandomState(3)
  objects = [o for _ in range(30) for o in shapes_dataset.generate_image(
      192, 192, 4, rng, variant="shapes_large")[1]]
  kinds = shapes_dataset.VARIANTS["shapes_large"][0]
  by_kind = {kind: [m for c, m in objects if kinds[c] == kind]
             for kind in kinds}
  assert all(len(masks) >= 3 for masks in by_kind.values()), {
      k: len(v) for k, v in by_kind.items()}
  # Concave: stars and crescents fill well under their convex hulls
  # (occlusion only lowers it further; a disc is about 1).
  for kind in ("star", "crescent"):
    assert np.median([_solidity(m) for m in by_kind[kind]]) < 0.8, kind
  # Rings have a hole: background at their (unoccluded) centre's row.
  assert any(not m[(r := np.nonzero(m)[0]).min() + (r.max() - r.min()) // 2,
                   (c := np.nonzero(m)[1]).min() + (c.max() - c.min()) // 2]
             for m in by_kind["ring"])
  areas = np.array([m.sum() for _, m in objects])
  assert (areas >= 96**2).sum() >= 5  # COCO's "large", AP_L's objects.
  assert areas.max() > 0.25 * 192**2


def test_unknown_variant_is_refused(tmp_path):
  with pytest.raises(ValueError, match="shapes_large"):
    shapes_dataset.write_shapes_dataset(str(tmp_path), "val", 1,
                                        variant="shapes_huge")


def test_every_row_is_its_registered_experiment():
  for row in ablations.ROWS.values():
    model = exp_factory.get_exp_config(row.experiment).task.model
    assert model.head.head_type == row.head
    assert [s // 4 for s in model.windows.base_sides] == sorted(
        row.window_sides)
    if row.lam:
      assert model.head.upscale_factor == row.lam
      assert model.head.upscale_interpolation == row.interpolation
  assert set(ablations.ROWS) == set(experiments.ABLATION_EXPERIMENTS)
  names = lambda table: [r.experiment for r in ablations.table_rows(table)]
  assert names("1") == ["tensormask_shapes_large_simple_natural",
                        "tensormask_shapes_large_simple_aligned"]
  assert names("2a") == [
      "tensormask_shapes_large_upscale_natural_lam1.5",
      "tensormask_shapes_large_upscale_aligned_lam1.5",
      "tensormask_shapes_large_upscale_natural_lam3",
      "tensormask_shapes_large_upscale_aligned_lam3",
      "tensormask_shapes_large_upscale_natural_lam5",
      "tensormask_shapes_large_upscale_aligned_lam5"]
  assert names("2d") == ["tensormask_shapes_large_bipyramid_15",
                         "tensormask_shapes_large"]
  # 2c's baseline is the best feature-pyramid head: all of them run.
  assert set(names("2c")) == {r.experiment for r in
                              ablations.FEATURE_PYRAMID_ROWS} | {
                                  "tensormask_shapes_large_bipyramid_15"}
  assert set(names("all")) == set(ablations.ROWS)
  with pytest.raises(ValueError, match="2e"):
    ablations.table_rows("2e")


@pytest.fixture(scope="module")
def shapes_large_records(tmp_path_factory):
  root = tmp_path_factory.mktemp("shapes_large")
  for split, count, seed in (("train", 4, 0), ("val", 2, 1)):
    json_path = shapes_dataset.write_shapes_dataset(
        str(root), split, count, height=192, width=192, seed=seed,
        variant="shapes_large")
    coco_tfrecord.write_coco_tfrecords(
        json_path, str(root / split), str(root / "tfrecords" / split), 1)
  return str(root)


@pytest.mark.parametrize("experiment", sorted(experiments.ABLATION_EXPERIMENTS))
def test_every_ablation_experiment_trains_and_evaluates(
    shapes_large_records, experiment):
  root = shapes_large_records
  params = exp_factory.get_exp_config(experiment)
  params.override({"task": {
      "annotation_file": os.path.join(root, "val.json"),
      "train_data": {"input_path": os.path.join(root, "tfrecords", "train*"),
                     "global_batch_size": 2},
      "validation_data": {"input_path": os.path.join(root, "tfrecords",
                                                     "val*"),
                          "global_batch_size": 2}}}, is_strict=True)
  row = ablations.ROWS[experiment]
  task, model, _ = training_helpers.build_task(params)
  _, labels = next(iter(task.build_inputs(params.task.train_data)))
  # The paper's mask sides: S x S on each level's grid for the feature
  # pyramid, S * 2**k on P2's for the bipyramid (sides in increasing order).
  for level in (2, 3, 4):
    for a, side in enumerate(sorted(row.window_sides)):
      expected = side * 2**(level - 2) if row.head == "bipyramid" else side
      assert labels[f"mask_targets_{level}_{a}"].shape[2:] == (expected,
                                                               expected)
  result = training_helpers.train_then_evaluate(task, model, params)
  assert 0.0 <= result["mask_AP"] <= 1.0


def _write_run(root, experiment, seed, ap, apl):
  path = ablations.run_dir(root, ablations.ROWS[experiment], seed)
  os.makedirs(path)
  metrics = {f"mask_{m}": 0.5 for m in ablations.METRICS}
  metrics.update(mask_AP=ap, mask_APl=apl)
  with open(os.path.join(path, "metrics.json"), "w") as f:
    json.dump({"experiment": experiment, "seed": seed, "wall_s": 300.0,
               "metrics": metrics}, f)


def test_report_means_seeds_and_takes_the_paper_differences(tmp_path):
  root = str(tmp_path)
  natural5 = "tensormask_shapes_large_upscale_natural_lam5"
  aligned5 = "tensormask_shapes_large_upscale_aligned_lam5"
  aligned3 = "tensormask_shapes_large_upscale_aligned_lam3"
  bipyramid = "tensormask_shapes_large_bipyramid_15"
  for seed, (n, a, a3, b) in enumerate([(0.10, 0.30, 0.34, 0.40),
                                        (0.14, 0.32, 0.36, 0.38)]):
    _write_run(root, natural5, seed, n, 0.2)
    _write_run(root, aligned5, seed, a, 0.3)
    _write_run(root, aligned3, seed, a3, 0.4)
    _write_run(root, bipyramid, seed, b, 0.6)
  results = ablations.collect(root, repeats=2)
  assert results[natural5]["AP"] == pytest.approx(12.0)
  assert results[natural5]["per_seed"]["AP"] == [10.0, 14.0]
  assert results[natural5]["wall_s"] == 600.0
  assert ablations.best_feature_pyramid(results) == aligned3
  text = ablations.markdown(results, "python scripts/run_ablations.py", "x",
                            figure=None)
  # Aligned - natural at lam 5: 31 - 12 = +19.0 (seeds +20.0, +18.0).
  assert ("| 2a | aligned - natural, lam=5 | +19.0 | +20.0, +18.0 | "
          "+15.6 AP (natural 13.5, aligned 29.1) | yes |") in text
  # Bipyramid 39 - best feature pyramid 35: +4.0, AP_L 60 - 40.
  assert ("| 2c | tensor bipyramid - best feature-pyramid head | +4.0 "
          "(AP_S +0.0, AP_M +0.0, AP_L +20.0; best: aligned, bilinear, "
          "lam=3) |") in text
  assert "| 2a | aligned - natural, lam=3 | not run |" in text
  assert ("| natural, bilinear, lam=5 | 12.0 | 50.0 | 50.0 | 50.0 | 50.0 | "
          "20.0 |  | 2 | 10m00s | 13.5 |") in text
  assert "on x: 8 runs, 40m00s of training and evaluation in all." in text
  rows = ablations.report_rows(results)
  row = next(r for r in rows if r["table"] == "2a"
             and r["experiment"] == aligned5)
  assert (row["head"], row["lam"], row["AP"], row["APl"], row["seeds"]) == (
      "upscale_aligned", 5, 31.0, 30.0, [0, 1])
  # Only seeds 0..repeats-1 count.
  assert ablations.collect(root, repeats=1)[natural5]["AP"] == 10.0


def test_a_previous_report_is_reused_and_new_runs_join_it(tmp_path):
  # docs/ablations.json's rows count as finished runs: run_table skips
  # them, collect takes their per-seed values; runs on disk join them.
  root = str(tmp_path / "runs")
  simple_n = "tensormask_shapes_large_simple_natural"
  simple_a = "tensormask_shapes_large_simple_aligned"
  nearest = "tensormask_shapes_large_upscale_aligned_nearest_lam1.5"
  bilinear = "tensormask_shapes_large_upscale_aligned_lam1.5"
  for seed, (n, a, near, bil) in enumerate([(0.10, 0.104, 0.171, 0.165),
                                            (0.12, 0.122, 0.170, 0.172)]):
    _write_run(root, simple_n, seed, n, 0.2)
    _write_run(root, simple_a, seed, a, 0.2)
    _write_run(root, nearest, seed, near, 0.2)
  report = tmp_path / "ablations.json"
  with open(report, "w") as f:
    json.dump(ablations.report_rows(ablations.collect(root, 2)), f)
  previous = ablations.read_report(str(report))
  assert previous[simple_n][1]["per_seed"]["AP"] == 12.0
  assert previous[simple_n][0]["wall_s"] == 300.0
  fresh = str(tmp_path / "fresh")
  for seed, value in enumerate((0.165, 0.172)):
    _write_run(fresh, bilinear, seed, value, 0.2)
  ran = []
  ablations.run_table("1", 2, "unused", fresh, report=ran.append,
                      previous=previous)
  assert "table 1: 4 runs, 4 already done, 0 to run" in ran[0]
  results = ablations.collect(fresh, 2, previous=previous)
  assert results[simple_n]["per_seed"]["AP"] == [10.0, 12.0]
  assert results[bilinear]["per_seed"]["AP"] == [16.5, 17.2]
  text = ablations.markdown(results, "cmd", "x", figure=None)
  # The paper's simple heads are equal: +0.3 is within 0.5 AP.
  assert ("| 1 | aligned - natural, simple heads | +0.3 | +0.4, +0.2 | "
          "equal within 0.2 AP | yes |") in text
  # Bilinear - nearest = 16.85 - 17.05: the other sign, but within the
  # seeds' spread (bilinear 16.5 .. 17.2).
  assert ("| 2b | bilinear - nearest (aligned), lam=1.5 | -0.2 | -0.6, +0.2 "
          "| +0.3 AP (nearest 29.4, bilinear 29.7) | within seed noise "
          "(0.7 AP) |") in text
  row = next(r for r in ablations.report_rows(results)
             if r["table"] == "1" and r["experiment"] == simple_a)
  assert (row["head"], row["lam"], row["row"]) == (
      "simple_aligned", None, "simple aligned")
  assert next(r for r in ablations.report_rows(results)
              if r["experiment"] == bilinear)["lam"] == 1.5


def test_matched_mask_iou_takes_each_ground_truths_best_detection(tmp_path):
  def rle(mask):
    encoded = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}

  small = np.zeros((200, 200), bool)
  small[:10, :10] = True  # 100 px: COCO small.
  large = np.zeros((200, 200), bool)
  large[100:, :100] = True  # 10000 px: large.
  annotations = [
      {"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
       "area": int(m.sum()), "bbox": box,
       "segmentation": shapes_dataset.uncompressed_rle(m)}
      for i, (m, box) in enumerate([(small, [0, 0, 10, 10]),
                                    (large, [0, 100, 100, 100])])]
  annotation_file = tmp_path / "val.json"
  annotation_file.write_text(json.dumps({
      "images": [{"id": 1, "height": 200, "width": 200}],
      "annotations": annotations,
      "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
  half, three_quarters = small.copy(), large.copy()
  half[:, 5:] = False  # IoU 50 / 100 with the small one.
  three_quarters[175:] = False  # 7500 / 10000 with the large one.
  detections = [
      # The best-scoring match of the small object.
      {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10],
       "score": 0.9, "segmentation": rle(half)},
      # Exact, but a lower score: not its best detection.
      {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10],
       "score": 0.5, "segmentation": rle(small)},
      # Exact and the highest score, but another class.
      {"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10],
       "score": 0.99, "segmentation": rle(small)},
      # The large object's only detection with box IoU >= 0.5 (0.75).
      {"image_id": 1, "category_id": 1, "bbox": [0, 100, 100, 75],
       "score": 0.3, "segmentation": rle(three_quarters)},
      # Exact mask and a higher score, but box IoU 0.25 < 0.5.
      {"image_id": 1, "category_id": 1, "bbox": [0, 100, 50, 50],
       "score": 0.8, "segmentation": rle(large)},
  ]
  detections_file = tmp_path / "detections.json"
  detections_file.write_text(json.dumps(detections))
  ious = ablations.matched_mask_iou(str(annotation_file),
                                    str(detections_file))
  assert ious["IoUs"] == pytest.approx(50.0)
  assert np.isnan(ious["IoUm"])
  assert ious["IoUl"] == pytest.approx(75.0)


def test_run_reuses_a_finished_run_and_names_a_failed_ones_log(tmp_path):
  root = str(tmp_path)
  _write_run(root, "tensormask_shapes_large", 0, 0.4, 0.5)
  done = ablations.run(ablations.ROWS["tensormask_shapes_large"], 0,
                       "no/data", root)
  assert done["metrics"]["mask_AP"] == 0.4
  missing = ablations.Row("tensormask_no_such_row", "bipyramid", None, None,
                          (15,))
  with pytest.raises(RuntimeError, match="unknown experiment") as error:
    ablations.run(missing, 0, "no/data", root)
  assert "tensormask_no_such_row/seed0/train.log" in str(error.value)
