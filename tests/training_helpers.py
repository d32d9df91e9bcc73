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
