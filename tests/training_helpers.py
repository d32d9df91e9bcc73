"""A training step for tests (the Model Garden task owns the real one)."""

import tensorflow as tf

from tensormask_tf import losses


def make_train_step(model, spec, num_classes: int, optimizer,
                    static_mask_shapes: bool = False):
  """`step(images, labels) -> losses dict`: forward, losses, one update."""

  def step(images, labels):
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      result = losses.tensormask_losses(
          outputs, labels,
          lambda windows: model.head.mask_logits_at(outputs["mask_features"],
                                                    windows),
          spec.levels, spec.num_sizes, num_classes,
          static_mask_shapes=static_mask_shapes)
    grads = tape.gradient(result["total_loss"], model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return result

  return step


def build_task(params):
  """(task, model, optimizer) of an experiment, as train_lib builds them."""
  # pylint: disable=g-import-not-at-top
  from official.core import task_factory
  # pylint: enable=g-import-not-at-top
  task = task_factory.get_task(params.task)
  model = task.build_model()
  optimizer = task.create_optimizer(params.trainer.optimizer_config,
                                    params.runtime)
  return task, model, optimizer


def train_then_evaluate(task, model, params, steps: int = 4,
                        learning_rate: float = 1e-3):
  """`steps` training steps through the task on its first training batch,
  with Adam at `learning_rate` (the experiments' schedules start with a
  warm-up from 0), asserting each loss finite and the last below the
  first; then one validation batch. Returns the reduced metrics (COCO AP).
  """
  # pylint: disable=g-import-not-at-top
  import tf_keras
  # pylint: enable=g-import-not-at-top
  optimizer = tf_keras.optimizers.Adam(learning_rate)
  batch = next(iter(task.build_inputs(params.task.train_data)))
  history = []
  for _ in range(steps):
    logs = task.train_step(batch, model, optimizer)
    assert tf.math.is_finite(logs[task.loss]), logs
    history.append(float(logs[task.loss]))
  assert history[-1] < history[0], history
  task.build_metrics(training=False)
  batch = next(iter(task.build_inputs(params.task.validation_data)))
  state = task.aggregate_logs(None, task.validation_step(batch, model))
  return task.reduce_aggregated_logs(state)
