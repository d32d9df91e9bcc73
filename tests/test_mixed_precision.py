"""Training and inference under Keras' mixed_bfloat16 policy (CPU/TPU's
mixed precision): the losses stay float32 and finite and fall over a few
steps, and the model's detections come out float32."""

import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.join(os.path.dirname(__file__), "..")

# A fresh process: the global policy must be set before the model is built.
_SCRIPT = r"""
import json, sys
import tensormask_tf
import numpy as np
import tensorflow as tf
import tf_keras
from official.core import task_factory
from official.modeling import performance
from tests import tiny_experiment
performance.set_mixed_precision_policy("bfloat16")
params = tiny_experiment.tiny_shapes_experiment(json.loads(sys.argv[1]))
task = task_factory.get_task(params.task)
model = task.build_model()
# Adam at 1e-3: the experiment's schedule warms up from 0, too slowly to
# see the loss fall in a few steps.
optimizer = tf_keras.optimizers.Adam(1e-3)
batch = next(iter(task.build_inputs(params.task.validation_data)))
step = tf.function(lambda inputs: task.train_step(inputs, model, optimizer))
losses = [float(step(batch)["loss"]) for _ in range(4)]
outputs = model(batch[0], training=False)
detections = task.validation_step(batch, model)
print(json.dumps({
    "losses": losses,
    "compute_dtype": model.backbone.layers[-1].compute_dtype,
    "class_dtype": outputs["class_outputs"]["2"].dtype.name,
    "mask_feature_dtype": outputs["mask_features"]["2"].dtype.name,
    "scores_dtype": detections["coco_predictions"]["detection_scores"].dtype.name,
    "masks_finite": bool(np.all(np.isfinite(
        detections["coco_predictions"]["detection_mask_values"].numpy()))),
}))
"""


def test_mixed_bfloat16_trains_and_predicts(shapes_records):
  result = subprocess.run(
      [sys.executable, "-c", _SCRIPT, json.dumps(shapes_records)],
      capture_output=True, text=True, timeout=600, check=False, cwd=REPO,
      env={**os.environ, "PYTHONPATH": REPO})
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["compute_dtype"] == "bfloat16"
  assert report["mask_feature_dtype"] == "bfloat16"
  assert all(np.isfinite(v) for v in report["losses"])
  # Four steps on one batch: the loss falls.
  assert report["losses"][-1] < report["losses"][0], report["losses"]
  assert report["scores_dtype"] == "float32" and report["masks_finite"]
