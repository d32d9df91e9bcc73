"""The paper's Tables 1 and 2 (its mask-representation ablations),
measured on the synthetic `shapes_large` dataset: the rows, one seeded run
per row and seed, and the report (docs/ablations.md, docs/ablations.json).

`scripts/run_ablations.py` is the command. Each run trains and evaluates a
registered experiment of `configs.experiments.ABLATION_EXPERIMENTS` in a
child process (a fresh TensorFlow, its log in `<run_dir>/train.log`) and
leaves `<run_dir>/metrics.json`; a run that has one, or whose row and seed
the previous report (docs/ablations.json) holds, is not run again, so a
table can be extended (more seeds, more rows) without repeating work.
"""

import dataclasses
import json
import multiprocessing
import os
import time
from typing import Callable, Sequence

from official.core import exp_factory
from tensormask_tf import train
from tensormask_tf.configs import experiments

# Sub-tables and what they compare, with the paper's numbers (COCO val2017,
# R50-FPN, 72 epochs; AP in percent).
FEATURE_PYRAMID = "feature pyramid"


@dataclasses.dataclass(frozen=True)
class Row:
  """One configuration: a registered experiment."""
  experiment: str
  head: str  # head_type
  lam: int | float | None  # upscale_factor of the upscale heads
  interpolation: str | None  # of the upscale heads
  window_sides: tuple[int, ...]  # S of each window size, in mask pixels

  @property
  def label(self) -> str:
    if self.head == "bipyramid":
      sides = ", ".join(f"{s}x{s}" for s in self.window_sides)
      return f"tensor bipyramid ({sides})"
    kind, representation = self.head.split("_")
    if kind == "simple":
      return f"simple {representation}"
    return f"{representation}, {self.interpolation}, lam={self.lam}"


@dataclasses.dataclass(frozen=True)
class Comparison:
  """variant - baseline, as the paper's sub-table reports it."""
  table: str
  name: str
  baseline: str  # experiment, or FEATURE_PYRAMID: the best of them
  variant: str
  paper_ap_delta: float  # 0: the paper finds the two equal
  paper: str  # the paper's numbers, as text


def _row(experiment: str) -> Row:
  """The row of a registered experiment, read from its config."""
  model = exp_factory.get_exp_config(experiment).task.model
  head = model.head
  upscale = head.head_type.startswith("upscale")
  stride = 2**model.min_level
  lam = head.upscale_factor
  return Row(experiment, head.head_type,
             (int(lam) if float(lam).is_integer() else lam) if upscale
             else None,
             head.upscale_interpolation if upscale else None,
             tuple(sorted(side // stride
                          for side in model.windows.base_sides)))


ROWS = {name: _row(name) for name in experiments.ABLATION_EXPERIMENTS}
FEATURE_PYRAMID_ROWS = tuple(row for row in ROWS.values()
                             if row.head != "bipyramid")
_PREFIX = "tensormask_shapes_large"
BIPYRAMID_15 = f"{_PREFIX}_bipyramid_15"
BIPYRAMID_15_11 = _PREFIX

COMPARISONS = (
    Comparison("1", "aligned - natural, simple heads",
               f"{_PREFIX}_simple_natural", f"{_PREFIX}_simple_aligned", 0.0,
               "equal within 0.2 AP"),
    Comparison("2a", "aligned - natural, lam=1.5",
               f"{_PREFIX}_upscale_natural_lam1.5",
               f"{_PREFIX}_upscale_aligned_lam1.5", 0.9,
               "+0.9 AP (natural 28.8, aligned 29.7)"),
    Comparison("2a", "aligned - natural, lam=3",
               f"{_PREFIX}_upscale_natural_lam3",
               f"{_PREFIX}_upscale_aligned_lam3", 4.1, "+4.1 AP"),
    Comparison("2a", "aligned - natural, lam=5",
               f"{_PREFIX}_upscale_natural_lam5",
               f"{_PREFIX}_upscale_aligned_lam5", 15.6,
               "+15.6 AP (natural 13.5, aligned 29.1)"),
    Comparison("2b", "bilinear - nearest (aligned), lam=1.5",
               f"{_PREFIX}_upscale_aligned_nearest_lam1.5",
               f"{_PREFIX}_upscale_aligned_lam1.5", 0.3,
               "+0.3 AP (nearest 29.4, bilinear 29.7)"),
    Comparison("2b", "bilinear - nearest (aligned), lam=3",
               f"{_PREFIX}_upscale_aligned_nearest_lam3",
               f"{_PREFIX}_upscale_aligned_lam3", 1.0, "+1.0 AP"),
    Comparison("2b", "bilinear - nearest (aligned), lam=5",
               f"{_PREFIX}_upscale_aligned_nearest_lam5",
               f"{_PREFIX}_upscale_aligned_lam5", 3.2, "+3.2 AP"),
    Comparison("2c", "tensor bipyramid - best feature-pyramid head",
               FEATURE_PYRAMID, BIPYRAMID_15, 4.1, "+4.1 AP, AP_L +7.0"),
    Comparison("2d", "two window sizes (15, 11) - one (15)",
               BIPYRAMID_15, BIPYRAMID_15_11, 1.6, "+1.6 AP"),
)
# The paper's AP of rows whose absolute numbers it states for this layout
# (2a and 2b at lam = 1.5 and 5); its other rows are compared by their
# differences.
PAPER_AP = {f"{_PREFIX}_upscale_natural_lam1.5": 28.8,
            f"{_PREFIX}_upscale_aligned_lam1.5": 29.7,
            f"{_PREFIX}_upscale_aligned_nearest_lam1.5": 29.4,
            f"{_PREFIX}_upscale_natural_lam5": 13.5,
            f"{_PREFIX}_upscale_aligned_lam5": 29.1}
TABLES = ("1", "2a", "2b", "2c", "2d")
FIGURE_MIN_SCORE = 0.3
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MASK_IOU = ("IoUs", "IoUm", "IoUl")  # matched_mask_iou's


def table_rows(table: str) -> list[Row]:
  """The rows a sub-table needs ("all": every row), in run order."""
  if table != "all" and table not in TABLES:
    raise ValueError(f"table must be one of {TABLES} or 'all', got "
                     f"{table!r}")
  names = []
  for c in COMPARISONS:
    if table in ("all", c.table):
      names += ([r.experiment for r in FEATURE_PYRAMID_ROWS]
                if c.baseline == FEATURE_PYRAMID
                else [c.baseline]) + [c.variant]
  return [ROWS[name] for name in dict.fromkeys(names)]


# ---------------------------------------------------------------------------
# Runs.
# ---------------------------------------------------------------------------
def run_dir(output_root: str, row: Row, seed: int) -> str:
  return os.path.join(output_root, row.experiment, f"seed{seed}")


def read_run(path: str) -> dict | None:
  """A finished run's {"metrics", "seed", "wall_s", ...}, or None."""
  metrics_path = os.path.join(path, "metrics.json")
  if not os.path.isfile(metrics_path):
    return None
  with open(metrics_path) as f:
    return json.load(f)


def _train_and_evaluate(experiment: str, seed: int, data_dir: str,
                        path: str) -> None:
  """The child process: one seeded train_and_eval, logged to a file."""
  log = os.open(os.path.join(path, "train.log"),
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(log, 1)
  os.dup2(log, 2)
  # pylint: disable=g-import-not-at-top
  from absl import logging
  import tf_keras
  from tensormask_tf import registry_imports  # noqa: F401
  # pylint: enable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)  # train.py's progress lines, ETA.
  tf_keras.utils.set_random_seed(seed)
  params = experiments.load_experiment(experiment=experiment)
  params.override({"task": {
      "annotation_file": os.path.join(data_dir, "val.json"),
      "train_data": {"seed": seed, "input_path": os.path.join(
          data_dir, "tfrecords", "train*")},
      "validation_data": {"input_path": os.path.join(
          data_dir, "tfrecords", "val*")}}}, is_strict=True)
  start = time.time()
  metrics = train.run(params, path, "train_and_eval")
  result = {"experiment": experiment, "seed": seed,
            "wall_s": round(time.time() - start, 1), "metrics": metrics}
  with open(os.path.join(path, "metrics.json"), "w") as f:
    json.dump(result, f, indent=1)


def run(row: Row, seed: int, data_dir: str, output_root: str) -> dict:
  """Trains and evaluates one row with one seed (unless done already);
  returns read_run's dict.

  Raises:
    RuntimeError: the run failed (its log's path and last lines given).
  """
  path = run_dir(output_root, row, seed)
  done = read_run(path)
  if done is not None:
    return done
  os.makedirs(path, exist_ok=True)
  child = multiprocessing.get_context("spawn").Process(
      target=_train_and_evaluate, args=(row.experiment, seed, data_dir, path))
  child.start()
  child.join()
  done = read_run(path)
  if child.exitcode != 0 or done is None:
    log_path = os.path.join(path, "train.log")
    with open(log_path) as f:
      tail = "".join(f.readlines()[-15:])
    raise RuntimeError(f"{row.experiment} seed {seed} failed (exit code "
                       f"{child.exitcode}); its log, {log_path}, ends:\n"
                       f"{tail}")
  return done


def run_table(table: str, repeats: int, data_dir: str, output_root: str,
              report: Callable[[str], None] = print,
              previous: dict[str, dict[int, dict]] | None = None) -> None:
  """Runs every (row, seed) of a sub-table not run yet (in output_root or
  `previous`, `read_report`'s), reporting progress and an ETA (from this
  call's mean run time) after each."""
  previous = previous or {}
  jobs = [(row, seed) for row in table_rows(table) for seed in range(repeats)]
  todo = [(row, seed) for row, seed in jobs
          if read_run(run_dir(output_root, row, seed)) is None
          and seed not in previous.get(row.experiment, {})]
  report(f"[ablations] table {table}: {len(jobs)} runs, "
         f"{len(jobs) - len(todo)} already done, {len(todo)} to run")
  start = time.time()
  for i, (row, seed) in enumerate(todo, 1):
    result = run(row, seed, data_dir, output_root)
    elapsed = time.time() - start
    eta = elapsed / i * (len(todo) - i)
    report(f"[ablations] {i}/{len(todo)} {row.experiment} seed {seed}: "
           f"mask AP {100 * result['metrics']['mask_AP']:.1f} "
           f"({train.duration(result['wall_s'])}); ETA {train.duration(eta)}")


# ---------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------
def matched_mask_iou(annotation_file: str, detections_file: str
                     ) -> dict[str, float]:
  """The masks' quality apart from detection's: the mean mask IoU between
  each ground truth and its best detection (same category, box IoU >= 0.5,
  the highest score), by COCO area, in percent: {"IoUs": < 32**2 px,
  "IoUm": < 96**2, "IoUl": the rest}; ground truths without a matching
  detection do not count (NaN for an empty bucket)."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from pycocotools import coco
  from pycocotools import mask as mask_api
  # pylint: enable=g-import-not-at-top
  ground_truth = coco.COCO(annotation_file)
  with open(detections_file) as f:
    detections = json.load(f)
  by_image = {}
  for d in detections:
    by_image.setdefault(d["image_id"], []).append(d)
  ious = {"IoUs": [], "IoUm": [], "IoUl": []}
  for annotation in ground_truth.dataset["annotations"]:
    candidates = [d for d in by_image.get(annotation["image_id"], [])
                  if d["category_id"] == annotation["category_id"]]
    if not candidates:
      continue
    box_ious = mask_api.iou([d["bbox"] for d in candidates],
                            [annotation["bbox"]], [0])[:, 0]
    matched = [d for d, iou in zip(candidates, box_ious) if iou >= 0.5]
    if not matched:
      continue
    best = max(matched, key=lambda d: d["score"])
    iou = mask_api.iou([best["segmentation"]],
                       [ground_truth.annToRLE(annotation)], [0])[0, 0]
    area = annotation["area"]
    ious["IoUs" if area < 32**2 else "IoUm" if area < 96**2 else "IoUl"
         ].append(100 * iou)
  return {k: float(np.mean(v)) if v else float("nan") for k, v in
          ious.items()}


def read_report(path: str | None) -> dict[str, dict[int, dict]]:
  """The runs a previous report (docs/ablations.json) holds: {experiment:
  {seed: {"per_seed": {metric: value}, "wall_s": seconds}}} (a row's time
  shared equally by its seeds); {} without a report."""
  if not path or not os.path.isfile(path):
    return {}
  with open(path) as f:
    rows = json.load(f)
  runs = {}
  for row in rows:
    seeds = row["seeds"]
    runs[row["experiment"]] = {
        seed: {"per_seed": {m: v[i] for m, v in row["per_seed"].items()},
               "wall_s": row["wall_s"] / len(seeds)}
        for i, seed in enumerate(seeds)}
  return runs


def _run_result(output_root: str, row: Row, run: dict,
                annotation_file: str | None) -> dict:
  """read_run's dict as read_report's: metrics in percent, rounded."""
  per_seed = {m: round(100 * run["metrics"][f"mask_{m}"], 2)
              for m in METRICS}
  if annotation_file:
    ious = matched_mask_iou(annotation_file, os.path.join(
        run_dir(output_root, row, run["seed"]), "coco_detections.json"))
    per_seed.update({m: round(ious[m], 2) for m in MASK_IOU})
  return {"per_seed": per_seed, "wall_s": run["wall_s"]}


def collect(output_root: str, repeats: int,
            annotation_file: str | None = None,
            previous: dict[str, dict[int, dict]] | None = None
            ) -> dict[str, dict]:
  """{experiment: {metric: mean in percent, "seeds", "per_seed", "wall_s"}}
  of the rows with at least one finished run among seeds 0..repeats-1:
  runs in output_root, else those of `previous` (`read_report`); with an
  annotation file, `matched_mask_iou`'s too (MASK_IOU)."""
  previous = previous or {}
  results = {}
  for row in ROWS.values():
    runs = {}
    for seed in range(repeats):
      run = read_run(run_dir(output_root, row, seed))
      if run is not None:
        runs[seed] = _run_result(output_root, row, run, annotation_file)
      elif seed in previous.get(row.experiment, {}):
        runs[seed] = previous[row.experiment][seed]
    if not runs:
      continue
    metrics = [m for m in METRICS + MASK_IOU
               if all(m in r["per_seed"] for r in runs.values())]
    per_seed = {m: [r["per_seed"][m] for r in runs.values()]
                for m in metrics}
    results[row.experiment] = {
        **{m: round(sum(v) / len(v), 2) for m, v in per_seed.items()},
        "seeds": list(runs), "per_seed": per_seed,
        "wall_s": round(sum(r["wall_s"] for r in runs.values()), 1)}
  return results


def best_feature_pyramid(results: dict[str, dict]) -> str | None:
  """The feature-pyramid row with the highest mean AP, if any ran."""
  measured = [r.experiment for r in FEATURE_PYRAMID_ROWS
              if r.experiment in results]
  return max(measured, key=lambda e: results[e]["AP"]) if measured else None


def report_rows(results: dict[str, dict]) -> list[dict]:
  """docs/ablations.json: one object per (sub-table, row)."""
  rows = []
  for table in TABLES:
    for row in table_rows(table):
      if row.experiment not in results:
        continue
      rows.append({"table": table, "row": row.label,
                   "experiment": row.experiment, "head": row.head,
                   "lam": row.lam, "interpolation": row.interpolation,
                   "window_sides": list(row.window_sides),
                   **results[row.experiment]})
  return rows


def _delta(results, comparison: Comparison, metric: str = "AP"):
  baseline = (best_feature_pyramid(results)
              if comparison.baseline == FEATURE_PYRAMID
              else comparison.baseline)
  if baseline not in results or comparison.variant not in results:
    return None, baseline
  return (results[comparison.variant][metric] - results[baseline][metric],
          baseline)


def markdown(results: dict[str, dict], command: str, machine: str,
             figure: str | None) -> str:
  """docs/ablations.md."""
  runs = sum(len(r["seeds"]) for r in results.values())
  wall = sum(r["wall_s"] for r in results.values())
  lines = [
      "# The paper's Tables 1 and 2, measured",
      "",
      "TensorMask's mask-representation ablations (the paper's Tables 1 "
      "and 2), "
      "trained and evaluated here on the synthetic `shapes_large` dataset "
      "(192-px images of rings, stars, crescents and wavy blobs, 24 px to "
      "95% of the image; 1000 training and 200 validation images) rather "
      "than COCO: ResNet-18-FPN, P2..P4, 500 steps of batch 8 from scratch. "
      "Mask AP in percent on the validation split, the mean over the seeds "
      "listed; the paper's numbers are COCO val2017 with R50-FPN and 72 "
      "epochs, so only the signs and sizes of the differences compare.",
      "",
      f"Made by `{command}` on {machine}: {runs} runs, "
      f"{train.duration(wall)} of training and evaluation in all.",
      "",
      "Rows (registered experiments, `tensormask_tf/configs/experiments.py`"
      "): the feature-pyramid heads predict 15 x 15 masks (one window size, "
      "60 px at P2) on each level's own grid: the simple heads (Table 1) "
      "directly, the upscale heads from (15/lam) x (15/lam) upscaled by "
      "lam (1.5: 10 x 10, 3: 5 x 5, 5: 3 x 3); the tensor bipyramid "
      "predicts 15 * 2**k masks at level k. docs/model.md describes the "
      "heads.",
      "",
      "Matched-mask IoU measures the masks apart from the detector: the "
      "mean mask IoU between each ground truth and its best detection "
      "(same class, box IoU >= 0.5, the highest score), by COCO size "
      "(S: area < 32^2 px, M: < 96^2, L: the rest); AP mixes it with how "
      "well each row detects.",
      "",
      "## Differences (the paper's claims)",
      "",
      "| table | comparison | ours: delta AP | per seed | paper | agrees |",
      "| --- | --- | --- | --- | --- | --- |",
  ]
  for c in COMPARISONS:
    delta, baseline = _delta(results, c)
    if delta is None:
      lines.append(f"| {c.table} | {c.name} | not run | | {c.paper} | |")
      continue
    per_seed = _per_seed_deltas(results, baseline, c.variant, "AP")
    agrees = _agrees(c, delta, _seed_spread(results, baseline, c.variant))
    extra = ""
    if c.baseline == FEATURE_PYRAMID:
      by_size = ", ".join(f"AP_{m[-1].upper()} {_delta(results, c, m)[0]:+.1f}"
                          for m in ("APs", "APm", "APl"))
      if all(m in results[baseline] for m in MASK_IOU):
        by_size += "; matched-mask IoU S/M/L " + "/".join(
            f"{_delta(results, c, m)[0]:+.1f}" for m in MASK_IOU)
      extra = f" ({by_size}; best: {ROWS[baseline].label})"
    lines.append(
        f"| {c.table} | {c.name} | {delta:+.1f}{extra} | "
        f"{', '.join(f'{d:+.1f}' for d in per_seed)} | {c.paper} | "
        f"{agrees} |")
  for table in TABLES:
    lines += ["", f"## Table {table}", "",
              "| row | AP | AP50 | AP75 | AP_S | AP_M | AP_L | matched-mask "
              "IoU S / M / L | seeds | train + eval time | paper AP |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | "
              "--- |"]
    for row in table_rows(table):
      r = results.get(row.experiment)
      paper = PAPER_AP.get(row.experiment, "")
      if r is None:
        lines.append(f"| {row.label} | not run | | | | | | | | | {paper} |")
        continue
      ious = " / ".join(f"{r[m]:.1f}" for m in MASK_IOU if m in r)
      lines.append(
          f"| {row.label} | " + " | ".join(f"{r[m]:.1f}" for m in METRICS)
          + f" | {ious} | {len(r['seeds'])} | {train.duration(r['wall_s'])} | "
          f"{paper} |")
  if figure:
    lines += ["", "## Natural vs aligned masks at lam = 5 (the paper's "
              "Fig. 9)", "",
              "The same validation images, detections scoring >= "
              f"{FIGURE_MIN_SCORE}; left: "
              "`upscale_natural`, right: `upscale_aligned` (seed 0 of each).",
              "", f"![natural vs aligned]({figure})"]
  return "\n".join(lines) + "\n"


def _agrees(comparison: Comparison, delta: float, noise: float) -> str:
  """Whether a difference agrees with the paper's: the same sign, or for a
  pair the paper finds equal, a difference no larger than `noise` (the
  larger seed-to-seed spread of the two rows' AP) or 0.5 AP. A difference
  of the other sign but within that noise is reported as such, not as
  a disagreement."""
  bound = max(noise, 0.5)
  if not comparison.paper_ap_delta:
    return "yes" if abs(delta) <= bound else "NO"
  if delta * comparison.paper_ap_delta > 0:
    return "yes"
  if abs(delta) <= bound:
    return f"within seed noise ({noise:.1f} AP)"
  return "NO"


def _seed_spread(results: dict[str, dict], *experiments: str) -> float:
  """The larger max - min of per-seed AP over the given rows."""
  return max(max(v) - min(v) for v in
             (results[e]["per_seed"]["AP"] for e in experiments))


def _per_seed_deltas(results, baseline: str, variant: str,
                     metric: str) -> list[float]:
  base = dict(zip(results[baseline]["seeds"],
                  results[baseline]["per_seed"][metric]))
  var = dict(zip(results[variant]["seeds"],
                 results[variant]["per_seed"][metric]))
  return [var[s] - base[s] for s in sorted(set(base) & set(var))]


def natural_vs_aligned_figure(natural_dir: str, aligned_dir: str,
                              data_dir: str, image_ids: Sequence[int],
                              output_path: str) -> None:
  """The paper's Fig. 9: each image's detections (score >= FIGURE_MIN_SCORE)
  from the natural (left) and the aligned (right) run, one image per row,
  as a 64-colour PNG (the noisy backgrounds compress badly otherwise)."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from PIL import Image
  from PIL import ImageDraw
  from tensormask_tf.evaluation import visualization
  from tensormask_tf.serving import predictor
  # pylint: enable=g-import-not-at-top
  columns = []
  for path in (natural_dir, aligned_dir):
    params = experiments.load_experiment(model_dir=path)
    model = predictor.CheckpointPredictor(params, path)
    pictures = []
    for image_id in image_ids:
      image = predictor.load_image(
          os.path.join(data_dir, "val", f"val_{image_id:06d}.png"))
      pictures.append(visualization.draw_detections(
          image, model(image), model.class_names,
          min_score=FIGURE_MIN_SCORE, min_side=256,
          category_ids=model.category_ids))
    columns.append(np.concatenate(pictures, axis=0))
  gap = np.full((columns[0].shape[0], 8, 3), 255, np.uint8)
  body = np.concatenate([columns[0], gap, columns[1]], axis=1)
  picture = Image.new("RGB", (body.shape[1], body.shape[0] + 24), "white")
  picture.paste(Image.fromarray(body), (0, 24))
  draw = ImageDraw.Draw(picture)
  for x, title in ((0, "natural, lam=5"),
                   (columns[0].shape[1] + 8, "aligned, lam=5")):
    draw.text((x + 8, 6), title, fill="black")
  picture.quantize(colors=64).save(output_path)
