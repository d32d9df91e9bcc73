"""The `tensormask` Model Garden task: inputs, model, losses, COCO metrics.

Loss scaling under `tf.distribute`: every replica divides its summed losses
by the positive count of the *global* batch (`losses.positive_normalizer`),
so a replica's loss is its share of the global loss and the replicas'
gradients, summed by the optimizer, are the global batch's gradient. Only
the weight-decay term, which every replica adds in full, is divided by the
number of replicas. Logged losses are the global batch's. The normalizer is
computed before the step's orientation branch (`run_in_orientation`), so
replicas whose batches take different branches still meet in one
all-reduce.
"""

import os

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from official.common import dataset_fn
from official.core import base_task
from official.core import task_factory
from official.vision.dataloaders import input_reader_factory
from official.vision.dataloaders import tf_example_decoder
from official.vision.ops import preprocess_ops
from tensormask_tf import losses as losses_lib
from tensormask_tf.configs import tensormask_config as tm_cfg
from tensormask_tf.dataloaders import record_check
from tensormask_tf.dataloaders import tensormask_input
from tensormask_tf.evaluation import coco_evaluator
from tensormask_tf.evaluation import visualization
from tensormask_tf.modeling import detection_generator
from tensormask_tf.modeling import factory

_LOSS_NAMES = ("total_loss", "class_loss", "box_loss", "mask_loss",
               "model_loss")
_COUNT_NAMES = ("num_positives", "num_mask_positives_dropped")
_COCO_KEY = "coco_predictions"
_DETECTION_KEYS = ("num_detections", "detection_boxes", "detection_scores",
                   "detection_classes", "detection_windows",
                   "detection_mask_sides")
_MASK_VALUES = "detection_mask_values"  # [T], not batched: see below.


def mask_caps(parser_config: tm_cfg.Parser, min_level: int,
              max_level: int) -> dict[int, int]:
  """{level: cap} from the config's list (its last value repeats)."""
  caps = list(parser_config.mask_caps)
  if not caps or min(caps) < 1:
    raise ValueError(f"parser.mask_caps must be positive integers, got {caps}")
  return {k: caps[min(i, len(caps) - 1)]
          for i, k in enumerate(range(min_level, max_level + 1))}




def denormalize_image(image) -> np.ndarray:
  """Inverse of Model Garden's `normalize_image`: uint8 [H, W, 3]."""
  image = np.asarray(image, np.float32) * preprocess_ops.STDDEV_RGB
  return np.clip(np.round(image + preprocess_ops.MEAN_RGB), 0,
                 255).astype(np.uint8)


@task_factory.register_task_cls(tm_cfg.TensorMaskTask)
class TensorMaskTask(base_task.Task):
  """TensorMask training and evaluation on TF-Example TFRecords."""

  def __init__(self, params: tm_cfg.TensorMaskTask,
               logging_dir: str | None = None, name: str | None = None):
    super().__init__(params, logging_dir=logging_dir, name=name)
    self.coco_metric = None  # Built by build_metrics(training=False).

  def build_model(self) -> tf_keras.Model:
    model_config = self.task_config.model
    tm_cfg.category_ids(model_config)  # A bad list fails here, early.
    input_specs = tf_keras.layers.InputSpec(
        shape=[None, *factory.padded_input_size(model_config),
               model_config.input_size[2]])
    decay = self.task_config.losses.l2_weight_decay
    # Halved because tf_keras' l2 is decay * sum(w^2), SGD's is decay/2 * ...
    regularizer = tf_keras.regularizers.l2(decay / 2.0) if decay else None
    return factory.build_tensormask_model(input_specs, model_config,
                                          l2_regularizer=regularizer)

  def initialize(self, model: tf_keras.Model):
    """Loads `init_checkpoint` (all of the model, or its backbone)."""
    path = self.task_config.init_checkpoint
    if not path:
      return
    if tf.io.gfile.isdir(path):
      path = tf.train.latest_checkpoint(path)
    modules = self.task_config.init_checkpoint_modules
    if modules == "all":
      checkpoint = tf.train.Checkpoint(**model.checkpoint_items)
    elif modules == "backbone":
      checkpoint = tf.train.Checkpoint(backbone=model.backbone)
    else:
      raise ValueError(f"init_checkpoint_modules must be 'all' or 'backbone', "
                       f"got {modules!r}")
    checkpoint.read(path).expect_partial().assert_existing_objects_matched()
    logging.info("Loaded %s from %s", modules, path)

  def build_parser(self, params: tm_cfg.DataConfig
                   ) -> tensormask_input.Parser:
    """The split's parser: its resize and augmentation, the model's
    windows, classes and padding.

    Raises:
      ValueError: orientation buckets with a model that runs at one input
        size only, or bad parser settings.
    """
    model_config = self.task_config.model
    parser_config = params.parser
    if parser_config.orientation_buckets and not factory.runs_at_any_size(
        model_config):
      raise ValueError(
          "parser.orientation_buckets needs a model that runs at any input "
          "size (backbone 'msra_resnet' with decoder 'detectron2_fpn'), got "
          f"backbone {model_config.backbone.type!r} and decoder "
          f"{model_config.decoder.type!r}.")
    return tensormask_input.Parser(
        output_size=model_config.input_size[:2],
        window_spec=factory.window_spec(model_config),
        mask_caps=mask_caps(parser_config, model_config.min_level,
                            model_config.max_level),
        aug_rand_hflip=parser_config.aug_rand_hflip,
        aug_scale_min=parser_config.aug_scale_min,
        aug_scale_max=parser_config.aug_scale_max,
        short_side=parser_config.short_side,
        long_side=parser_config.long_side,
        num_classes=model_config.num_classes,
        category_ids=tm_cfg.category_ids(model_config),
        size_divisibility=factory.size_divisibility(model_config),
        orientation_buckets=parser_config.orientation_buckets,
        dtype=params.dtype)

  def build_inputs(self, params: tm_cfg.DataConfig,
                   input_context: tf.distribute.InputContext | None = None
                   ) -> tf.data.Dataset:
    """Batched (images [B, H, W, 3], labels) of one split."""
    record_check.input_files(params.input_path)  # Clear errors, early.
    decoder_config = params.decoder.get()
    if params.decoder.type != "simple_decoder":
      raise ValueError("only decoder.type 'simple_decoder' is supported, got "
                       f"{params.decoder.type!r}")
    decoder = tf_example_decoder.TfExampleDecoder(
        include_mask=True,
        regenerate_source_id=decoder_config.regenerate_source_id,
        mask_binarize_threshold=decoder_config.mask_binarize_threshold)
    parser = self.build_parser(params)

    def batch_by_orientation(dataset, context):
      size = (context.get_per_replica_batch_size(params.global_batch_size)
              if context else params.global_batch_size)
      return tensormask_input.batch_by_orientation(dataset, size,
                                                   params.drop_remainder)

    reader = input_reader_factory.input_reader_generator(
        params, dataset_fn=dataset_fn.pick_dataset_fn(params.file_type),
        decoder_fn=decoder.decode, parser_fn=parser.parse_fn(params.is_training),
        transform_and_batch_fn=(batch_by_orientation
                                if params.parser.orientation_buckets
                                else None))
    return reader.read(input_context=input_context)

  def build_losses(self, outputs: dict, labels: dict,
                   model: tf_keras.Model, aux_losses=None,
                   normalizer: tf.Tensor | None = None
                   ) -> dict[str, tf.Tensor]:
    """This replica's losses; see the module docstring for the scaling.

    Losses are computed in float32 whatever the model's compute dtype
    (mixed precision). `normalizer`: `losses.positive_normalizer` of the
    labels' positives, computed here when None.
    """
    outputs = {k: tf.nest.map_structure(lambda x: tf.cast(x, tf.float32), v)
               if k != "mask_features" else v for k, v in outputs.items()}
    model_config = self.task_config.model
    config = self.task_config.losses
    spec = factory.window_spec(model_config)
    result = losses_lib.tensormask_losses(
        outputs, labels,
        lambda windows: [
            tf.cast(logits, tf.float32) for logits in
            model.head.mask_logits_at(outputs["mask_features"], windows)],
        spec.levels, spec.num_sizes, model_config.num_classes,
        focal_alpha=config.focal_loss_alpha,
        focal_gamma=config.focal_loss_gamma,
        mask_positive_weight=config.mask_positive_weight,
        static_mask_shapes=config.static_mask_shapes, normalizer=normalizer)
    result["model_loss"] = result["total_loss"]
    if aux_losses:
      num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
      result["total_loss"] += tf.add_n(aux_losses) / num_replicas
    result["num_mask_positives_dropped"] = tf.reduce_sum(
        labels["num_mask_positives_dropped"])
    return result

  def build_metrics(self, training: bool = True):
    metrics = [tf_keras.metrics.Mean(name, dtype=tf.float32)
               for name in _LOSS_NAMES + _COUNT_NAMES]
    if not training:
      if self.task_config.use_coco_metrics and self.task_config.annotation_file:
        self.coco_metric = coco_evaluator.WindowMaskCocoEvaluator(
            self.task_config.annotation_file,
            category_ids=tm_cfg.category_ids(self.task_config.model))
    return metrics

  def _logs(self, result: dict, metrics) -> dict:
    """Losses as the global batch's (see the module docstring) + counts."""
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    values = {name: result[name] * num_replicas for name in _LOSS_NAMES
              if name != "total_loss"}
    values["total_loss"] = values["model_loss"] + (
        result["total_loss"] - result["model_loss"]) * num_replicas
    values.update({name: result[name] * num_replicas for name in _COUNT_NAMES})
    logs = {self.loss: values["total_loss"]}
    for metric in metrics or []:
      metric.update_state(values[metric.name])
      logs[metric.name] = metric.result()
    return logs

  @staticmethod
  def _normalizer(labels: dict) -> tf.Tensor:
    """The positive normalizer, outside any orientation branch (its
    all-reduce must be met by every replica)."""
    return losses_lib.positive_normalizer(
        tf.reduce_sum(labels["num_positives"]))

  def train_step(self, inputs, model: tf_keras.Model,
                 optimizer: tf_keras.optimizers.Optimizer, metrics=None):
    images, labels = inputs
    normalizer = self._normalizer(labels)

    def losses(images, labels):
      outputs = model(images, training=True)
      return self.build_losses(outputs, labels, model, model.losses,
                               normalizer=normalizer)

    with tf.GradientTape() as tape:
      result = tensormask_input.run_in_orientation(losses, images, labels)
      loss = result["total_loss"]
      if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
        loss = optimizer.get_scaled_loss(loss)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
      grads = optimizer.get_unscaled_gradients(grads)
    optimizer.apply_gradients(zip(grads, variables))
    return self._logs(result, metrics)

  def validation_step(self, inputs, model: tf_keras.Model, metrics=None):
    images, labels = inputs
    normalizer = self._normalizer(labels)
    wants_detections = (self.coco_metric is not None
                        or self.task_config.allow_image_summary)

    def losses_and_detections(images, labels):
      network_images = images
      image_sizes = labels["image_info"][:, 1, :]
      count = tf.shape(images)[0]
      if images.shape[0] is None:
        # A partial last batch (drop_remainder false) may leave a replica
        # no images, and TensorFlow's CPU conv2d and its padded NMS fail on
        # an empty batch: the network and post-processing then run on one
        # blank image, whose outputs are cut off again. (Static batches, as
        # on TPUs, are never empty.)
        blank = 1 - tf.minimum(count, 1)
        network_images = tf.concat([images, tf.zeros(
            tf.concat([[blank], tf.shape(images)[1:]], 0), images.dtype)], 0)
        image_sizes = tf.concat([image_sizes, tf.tile(
            tf.constant([list(images.shape[1:3])], image_sizes.dtype),
            [blank, 1])], 0)
      all_outputs = model(network_images, training=False)
      outputs = tf.nest.map_structure(lambda t: t[:count], all_outputs)
      result = self.build_losses(outputs, labels, model, model.losses,
                                 normalizer=normalizer)
      detections = {}
      if wants_detections:
        found = factory.postprocess(model, all_outputs, images.shape[1:3],
                                    self.task_config.model, image_sizes)
        detections = {k: found[k][:count] for k in _DETECTION_KEYS}
        # The masks of the first `count` images come first.
        detections[_MASK_VALUES] = found[_MASK_VALUES][:tf.reduce_sum(
            detections["detection_mask_sides"] ** 2)]
        if self.task_config.allow_image_summary:
          # At most the pictures' images leave the device (a portrait
          # batch's in its own orientation).
          detections["images"] = images[:self.task_config.num_summary_images]
      return result, detections

    result, detections = tensormask_input.run_in_orientation(
        losses_and_detections, images, labels)
    logs = self._logs(result, metrics)
    if wants_detections:
      logs[_COCO_KEY] = dict(detections, source_id=labels["source_id"],
                             image_info=labels["image_info"])
    return logs

  def aggregate_logs(self, state=None, step_outputs=None):
    """Feeds the COCO evaluator; keeps the first images for pictures."""
    if state is None:
      state = {"pictures": []}
      if self.coco_metric is not None:
        self.coco_metric.reset_states()
    if _COCO_KEY not in step_outputs:
      return state
    # Under a strategy, one entry per local replica: concatenated in replica
    # order (the mask values too, as their images are).
    batch = {k: (np.concatenate([np.asarray(v) for v in values])
                 if isinstance(values, (tuple, list)) else np.asarray(values))
             for k, values in step_outputs[_COCO_KEY].items()}
    if self.coco_metric is not None:
      self.coco_metric.update_state(
          {k: v for k, v in batch.items() if k != "images"})
    wanted = self.task_config.num_summary_images - len(state["pictures"])
    if "images" in batch and wanted > 0:
      state["pictures"].extend(self._pictures(batch, wanted))
    return state

  def _pictures(self, batch: dict, count: int) -> list[np.ndarray]:
    """Input images with their detections' masks, boxes and scores."""
    category_ids = tm_cfg.category_ids(self.task_config.model)
    class_names = visualization.class_names(
        self.task_config.annotation_file, category_ids)
    pictures = []
    # (Only the first images of a batch leave the device: zip stops there.)
    per_image = detection_generator.unbatch_detections(
        {k: batch[k] for k in (*_DETECTION_KEYS, _MASK_VALUES)})
    for pixels, found in zip(batch["images"][:count], per_image):
      image = denormalize_image(pixels)
      height, width = image.shape[:2]
      # The padded input itself: scale 1, no offset.
      info = [[height, width], [height, width], [1.0, 1.0], [0.0, 0.0]]
      pictures.append(visualization.draw_detections(
          image, detection_generator.detections_in_original_image(found,
                                                                  info),
          class_names, category_ids=category_ids))
    return pictures

  def reduce_aggregated_logs(self, aggregated_logs, global_step=None):
    logs = {}
    if self.coco_metric is not None:
      logs.update(self.coco_metric.result())
      if self.logging_dir:
        path = os.path.join(self.logging_dir, "coco_detections.json")
        self.coco_metric.write_results(path)
    pictures = (aggregated_logs or {}).get("pictures")
    if pictures and self.logging_dir:
      writer = tf.summary.create_file_writer(
          os.path.join(self.logging_dir, "validation"))
      with writer.as_default():
        tf.summary.image("predicted_masks", np.stack(pictures),
                         step=int(global_step or 0), max_outputs=len(pictures))
      writer.close()
    return logs
