"""Training and evaluation driver on Model Garden's `train_lib` and Orbit.

    python scripts/train.py --flagfile=configs/tensormask_shapes.flags

Flags are Model Garden's (`--experiment --config_file --params_override
--model_dir --mode --tpu`, ...). Modes: train, eval, train_and_eval,
continuous_eval. Checkpoints, resumption and TensorBoard summaries are
`train_lib`'s; this module adds progress lines with throughput and ETA,
the backend choice for XLA, and clear errors for bad configs.
"""

import time

from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from official.common import distribute_utils
from official.common import flags as tfm_flags
from official.core import config_definitions as cfg
from official.core import exp_factory
from official.core import task_factory
from official.core import train_lib
from official.core import train_utils
from official.modeling import performance
from tensormask_tf import registry_imports  # noqa: F401  (registrations)
from tensormask_tf.dataloaders import record_check

MODES = ("train", "eval", "train_and_eval", "continuous_eval")


class ConfigError(ValueError):
  """The experiment, its overrides or its files are not usable."""


class InputDataError(ValueError):
  """A record of the input data cannot be read or decoded."""


class ProgressLogger:
  """An Orbit train action: step, loss, images/s and ETA after each loop."""

  def __init__(self, train_steps: int, global_batch_size: int):
    self._train_steps = train_steps
    self._batch = global_batch_size
    self._global_step = None

  def bind(self, global_step: tf.Variable):
    """Starts the clock at the trainer's current (possibly resumed) step."""
    self._global_step = global_step
    self._last_step = int(global_step.numpy())
    self._last_time = time.time()

  def __call__(self, output: dict):
    step, now = int(self._global_step.numpy()), time.time()
    steps, seconds = step - self._last_step, max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    rate = steps / seconds
    eta = (self._train_steps - step) / rate if rate > 0 else float("inf")
    loss = output.get("training_loss")
    loss_text = f"loss {float(loss):.4f} | " if loss is not None else ""
    logging.info("step %d/%d (%.0f%%) | %s%s | ETA %s", step,
                 self._train_steps, 100.0 * step / self._train_steps,
                 loss_text, throughput(rate, self._batch), duration(eta))


class EvalRecorder:
  """An Orbit eval action that keeps the last evaluation's metrics."""

  def __init__(self):
    self.metrics = {}

  def __call__(self, output: dict):
    self.metrics = {k: float(v) for k, v in output.items()
                    if np.ndim(v) == 0}


def throughput(steps_per_second: float, batch_size: int) -> str:
  """"12.3 images/s", or "75.2 s/step" below one image a second (a COCO
  step on a CPU read "0.0 images/s")."""
  images_per_second = steps_per_second * batch_size
  if images_per_second >= 1.0 or steps_per_second <= 0:
    return f"{images_per_second:.1f} images/s"
  return f"{1.0 / steps_per_second:.1f} s/step"


def duration(seconds: float) -> str:
  """"5m07s" or "1h32m47s" ("?" for infinity)."""
  if seconds == float("inf"):
    return "?"
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else (
      f"{minutes}m{seconds:02d}s")


def parse_configuration(flags_obj) -> cfg.ExperimentConfig:
  """The experiment with its YAML files and overrides, or a ConfigError."""
  if flags_obj.experiment not in exp_factory._REGISTERED_CONFIGS:  # pylint: disable=protected-access
    known = sorted(name for name in exp_factory._REGISTERED_CONFIGS  # pylint: disable=protected-access
                   if name.startswith("tensormask"))
    raise ConfigError(f"unknown experiment {flags_obj.experiment!r}; "
                      f"TensorMask's are {known}")
  for path in flags_obj.config_file or []:
    if not tf.io.gfile.exists(path):
      raise ConfigError(f"config file {path} does not exist")
  try:
    params = train_utils.parse_configuration(flags_obj)
  except (KeyError, ValueError, AttributeError, TypeError) as e:
    raise ConfigError(f"bad config override: {e}") from e
  return params


def _check_losses(params: cfg.ExperimentConfig) -> None:
  losses = params.task.losses
  if losses.focal_loss_gamma <= 0:
    raise ConfigError("task.losses.focal_loss_gamma must be > 0 (FL* "
                      f"divides by it), got {losses.focal_loss_gamma}")
  optimizer = params.trainer.optimizer_config.optimizer.get()
  decoupled = max(getattr(optimizer, "weight_decay_rate", 0.0) or 0.0,
                  getattr(optimizer, "weight_decay", 0.0) or 0.0)
  if losses.l2_weight_decay > 0 and decoupled > 0:
    raise ConfigError(
        f"task.losses.l2_weight_decay ({losses.l2_weight_decay}) and the "
        f"optimizer's own weight decay ({decoupled}) would decay the weights "
        "twice: set one of them to 0")


def prepare_params(params: cfg.ExperimentConfig) -> cfg.ExperimentConfig:
  """Validates the config; picks the GPUs, the ops backend for XLA and
  whether inference may use Winograd convolutions (CPU only).

  A step compiled with XLA cannot run the custom op nor data-dependent
  shapes: with `runtime.enable_xla`, and on TPUs (which always compile), the
  model's ops backend becomes "tf" (an explicit "custom" is an error) and the
  mask loss computes every row of the mask caps
  (`losses.static_mask_shapes`).
  """
  model, runtime = params.task.model, params.runtime
  if (runtime.distribution_strategy in ("mirrored", "one_device")
      and runtime.num_gpus == 0):
    # Model Garden's "mirrored" means the local GPUs: use all of them (one
    # for "one_device"); without GPUs both run on the CPU.
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    runtime.num_gpus = (min(num_gpus, 1)
                        if runtime.distribution_strategy == "one_device"
                        else num_gpus)
  if runtime.num_gpus > 0 or runtime.distribution_strategy == "tpu":
    # Their own convolutions (cuDNN's algorithm search, the TPU's) beat a
    # Winograd form built of gathers and matrix products.
    model.head.winograd_at_inference = False
    model.head.winograd_in_training = False
    model.backbone.msra_resnet.winograd_at_inference = False
    model.decoder.detectron2_fpn.winograd_at_inference = False
  if runtime.enable_xla or runtime.distribution_strategy == "tpu":
    if model.ops_backend == "custom":
      raise ConfigError("runtime.enable_xla and TPUs need "
                        "task.model.ops_backend 'tf' or 'auto': the custom "
                        "op cannot be compiled by XLA")
    model.ops_backend = "tf"
    params.task.losses.static_mask_shapes = True
  _check_losses(params)
  task = params.task
  if (task.annotation_file and
      task.validation_data.decoder.get().regenerate_source_id):
    raise ConfigError(
        "task.validation_data.decoder regenerate_source_id replaces the "
        "records' COCO image ids by hashes, which task.annotation_file's "
        "COCO evaluation cannot match: turn one of them off")
  if task.init_checkpoint_modules == "backbone" and not task.init_checkpoint:
    logging.warning(
        "task.init_checkpoint is empty: the backbone starts from random "
        "weights, not from the ImageNet-pretrained ResNet of the paper's "
        "recipe (docs/training.md); set task.init_checkpoint to one.")
  trainer = params.trainer
  for name in ("summary_interval", "checkpoint_interval"):
    interval = getattr(trainer, name)
    if interval > 0 and interval % trainer.steps_per_loop:
      raise ConfigError(f"trainer.{name} ({interval}) must be a multiple of "
                        f"trainer.steps_per_loop ({trainer.steps_per_loop})")
  for name in ("train_data", "validation_data"):
    if getattr(params.task, name).global_batch_size < 1:
      raise ConfigError(f"task.{name}.global_batch_size must be >= 1")
  params.validate()
  params.lock()
  return params


def run(params: cfg.ExperimentConfig, model_dir: str, mode: str) -> dict:
  """Runs one mode of an experiment; returns the last evaluation's metrics."""
  if mode not in MODES:
    raise ConfigError(f"--mode must be one of {MODES}, got {mode!r}")
  params = prepare_params(params)
  for split in _splits(mode):  # Before the model is built.
    record_check.input_files(getattr(params.task, split).input_path,
                             f"task.{split}.input_path")
  if "train" in mode:
    train_utils.serialize_config(params, model_dir)
  if params.runtime.mixed_precision_dtype:
    performance.set_mixed_precision_policy(params.runtime.mixed_precision_dtype)
  strategy = distribute_utils.get_distribution_strategy(
      distribution_strategy=params.runtime.distribution_strategy,
      all_reduce_alg=params.runtime.all_reduce_alg,
      num_gpus=params.runtime.num_gpus, tpu_address=params.runtime.tpu)
  with strategy.scope():
    task = task_factory.get_task(params.task, logging_dir=model_dir)
  progress = ProgressLogger(params.trainer.train_steps,
                            params.task.train_data.global_batch_size)
  recorder = EvalRecorder()
  runner = train_lib.OrbitExperimentRunner(
      distribution_strategy=strategy, task=task, mode=mode, params=params,
      model_dir=model_dir, train_actions=[progress], eval_actions=[recorder])
  progress.bind(runner.trainer.global_step)
  try:
    runner.run()
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    _raise_if_bad_record(params, mode, e)
    raise
  if recorder.metrics:
    logging.info("evaluation at step %d: %s",
                 int(runner.trainer.global_step.numpy()),
                 ", ".join(f"{k} {v:.4f}" for k, v in
                           sorted(recorder.metrics.items())))
  return recorder.metrics


def main(_):
  flags_obj = flags.FLAGS
  params = parse_configuration(flags_obj)
  tf.io.gfile.makedirs(flags_obj.model_dir)
  metrics = run(params, flags_obj.model_dir, flags_obj.mode)
  if "mask_AP" in metrics:
    print(f"COCO mask AP {metrics['mask_AP']:.3f} (AP50 "
          f"{metrics['mask_AP50']:.3f}), box AP {metrics['box_AP']:.3f} "
          f"(AP50 {metrics['box_AP50']:.3f}); detections: "
          f"{flags_obj.model_dir}/coco_detections.json")


def _splits(mode: str) -> list[str]:
  """The task's data configs a mode reads."""
  return (["train_data"] if "train" in mode else []) + (
      ["validation_data"] if "eval" in mode else [])


def _raise_if_bad_record(params: cfg.ExperimentConfig, mode: str,
                         error: Exception):
  """Raises InputDataError naming the bad record when the data caused
  `error` (TensorFlow's own message names no file)."""
  for split in _splits(mode):
    logging.info("Input error; scanning task.%s for a bad record...", split)
    bad = record_check.find_bad_record(getattr(params.task, split).input_path)
    if bad:
      raise InputDataError(f"bad record in task.{split}: {bad}") from error


def define_flags():
  """Model Garden's training flags (--experiment, --mode, --model_dir, ...)."""
  tfm_flags.define_flags()
