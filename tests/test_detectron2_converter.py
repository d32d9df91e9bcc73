"""The detectron2 checkpoint converter: the files it refuses (keys named,
nothing written), MSRA/Caffe2 ImageNet backbones as init checkpoints, and
converted models as init checkpoints for fine-tuning."""

import os
import pickle

import numpy as np
import pytest
import tensorflow as tf

from official.vision.ops import preprocess_ops
from tensormask_tf import convert
from tensormask_tf.configs import experiments
from tensormask_tf.modeling import detectron2_converter as converter
from tensormask_tf.tasks import tensormask as tensormask_task

SMALL_INPUT = "task.model.input_size=[128,128,3]"


def _write(params: dict, path) -> str:
  with open(path, "wb") as f:
    pickle.dump({"model": params, "__author__": "tests"}, f, protocol=4)
  return str(path)


@pytest.fixture(scope="module")
def small_model():
  params = experiments.load_experiment(experiment="tensormask_r50_fpn_coco_1x",
                                       params_override=SMALL_INPUT)
  return tensormask_task.TensorMaskTask(params.task).build_model()


def _edited(params, drop=(), add=None, reshape=()):
  edited = {k: v for k, v in params.items() if k not in drop}
  edited.update(add or {})
  for key in reshape:
    edited[key] = np.zeros(params[key].shape[:1] + (7,) + params[key].shape[2:],
                           np.float32)
  return edited


@pytest.mark.parametrize("edit,message", [
    (dict(drop=("backbone.fpn_output3.weight", "head.bbox_subnet.2.bias")),
     r"2 missing keys: backbone\.fpn_output3\.weight, head\.bbox_subnet\.2\.bias"),
    (dict(add={"head.extra.weight": np.zeros(3, np.float32)}),
     r"1 unexpected keys: head\.extra\.weight"),
    (dict(reshape=("backbone.fpn_lateral2.weight",)),
     r"1 misshapen keys: backbone\.fpn_lateral2\.weight \(256, 7, 1, 1\)"),
])
def test_mismatched_keys_are_named_and_nothing_assigned(
    small_model, release_checkpoint_seed38, edit, message):
  before = [v.numpy() for v in small_model.variables]
  with pytest.raises(converter.CheckpointMismatchError, match=message):
    converter.assign_release_weights(
        small_model, None, _edited(release_checkpoint_seed38, **edit),
        "model_final.pkl")
  for old, variable in zip(before, small_model.variables):
    np.testing.assert_array_equal(old, variable.numpy())


def test_refused_files_write_nothing(release_checkpoint_seed38, tmp_path):
  output = tmp_path / "out"
  # Another detectron2 model: RetinaNet's head has no masks.
  retinanet = {k: v for k, v in release_checkpoint_seed38.items()
               if not k.startswith("head.mask")}
  path = _write(retinanet, tmp_path / "retinanet.pkl")
  with pytest.raises(converter.CheckpointMismatchError,
                     match="not a TensorMask checkpoint.*mask_pred"):
    convert.convert(path, str(output))
  # A misshapen key is found after the model is built: still nothing.
  path = _write(_edited(release_checkpoint_seed38,
                        reshape=("head.mask_fuse.0.weight",)),
                tmp_path / "misshapen.pkl")
  with pytest.raises(converter.CheckpointMismatchError,
                     match=r"misshapen keys: head\.mask_fuse\.0\.weight"):
    convert.convert(path, str(output), params_override=SMALL_INPUT)
  # A truncated download.
  whole = _write(release_checkpoint_seed38, tmp_path / "whole.pkl")
  with open(whole, "rb") as f:
    data = f.read()
  truncated = tmp_path / "truncated.pkl"
  truncated.write_bytes(data[:len(data) // 3])
  with pytest.raises(ValueError, match="truncated.pkl: not a readable"):
    convert.convert(str(truncated), str(output))
  # A pickle that would run code when loaded.
  hostile = tmp_path / "hostile.pkl"
  hostile.write_bytes(pickle.dumps({"model": {"x": os.getcwd}}))
  with pytest.raises(ValueError, match="refusing to load posix.getcwd"):
    converter.read_checkpoint(str(hostile))
  with pytest.raises(FileNotFoundError, match="no such checkpoint"):
    convert.convert(str(tmp_path / "absent.pkl"), str(output))
  assert not output.exists()
  # An output directory with files in it is not overwritten.
  output.mkdir()
  (output / "keep.txt").write_text("x")
  with pytest.raises(FileExistsError, match="is not empty"):
    convert.convert(whole, str(output))
  assert os.listdir(output) == ["keep.txt"]


def _caffe2_name(key: str) -> str | None:
  """The MSRA/Caffe2 model zoo's name of a release backbone key (None for
  the statistics, which Caffe2's frozen BN does not have)."""
  module, _, suffix = key[len("backbone.bottom_up."):].rpartition(".")
  if suffix.startswith("running"):
    return None
  parts = module.split(".")
  norm = parts[-1] == "norm"
  parts = parts[:-1] if norm else parts
  if parts[0] == "stem":
    base = "res_conv1" if norm else "conv1"
  else:
    branch = {"shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b",
              "conv3": "branch2c"}[parts[2]]
    base = f"{parts[0]}_{parts[1]}_{branch}"
  if norm:
    return f"{base}_bn_{'s' if suffix == 'weight' else 'b'}"
  return f"{base}_w"


def test_caffe2_imagenet_backbone_is_an_init_checkpoint(
    release_checkpoint_seed38, tmp_path):
  release = {k: v for k, v in release_checkpoint_seed38.items()
             if k.startswith("backbone.bottom_up.")}
  blobs = {_caffe2_name(k): v for k, v in release.items() if _caffe2_name(k)}
  blobs["fc1000_w"] = np.zeros((1000, 2048), np.float32)  # ImageNet's head
  blobs["res2_0_branch2a_w_momentum"] = np.zeros(1, np.float32)
  path = tmp_path / "R-50.pkl"
  with open(path, "wb") as f:
    pickle.dump({"blobs": blobs}, f, protocol=2)
  report = convert.convert(str(path), str(tmp_path / "r50"))
  assert "task.init_checkpoint_modules=backbone" in report

  params = experiments.load_experiment(
      experiment="tensormask_r50_fpn_coco_1x",
      params_override=SMALL_INPUT + f",task.init_checkpoint={tmp_path / 'r50'}")
  task = tensormask_task.TensorMaskTask(params.task)
  model = task.build_model()
  task.initialize(model)
  layers = {layer.name: layer for layer in model.backbone.layers}
  # OIHW -> HWIO; the stem's BGR input reversed and scaled by the std.
  np.testing.assert_array_equal(
      layers["res4_5_conv2"].kernel.numpy(),
      release["backbone.bottom_up.res4.5.conv2.weight"].transpose(2, 3, 1, 0))
  stem = release["backbone.bottom_up.stem.conv1.weight"].astype(np.float64)
  std = np.asarray(preprocess_ops.STDDEV_RGB)
  expected = np.stack([stem[:, 2 - c] * std[c] for c in range(3)], axis=1)
  np.testing.assert_allclose(layers["stem_conv1"].kernel.numpy(),
                             expected.transpose(2, 3, 1, 0), rtol=1e-6)
  # Caffe2's frozen BN: scale and bias, statistics 0 and 1.
  norm = layers["res3_0_shortcut_norm"]
  np.testing.assert_array_equal(
      norm.gamma.numpy(),
      release["backbone.bottom_up.res3.0.shortcut.norm.weight"])
  np.testing.assert_array_equal(norm.moving_mean.numpy(), 0.0)
  np.testing.assert_array_equal(norm.moving_variance.numpy(), 1.0)


def test_converted_model_is_an_init_checkpoint_for_fine_tuning(
    release_checkpoint_seed38, tmp_path):
  path = _write(release_checkpoint_seed38, tmp_path / "model_final.pkl")
  model_dir = str(tmp_path / "converted")
  convert.convert(path, model_dir, params_override=SMALL_INPUT)
  params = experiments.load_experiment(model_dir=model_dir)
  assert params.task.model.num_classes == 80
  assert params.task.model.backbone.type == "msra_resnet"
  params.override({"task": {"init_checkpoint": model_dir,
                            "init_checkpoint_modules": "all"}})
  task = tensormask_task.TensorMaskTask(params.task)
  model = task.build_model()
  task.initialize(model)
  variables = converter.release_variables(model)
  # Box deltas: the release's (dx, dy, dw, dh) channels become (dy, dx, dh,
  # dw).
  np.testing.assert_array_equal(
      variables["head.bbox_pred.bias"].numpy(),
      release_checkpoint_seed38["head.bbox_pred.bias"][[1, 0, 3, 2, 5, 4, 7, 6]])
  np.testing.assert_array_equal(
      variables["head.mask_pred_15.weight"].numpy()[0, 0],
      release_checkpoint_seed38["head.mask_pred_15.weight"][:, :, 0, 0].T)
  assert tf.train.latest_checkpoint(model_dir)


def test_pth_files_are_read_through_torch(monkeypatch, tmp_path):
  # A detectron2 run's model_final.pth: torch.load's {"model": {name:
  # tensor}}. torch is not a dependency: a stand-in module plays it here.
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  path = tmp_path / "model_final.pth"
  path.write_bytes(b"torch zip")
  with pytest.raises(ValueError, match=r"\.pth file needs torch"):
    monkeypatch.setitem(sys.modules, "torch", None)  # import fails
    converter.read_checkpoint(str(path))

  class Tensor:  # torch.Tensor's float() and numpy()
    def __init__(self, value):
      self._value = np.asarray(value)

    def float(self):
      return Tensor(self._value.astype(np.float32))

    def numpy(self):
      return self._value

  calls = []
  def load(file, map_location=None, weights_only=False):
    calls.append((file, map_location, weights_only))
    return {"model": {"head.cls_score.bias": Tensor(np.arange(3.0))},
            "iteration": 89999}
  monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
  params = converter.read_checkpoint(str(path))
  assert calls == [(str(path), "cpu", True)]  # no code run from the file
  np.testing.assert_array_equal(params["head.cls_score.bias"], [0, 1, 2])
  assert params["head.cls_score.bias"].dtype == np.float32
