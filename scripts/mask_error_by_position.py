"""Where in its window a trained head's masks go wrong.

For each --model_dir (a run of scripts/run_ablations.py or train.py), runs
the model on the validation split and scores its natural mask logits at
every labelled positive window against the window's mask target, pixel by
pixel, grouped by the pixel's distance from the window's centre in mask
pixels (Chebyshev: ring 0 is the centre pixel, ring (M-1)/2 the border).
Prints a markdown table per run: the mean binary cross-entropy and the
pixel error rate (probability on the wrong side of 0.5) of each ring.

    python scripts/mask_error_by_position.py \
        --model_dir=runs/ablations/tensormask_shapes_large_simple_natural/seed0 \
        --model_dir=runs/ablations/tensormask_shapes_large_simple_aligned/seed0 \
        --data_dir=data/shapes_large

A natural head predicts pixel (v, u) of a window from the feature at the
window's centre; an aligned head from the feature at the pixel itself
(docs/model.md, the heads). This measures whether that shows in the
errors away from the centre.
"""

import os
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)

_MODEL_DIRS = flags.DEFINE_multi_string(
    "model_dir", None, "A run's directory (its params.yaml and checkpoints).",
    required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", "data/shapes_large",
    "The dataset: tfrecords/val* and val.json inside.")
_MAX_BATCHES = flags.DEFINE_integer(
    "max_batches", 0, "Stop after this many validation batches (0: all).")


def ring_errors(model_dir: str, data_dir: str, max_batches: int
                ) -> dict[int, dict[str, float]]:
  """{ring: {"bce", "error", "pixels"}} over the validation positives."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from tensormask_tf import registry_imports  # noqa: F401
  from tensormask_tf.configs import experiments
  from tensormask_tf.modeling import factory
  from tensormask_tf.serving import predictor
  from tensormask_tf.tasks import tensormask
  # pylint: enable=g-import-not-at-top
  params = experiments.load_experiment(model_dir=model_dir)
  params.override({"task": {"validation_data": {"input_path": os.path.join(
      data_dir, "tfrecords", "val*")}}}, is_strict=True)
  task = tensormask.TensorMaskTask(params.task)
  model = task.build_model()
  tf.train.Checkpoint(model=model).read(predictor.resolve_checkpoint(
      model_dir)).expect_partial().assert_existing_objects_matched()
  spec = factory.window_spec(params.task.model)
  sums = {}
  dataset = task.build_inputs(params.task.validation_data)
  for step, (images, labels) in enumerate(dataset):
    if max_batches and step >= max_batches:
      break
    outputs = model(images, training=False)
    for level in spec.levels:
      for a in range(spec.num_sizes):
        cells = labels[f"mask_indices_{level}_{a}"].numpy()  # [N, cap, 2]
        valid = labels[f"mask_valid_{level}_{a}"].numpy() > 0
        if not valid.any():
          continue
        image, row = np.nonzero(valid)
        indices = np.concatenate([image[:, None], cells[image, row]], 1)
        logits = model.head.mask_logits(
            outputs["mask_features"], level, a,
            tf.constant(indices, tf.int32)).numpy().astype(np.float64)
        targets = labels[f"mask_targets_{level}_{a}"].numpy()[image, row]
        side = logits.shape[-1]
        offset = np.abs(np.arange(side) - (side - 1) / 2.0)
        ring = np.floor(np.maximum(offset[:, None], offset[None, :]))
        bce = (np.maximum(logits, 0) - logits * targets +
               np.log1p(np.exp(-np.abs(logits))))
        wrong = (logits >= 0) != (targets >= 0.5)
        for r in np.unique(ring):
          at = np.broadcast_to(ring == r, logits.shape)
          entry = sums.setdefault(int(r), [0.0, 0.0, 0])
          entry[0] += bce[at].sum()
          entry[1] += wrong[at].sum()
          entry[2] += int(at.sum())
  return {r: {"bce": b / n, "error": e / n, "pixels": n}
          for r, (b, e, n) in sorted(sums.items())}


def main(_):
  results = {path: ring_errors(path, _DATA_DIR.value, _MAX_BATCHES.value)
             for path in _MODEL_DIRS.value}
  names = [os.path.normpath(p).split(os.sep)[-2] if
           os.path.basename(os.path.normpath(p)).startswith("seed")
           else os.path.basename(os.path.normpath(p)) for p in results]
  rings = sorted({r for result in results.values() for r in result})
  print("| ring (mask px from the centre) | " + " | ".join(
      f"{n}: BCE / pixel error %" for n in names) + " |")
  print("| --- |" + " --- |" * len(names))
  for r in rings:
    cells = []
    for result in results.values():
      entry = result.get(r)
      cells.append("" if entry is None else
                   f"{entry['bce']:.3f} / {100 * entry['error']:.1f}")
    print(f"| {r} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  app.run(main)
