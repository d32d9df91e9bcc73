"""The paper's Tables 1 and 2 (mask-representation ablations) on
`shapes_large`.

    python scripts/run_ablations.py --table all --repeats 2

Trains and evaluates each row of the chosen table(s) once per seed
(0..repeats-1; runs already in --output_root, or in the previous report
docs/ablations.json, are reused), then writes docs/ablations.md and
docs/ablations.json from every finished run, and the natural-vs-aligned
picture (the paper's Fig. 9) once both lam = 5 runs of seed 0 exist in
--output_root. Text after the FINDINGS_MARKER line of docs/ablations.md is
kept. Generates the dataset in --data_dir first if it is missing. About 5
minutes a run on a 2-core CPU.
"""

import json
import os
import platform
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from tensormask_tf import ablations  # noqa: E402

_TABLE = flags.DEFINE_enum("table", "all", list(ablations.TABLES) + ["all"],
                           "Which table to run: 1, a sub-table of Table 2, "
                           "or all.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Seeds per row (0..N-1).",
                                lower_bound=1)
_DATA_DIR = flags.DEFINE_string("data_dir", "data/shapes_large",
                                "The shapes_large dataset (made if missing).")
_OUTPUT_ROOT = flags.DEFINE_string("output_root", "runs/ablations",
                                   "Where each run's model_dir goes.")
_DOCS_DIR = flags.DEFINE_string("docs_dir", "docs",
                                "Where ablations.md/.json and the picture go.")

FIGURE = "ablations_natural_vs_aligned_lam5.png"
# docs/ablations.md from this line on is written by hand (the findings) and
# kept when the tables are rewritten.
FINDINGS_MARKER = "<!-- Findings: written by hand, kept by run_ablations.py -->"
FIGURE_IMAGE_IDS = (1, 2, 3, 4)
NUM_TRAIN, NUM_VAL, SIZE = 1000, 200, 192


def _make_dataset(data_dir: str) -> None:
  # pylint: disable=g-import-not-at-top
  from tensormask_tf.data import coco_tfrecord
  from tensormask_tf.data import shapes_dataset
  # pylint: enable=g-import-not-at-top
  for split, count, seed in (("train", NUM_TRAIN, 0), ("val", NUM_VAL, 1)):
    json_path = shapes_dataset.write_shapes_dataset(
        data_dir, split, count, height=SIZE, width=SIZE, seed=seed,
        variant="shapes_large")
    coco_tfrecord.write_coco_tfrecords(
        json_path, os.path.join(data_dir, split),
        os.path.join(data_dir, "tfrecords", split), 2)


def _machine() -> str:
  model = platform.processor() or "an unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f
                   if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{os.cpu_count()} cores of {model}"


def main(_):
  data_dir = _DATA_DIR.value
  if not os.path.isfile(os.path.join(data_dir, "val.json")):
    print(f"[ablations] generating the shapes_large dataset in {data_dir}")
    _make_dataset(data_dir)
  start = time.time()
  report_path = os.path.join(_DOCS_DIR.value, "ablations.json")
  previous = ablations.read_report(report_path)
  ablations.run_table(_TABLE.value, _REPEATS.value, data_dir,
                      _OUTPUT_ROOT.value, previous=previous)
  results = ablations.collect(_OUTPUT_ROOT.value, _REPEATS.value,
                              os.path.join(data_dir, "val.json"), previous)
  os.makedirs(_DOCS_DIR.value, exist_ok=True)
  natural, aligned = (
      ablations.run_dir(_OUTPUT_ROOT.value, ablations.ROWS[
          f"tensormask_shapes_large_upscale_{r}_lam5"], 0)
      for r in ("natural", "aligned"))
  figure_path = os.path.join(_DOCS_DIR.value, FIGURE)
  if all(ablations.read_run(d) for d in (natural, aligned)):
    ablations.natural_vs_aligned_figure(
        natural, aligned, data_dir, FIGURE_IMAGE_IDS, figure_path)
  figure = FIGURE if os.path.isfile(figure_path) else None
  command = (f"python scripts/run_ablations.py --table {_TABLE.value} "
             f"--repeats {_REPEATS.value}")
  markdown_path = os.path.join(_DOCS_DIR.value, "ablations.md")
  findings = ""
  if os.path.isfile(markdown_path):
    with open(markdown_path) as f:
      old = f.read()
    if FINDINGS_MARKER in old:
      findings = old[old.index(FINDINGS_MARKER):]
  with open(markdown_path, "w") as f:
    f.write(ablations.markdown(results, command, _machine(), figure))
    if findings:
      f.write("\n" + findings)
  with open(report_path, "w") as f:
    json.dump(ablations.report_rows(results), f, indent=1)
  print(f"[ablations] done in {time.time() - start:.0f} s: "
        f"{_DOCS_DIR.value}/ablations.md, {_DOCS_DIR.value}/ablations.json")


if __name__ == "__main__":
  app.run(main)
