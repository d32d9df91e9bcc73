"""scripts/train.py end to end on a tiny shapes dataset, and its errors."""

import glob
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from tests import tiny_experiment

REPO = os.path.join(os.path.dirname(__file__), "..")


def _train(*args, timeout=600, cwd=REPO):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "train.py"), *args],
      capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)
  return result.returncode, result.stdout + result.stderr


def _summary_tags(directory: str) -> set[str]:
  return {value.tag
          for path in glob.glob(os.path.join(directory, "events.*"))
          for event in tf.compat.v1.train.summary_iterator(path)
          for value in event.summary.value}


def test_train_and_eval_writes_checkpoints_summaries_ap_and_resumes(
    shapes_records, tmp_path):
  model_dir = str(tmp_path / "run")
  common = ["--experiment=tensormask_shapes", "--mode=train_and_eval",
            f"--model_dir={model_dir}"]
  schedule = ("trainer.steps_per_loop=2,trainer.summary_interval=2,"
              "trainer.checkpoint_interval=2,trainer.validation_steps=-1")
  code, log = _train(*common, "--params_override=" +
                     tiny_experiment.params_override_string(
                         shapes_records, schedule + ",trainer.train_steps=4,"
                         "trainer.validation_interval=4"))
  assert code == 0, log[-5000:]
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-4")
  assert "step 4/4 (100%)" in log and "images/s" in log and "ETA" in log
  assert "evaluation at step 4: box_AP" in log and "mask_AP" in log
  assert os.path.isfile(os.path.join(model_dir, "params.yaml"))
  assert os.path.isfile(os.path.join(model_dir, "coco_detections.json"))
  train_tags = _summary_tags(os.path.join(model_dir, "train"))
  assert {"total_loss", "mask_loss", "learning_rate"} <= train_tags
  eval_tags = _summary_tags(os.path.join(model_dir, "validation"))
  assert {"mask_AP", "box_AP", "predicted_masks"} <= eval_tags

  # Resume: the same run with 2 more steps starts from the checkpoint.
  code, log = _train(*common, "--params_override=" +
                     tiny_experiment.params_override_string(
                         shapes_records, schedule + ",trainer.train_steps=6,"
                         "trainer.validation_interval=6"))
  assert code == 0, log[-5000:]
  assert "train | step:      4 | training until step 6" in log
  assert "step 6/6 (100%)" in log and "step 2/6" not in log
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-6")


def _bad_run(tmp_path, *args, cwd=REPO):
  code, log = _train(*args, f"--model_dir={tmp_path / 'bad'}", cwd=cwd)
  assert code != 0
  last = log.strip().splitlines()[-1]
  assert last.startswith("train.py: error:"), log[-3000:]
  return last


def test_unknown_experiment_is_a_clear_error(tmp_path):
  last = _bad_run(tmp_path, "--experiment=tensormask_nope", "--mode=train")
  assert "unknown experiment 'tensormask_nope'" in last
  assert "tensormask_shapes" in last


def test_bad_override_is_a_clear_error(tmp_path):
  last = _bad_run(tmp_path, "--experiment=tensormask_shapes", "--mode=train",
                  "--params_override=task.model.no_such_field=3")
  assert "bad config override" in last and "no_such_field" in last


def test_missing_config_file_and_data_are_clear_errors(tmp_path):
  last = _bad_run(tmp_path, "--experiment=tensormask_shapes", "--mode=train",
                  f"--config_file={tmp_path / 'none.yaml'}")
  assert "none.yaml does not exist" in last
  last = _bad_run(tmp_path, "--experiment=tensormask_shapes", "--mode=train",
                  f"--params_override=task.train_data.input_path="
                  f"{tmp_path / 'missing'}*")
  assert "matches no files" in last and "missing" in last


def test_bad_mode_and_schedule_are_clear_errors(tmp_path):
  code, log = _train("--experiment=tensormask_shapes", "--mode=fit",
                     f"--model_dir={tmp_path}")
  assert code != 0 and "flag --mode=fit: value should be one of" in log
  last = _bad_run(tmp_path, "--experiment=tensormask_shapes",
                  "--mode=train_and_validate")
  assert "--mode must be one of" in last
  last = _bad_run(tmp_path, "--experiment=tensormask_shapes", "--mode=train",
                  "--params_override=trainer.summary_interval=7")
  assert "summary_interval (7) must be a multiple" in last


def test_corrupt_record_is_named(shapes_records, tmp_path):
  records = sorted(glob.glob(shapes_records["train"]))
  data = tmp_path / "data"
  data.mkdir()
  shutil.copy(records[0], data / "good.tfrecord")
  content = bytearray(open(records[1], "rb").read())
  content[len(content) // 2:len(content) // 2 + 64] = b"x" * 64
  (data / "broken.tfrecord").write_bytes(bytes(content))
  last = _bad_run(tmp_path, "--experiment=tensormask_shapes", "--mode=train",
                  "--params_override=" + tiny_experiment.params_override_string(
                      shapes_records,
                      f"task.train_data.input_path={data}/*.tfrecord,"
                      "trainer.train_steps=40,trainer.steps_per_loop=40,"
                      "trainer.summary_interval=40,"
                      "trainer.checkpoint_interval=40"))
  assert "bad record in task.train_data" in last
  assert "broken.tfrecord: record" in last and "corrupted record" in last


def test_flagfile_paths_resolve_from_the_working_directory(tmp_path):
  # Run where configs/ exists but data/shapes does not: the flagfile's
  # relative data path is reported, not a traceback.
  shutil.copytree(os.path.join(REPO, "configs"), tmp_path / "configs")
  last = _bad_run(tmp_path, "--flagfile=configs/tensormask_shapes.flags",
                  cwd=str(tmp_path))
  assert "data/shapes/tfrecords/train*" in last and "matches no files" in last


def test_enable_xla_picks_the_pure_tf_ops_and_static_mask_shapes():
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from tensormask_tf import train  # pylint: disable=g-import-not-at-top
  params = exp_factory.get_exp_config("tensormask_shapes")
  assert not params.task.losses.static_mask_shapes
  params.runtime.enable_xla = True
  params = train.prepare_params(params)
  assert params.task.model.ops_backend == "tf"
  assert params.task.losses.static_mask_shapes
  params.task.model.ops_backend = "custom"
  with pytest.raises(train.ConfigError, match="enable_xla"):
    train.prepare_params(params)


def test_tpu_runtimes_get_the_pure_tf_ops_and_static_mask_shapes():
  # TPUs compile every step with XLA, enable_xla or not.
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from tensormask_tf import train  # pylint: disable=g-import-not-at-top
  params = exp_factory.get_exp_config("tensormask_shapes")
  params.runtime.distribution_strategy = "tpu"
  params = train.prepare_params(params)
  assert params.task.model.ops_backend == "tf"
  assert params.task.losses.static_mask_shapes


@pytest.mark.parametrize("override,message", [
    ({"task": {"losses": {"focal_loss_gamma": 0.0}}}, "focal_loss_gamma"),
    ({"task": {"losses": {"l2_weight_decay": 1e-4}}}, "twice"),
    ({"task": {"validation_data": {"decoder": {"simple_decoder": {
        "regenerate_source_id": True}}}}}, "regenerate_source_id"),
])
def test_bad_loss_settings_are_config_errors(override, message):
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from tensormask_tf import train  # pylint: disable=g-import-not-at-top
  params = exp_factory.get_exp_config("tensormask_shapes")  # AdamW decay
  params.override(override)
  with pytest.raises(train.ConfigError, match=message):
    train.prepare_params(params)


def test_an_empty_backbone_checkpoint_is_warned_about(caplog):
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from tensormask_tf import train  # pylint: disable=g-import-not-at-top
  params = exp_factory.get_exp_config("tensormask_r50_fpn_coco_1x")
  with caplog.at_level("WARNING"):
    train.prepare_params(params)
  assert "init_checkpoint is empty" in caplog.text


@pytest.mark.parametrize("strategy,num_gpus,winograd", [
    ("mirrored", 0, True), ("mirrored", 2, False), ("tpu", 0, False)])
def test_winograd_inference_only_on_cpu_runtimes(strategy, num_gpus,
                                                 winograd):
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from tensormask_tf import train  # pylint: disable=g-import-not-at-top
  params = exp_factory.get_exp_config("tensormask_shapes")
  model = params.task.model
  flags = lambda: (model.head.winograd_at_inference,  # noqa: E731
                   model.backbone.msra_resnet.winograd_at_inference,
                   model.decoder.detectron2_fpn.winograd_at_inference)
  assert flags() == (True, True, True)
  params.runtime.distribution_strategy = strategy
  params.runtime.num_gpus = num_gpus
  params = train.prepare_params(params)
  model = params.task.model
  assert flags() == (winograd,) * 3


def test_a_runs_params_take_config_files_and_overrides(tmp_path):
  # What export_saved_model.py / predict.py --model_dir read: the run's
  # params.yaml, then --config_file and --params_override on top (the
  # README's Winograd switch for export).
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from official.modeling.hyperparams import params_dict  # pylint: disable=g-import-not-at-top
  from tensormask_tf.configs import experiments  # pylint: disable=g-import-not-at-top
  params = exp_factory.get_exp_config("tensormask_shapes")
  params_dict.save_params_dict_to_yaml(params, str(tmp_path / "params.yaml"))
  yaml = tmp_path / "more.yaml"
  yaml.write_text("task:\n  model:\n    num_classes: 7\n")
  loaded = experiments.load_experiment(
      str(tmp_path), config_files=(str(yaml),),
      params_override="task.model.head.winograd_at_inference=false")
  assert loaded.task.model.num_classes == 7
  assert loaded.task.model.head.winograd_at_inference is False
  assert loaded.task.model.input_size == params.task.model.input_size
  with pytest.raises(FileNotFoundError, match="none.yaml"):
    experiments.load_experiment(str(tmp_path),
                                config_files=(str(tmp_path / "none.yaml"),))
  with pytest.raises(ValueError, match="only without a model_dir"):
    experiments.load_experiment(str(tmp_path), "tensormask_shapes")


@pytest.mark.parametrize("steps_per_second,batch,text", [
    (2.0, 8, "16.0 images/s"),
    (1.0, 1, "1.0 images/s"),
    (1 / 75.0, 1, "75.0 s/step"),  # a COCO step on a 2-core CPU
    (1 / 40.0, 16, "40.0 s/step"),  # 0.4 images/s
    (0.0, 8, "0.0 images/s"),  # no step yet
])
def test_progress_shows_seconds_per_step_below_one_image_a_second(
    steps_per_second, batch, text):
  from tensormask_tf import train  # pylint: disable=g-import-not-at-top
  assert train.throughput(steps_per_second, batch) == text
