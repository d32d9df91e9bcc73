"""Runs TensorMask training steps under a tf.distribute strategy (a helper
process of test_distributed.py, not a test).

    python -m tests.distributed_worker --mode=mirrored --records=<json> --out=<npz>

mirrored: one SGD step on a global batch of 4, on one device and then
mirrored over 2 logical CPUs; saves the initial weights and both runs'
losses and updated weights.
multi_worker: (TF_CONFIG set by the caller) 2 steps of
MultiWorkerMirroredStrategy with the input sharded by worker; saves this
worker's weights.
"""

import argparse
import json

import tensormask_tf  # noqa: F401
import numpy as np
import tensorflow as tf
import tf_keras

from official.core import task_factory
from tests import tiny_experiment

LOSSES = ("total_loss", "class_loss", "box_loss", "mask_loss")


def _task(records: dict):
  params = tiny_experiment.tiny_shapes_experiment(records)
  # Batch statistics over the global batch, as on one device.
  params.task.model.norm_activation.use_sync_bn = True
  params.task.train_data.parser.aug_rand_hflip = False
  return task_factory.get_task(params.task), params


def _step_fn(task, model, optimizer, metrics):
  return lambda inputs: task.train_step(inputs, model, optimizer, metrics)


def _run_mirrored(records: dict, out: str):
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  task, params = _task(records)
  batch = next(iter(task.build_inputs(params.task.validation_data)))
  arrays, initial = {}, None
  for name, strategy in (
      ("single", tf.distribute.OneDeviceStrategy("/cpu:0")),
      ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    tf_keras.backend.clear_session()  # The same layer and variable names.
    with strategy.scope():
      model = task.build_model()
      if initial is None:
        initial = {v.name: v.numpy() for v in model.weights}
      for variable in model.weights:
        variable.assign(initial[variable.name])
      # The COCO recipe's learning rate (docs/training.md).
      optimizer = tf_keras.optimizers.SGD(0.02, momentum=0.9)
      metrics = task.build_metrics(training=True)
    data = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch).unbatch().batch(4))
    step_fn = _step_fn(task, model, optimizer, metrics)
    tf.function(lambda inputs: strategy.run(step_fn, args=(inputs,)))(
        next(iter(data)))
    arrays.update({f"{name}_w:{v.name}": v.numpy() for v in model.weights})
    arrays.update({f"{name}_{m.name}": float(m.result()) for m in metrics
                   if m.name in LOSSES})
    arrays[f"{name}_replicas"] = strategy.num_replicas_in_sync
  arrays.update({f"initial_w:{k}": v for k, v in initial.items()})
  np.savez(out, **arrays)


def _run_multi_worker(records: dict, out: str):
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  task, params = _task(records)
  with strategy.scope():
    model = task.build_model()
    optimizer = tf_keras.optimizers.SGD(0.05, momentum=0.9)
  data = iter(strategy.distribute_datasets_from_function(
      lambda context: task.build_inputs(params.task.train_data, context)))
  step = tf.function(lambda inputs: strategy.run(
      _step_fn(task, model, optimizer, None), args=(inputs,)))
  for _ in range(2):
    step(next(data))
  np.savez(out, replicas=strategy.num_replicas_in_sync,
           **{f"w:{v.name}": v.numpy() for v in model.weights})


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--mode", choices=("mirrored", "multi_worker"))
  parser.add_argument("--records", help="JSON of the shapes_records fixture")
  parser.add_argument("--out", help="where to write the .npz")
  args = parser.parse_args()
  records = json.loads(args.records)
  if args.mode == "mirrored":
    _run_mirrored(records, args.out)
  else:
    _run_multi_worker(records, args.out)


if __name__ == "__main__":
  main()
