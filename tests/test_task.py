"""The tensormask task, its experiments and its config files."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from official.core import exp_factory
from official.core import task_factory
from official.modeling import hyperparams
from tensormask_tf import registry_imports  # noqa: F401
from tensormask_tf.modeling.heads import tensormask_head
from tensormask_tf.tasks import tensormask as tensormask_task
from tests import tiny_experiment
from tests import training_helpers

REPO = os.path.join(os.path.dirname(__file__), "..")
EXPERIMENTS = ("tensormask", "tensormask_r50_fpn_coco_1x",
               "tensormask_r50_fpn_coco_6x", "tensormask_r101_fpn_coco_6x",
               "tensormask_shapes", "tensormask_shapes_large")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_are_registered_and_valid(name):
  params = exp_factory.get_exp_config(name)
  params.validate()
  assert type(task_factory.get_task(params.task)).__name__ == "TensorMaskTask"


@pytest.mark.parametrize("name,depth,steps,boundaries,jitter", [
    ("tensormask_r50_fpn_coco_1x", 50, 90_000, [60_000, 80_000], 1.0),
    ("tensormask_r50_fpn_coco_6x", 50, 540_000, [480_000, 520_000], 0.8),
    ("tensormask_r101_fpn_coco_6x", 101, 540_000, [480_000, 520_000], 0.8),
])
def test_coco_experiments_follow_the_spec_recipe(name, depth, steps,
                                                 boundaries, jitter):
  # docs/training.md: SGD momentum 0.9, weight decay 1e-4, batch 16, LR 0.02 with
  # warm-up, x0.1 steps; short side 800 (640..800 for 6x), long side 1333.
  params = exp_factory.get_exp_config(name)
  task, trainer = params.task, params.trainer
  # The release's network, so its weights convert (issue 20).
  assert task.model.backbone.type == "msra_resnet"
  assert task.model.backbone.msra_resnet.model_id == depth
  assert task.model.decoder.type == "detectron2_fpn"
  assert (task.model.min_level, task.model.max_level) == (2, 7)
  assert task.model.windows.base_sides == [44, 60]
  assert task.losses.l2_weight_decay == 1e-4
  assert (task.losses.focal_loss_alpha, task.losses.focal_loss_gamma) == (
      0.3, 3.0)
  assert task.train_data.global_batch_size == 16
  parser = task.train_data.parser
  assert (parser.short_side, parser.long_side) == (800, 1333)
  # Orientation buckets of 800 x 1333 (and its transpose) padded to
  # multiples of 32, as the release pads.
  assert task.model.input_size[:2] == [800, 1344]
  assert parser.orientation_buckets
  assert task.validation_data.parser.orientation_buckets
  assert parser.aug_rand_hflip
  assert 800 * parser.aug_scale_min == pytest.approx(640 if jitter < 1 else 800)
  assert trainer.train_steps == steps
  optimizer = trainer.optimizer_config
  assert optimizer.optimizer.type == "sgd"
  assert optimizer.optimizer.sgd.momentum == 0.9
  assert optimizer.learning_rate.stepwise.boundaries == boundaries
  np.testing.assert_allclose(optimizer.learning_rate.stepwise.values,
                             [0.02, 0.002, 0.0002])
  assert optimizer.warmup.type == "linear"
  # The release's 80 classes, class k being the k-th of COCO's category
  # ids (1..90 without the 10 unused ones); natural masks.
  assert task.model.num_classes == 80
  assert task.model.category_ids == sorted(
      set(range(1, 91)) - {12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
  assert task.model.detection_generator.mask_size == 0
  # Evaluation covers the whole split at any batch size.
  assert trainer.validation_steps == -1
  assert not task.validation_data.drop_remainder


def test_every_experiment_evaluates_every_image():
  for name in EXPERIMENTS:
    params = exp_factory.get_exp_config(name)
    assert not params.task.validation_data.drop_remainder, name


@pytest.mark.parametrize("name", ["tensormask_r50_fpn_coco_1x",
                                  "tensormask_r50_fpn_coco_6x"])
def test_coco_experiments_input_pipelines_run(shapes_records, name):
  # The experiments' own parsers (6x: the short-side jitter) on records.
  params = exp_factory.get_exp_config(name)
  for data in (params.task.train_data, params.task.validation_data):
    data.input_path = shapes_records["train"]
    data.global_batch_size = 2
  task = task_factory.get_task(params.task)
  for data in (params.task.train_data, params.task.validation_data):
    images, labels = next(iter(task.build_inputs(data)))
    # Square images go to the landscape bucket.
    assert images.shape == (2, 800, 1344, 3)
    assert not labels["portrait"].numpy().any()
    # 128x128 images: short side 800 (640..800 with jitter), long <= 1333.
    scaled = labels["image_info"][:, 1].numpy()
    low = 640 if data.is_training and name.endswith("6x") else 800
    assert ((scaled >= low - 1) & (scaled <= 801)).all()
    assert float(tf.reduce_sum(labels["num_positives"])) > 0


@pytest.mark.parametrize("flagfile", sorted(
    glob.glob(os.path.join(REPO, "configs", "*.flags"))))
def test_every_flagfile_names_a_registered_experiment_and_its_yaml(flagfile):
  with open(flagfile) as f:
    flag_values = dict(line.strip().lstrip("-").split("=", 1)
                       for line in f if line.strip())
  assert flag_values["mode"] in ("train", "eval", "train_and_eval",
                                 "continuous_eval")
  params = exp_factory.get_exp_config(flag_values["experiment"])
  params = hyperparams.override_params_dict(
      params, os.path.join(REPO, flag_values["config_file"]), is_strict=True)
  params.validate()
  assert params.task.train_data.input_path
  assert params.task.annotation_file


def test_every_experiment_has_a_flagfile():
  for name in EXPERIMENTS[1:]:
    assert os.path.isfile(os.path.join(REPO, "configs", f"{name}.flags")), name


def test_mask_caps_repeat_the_last_value_and_reject_bad_ones():
  parser = tensormask_task.tm_cfg.Parser(mask_caps=[8, 4])
  assert tensormask_task.mask_caps(parser, 2, 5) == {2: 8, 3: 4, 4: 4, 5: 4}
  with pytest.raises(ValueError, match="mask_caps"):
    tensormask_task.mask_caps(tensormask_task.tm_cfg.Parser(mask_caps=[0]),
                              2, 3)


def test_category_ids_default_to_one_to_k_and_reject_bad_lists():
  tm_cfg = tensormask_task.tm_cfg
  model = tm_cfg.TensorMaskModel(num_classes=3)
  assert tm_cfg.category_ids(model) == [1, 2, 3]
  model.category_ids = [4, 2, 9]
  assert tm_cfg.category_ids(model) == [4, 2, 9]
  for ids, message in (([1, 2], "has 2 ids but model.num_classes is 3"),
                       ([1, 2, 2], r"repeats ids \[2\]"),
                       ([0, 1, 2], "must be positive")):
    model.category_ids = ids
    with pytest.raises(ValueError, match=message):
      tm_cfg.category_ids(model)
  coco = tm_cfg.COCO_CATEGORY_IDS
  assert len(coco) == 80 and coco[0] == 1 and coco[-1] == 90
  assert not {12, 26, 29, 30, 45, 66, 68, 69, 71, 83} & set(coco)


def test_denormalize_image_inverts_model_garden_normalization():
  from official.vision.ops import preprocess_ops  # pylint: disable=g-import-not-at-top
  image = np.random.RandomState(0).randint(0, 256, (5, 7, 3)).astype(np.uint8)
  normalized = preprocess_ops.normalize_image(tf.constant(image))
  np.testing.assert_array_equal(
      tensormask_task.denormalize_image(normalized.numpy()), image)


@pytest.fixture(scope="module")
def task_and_model(shapes_records, tmp_path_factory):
  params = tiny_experiment.tiny_shapes_experiment(shapes_records)
  logging_dir = str(tmp_path_factory.mktemp("task_logs"))
  task = task_factory.get_task(params.task, logging_dir=logging_dir)
  return task, task.build_model(), params, logging_dir


def test_build_inputs_gives_batched_images_and_window_labels(task_and_model):
  task, _, params, _ = task_and_model
  images, labels = next(iter(task.build_inputs(params.task.train_data)))
  assert images.shape == (4, 128, 128, 3)
  assert labels["class_targets_2"].shape == (4, 32, 32, 2)
  assert labels["mask_targets_5_1"].shape[:2] == (4, 8)  # cap 8 at P5
  assert labels["image_info"].shape == (4, 4, 2)
  assert float(tf.reduce_sum(labels["num_positives"])) > 0


def test_build_inputs_names_a_pattern_that_matches_nothing(task_and_model,
                                                           tmp_path):
  task, _, params, _ = task_and_model
  data = params.task.validation_data.replace(
      input_path=str(tmp_path / "nothing*"))
  with pytest.raises(FileNotFoundError, match="nothing"):
    task.build_inputs(data)


def test_train_step_lowers_the_loss_and_eval_reports_coco_ap(task_and_model):
  task, model, params, logging_dir = task_and_model
  optimizer = task.create_optimizer(params.trainer.optimizer_config,
                                    params.runtime)
  metrics = task.build_metrics(training=True)
  batch = next(iter(task.build_inputs(params.task.validation_data)))
  step = tf.function(lambda inputs: task.train_step(inputs, model, optimizer,
                                                    metrics))
  first = float(step(batch)["total_loss"])
  for _ in range(30):
    logs = step(batch)
  assert np.isfinite(first) and float(logs["total_loss"]) < first
  assert set(tensormask_task._LOSS_NAMES) <= set(logs)

  eval_metrics = task.build_metrics(training=False)
  state = None
  for inputs in task.build_inputs(params.task.validation_data):
    outputs = task.validation_step(inputs, model, eval_metrics)
    state = task.aggregate_logs(state, outputs)
  result = task.reduce_aggregated_logs(state, global_step=tf.constant(3))
  for key in ("box_AP", "mask_AP", "mask_AP50"):
    assert 0.0 <= result[key] <= 1.0
  assert os.path.isfile(os.path.join(logging_dir, "coco_detections.json"))
  events = glob.glob(os.path.join(logging_dir, "validation", "events.*"))
  tags = {v.tag for e in events for r in tf.compat.v1.train.summary_iterator(e)
          for v in r.summary.value}
  assert "predicted_masks" in tags


def test_validation_step_of_a_replica_without_images(task_and_model):
  # With drop_remainder false, a replica may get an empty last batch.
  task, model, params, _ = task_and_model
  task.build_metrics(training=False)  # The COCO evaluator.
  dataset = task.build_inputs(params.task.validation_data)
  assert dataset.element_spec[0].shape[0] is None
  step = tf.function(lambda inputs: task.validation_step(inputs, model),
                     input_signature=[dataset.element_spec])
  batch = next(iter(dataset))
  full = step(batch)
  eager = task.validation_step(batch, model)  # Static batch: no blank.
  np.testing.assert_allclose(full[task.loss], eager[task.loss], rtol=1e-5)
  coco_key = tensormask_task._COCO_KEY
  np.testing.assert_allclose(full[coco_key]["detection_scores"],
                             eager[coco_key]["detection_scores"], atol=1e-6)
  empty = step(tf.nest.map_structure(lambda t: t[:0], batch))
  assert float(empty[task.loss]) == 0.0
  assert all(v.shape[0] == 0 for v in empty[coco_key].values())
  state = task.aggregate_logs(None, {k: v for k, v in empty.items()})
  assert state["pictures"] == []


@pytest.mark.parametrize("head_type", tensormask_head.HEAD_TYPES)
def test_every_head_type_trains_and_evaluates_through_the_task(
    shapes_records, head_type):
  # The feature-pyramid heads predict S x S masks on each level's grid, so
  # their targets are S x S there (issue 21: they were built at the
  # bipyramid's S * 2**k and the first step failed).
  params = tiny_experiment.tiny_shapes_experiment(shapes_records)
  params.override({"task": {"model": {"head": {
      "head_type": head_type, "upscale_factor": 2}}}})
  task, model, _ = training_helpers.build_task(params)
  _, labels = next(iter(task.build_inputs(params.task.train_data)))
  sides = params.task.model.windows.base_sides  # [24, 40]: S = 6, 10
  bipyramid = head_type == "bipyramid"
  for level in (2, 5):
    for a, base in enumerate(sides):
      side = base // 4 * (2**(level - 2) if bipyramid else 1)
      assert labels[f"mask_targets_{level}_{a}"].shape[2:] == (side, side)
  result = training_helpers.train_then_evaluate(task, model, params)
  assert 0.0 <= result["mask_AP"] <= 1.0


def test_replicas_outputs_evaluate_as_one_batch(task_and_model, tmp_path):
  # Under a strategy each replica returns its images' detections and its
  # own masks' values (of any length): aggregated, the COCO results are
  # those of the whole batch on one device.
  task, model, params, _ = task_and_model
  batch = next(iter(task.build_inputs(params.task.validation_data)))
  halves = [tf.nest.map_structure(lambda t, s=s: t[s], batch)
            for s in (slice(0, 1), slice(1, None))]

  def results(step_outputs):
    task.build_metrics(training=False)
    state = task.aggregate_logs(None, step_outputs)
    path = str(tmp_path / "results.json")
    task.coco_metric.write_results(path)
    with open(path) as f:
      return json.load(f), state

  whole, _ = results(task.validation_step(batch, model))
  parts = [task.validation_step(half, model) for half in halves]
  key = tensormask_task._COCO_KEY
  lengths = [int(p[key]["detection_mask_values"].shape[0]) for p in parts]
  assert lengths[0] != lengths[1]
  replicas = dict(parts[0], **{key: {
      k: (parts[0][key][k], parts[1][key][k]) for k in parts[0][key]}})
  split, _ = results(replicas)
  assert len(whole) == len(split) > 0
  for a, b in zip(whole, split):
    assert a["segmentation"] == b["segmentation"]
    assert a["image_id"] == b["image_id"]
    assert a["score"] == pytest.approx(b["score"], abs=1e-5)
