"""Converts the authors' detectron2 TensorMask checkpoints to this model.

Two kinds of file are read, both without torch (`.pth` needs torch):
- a detectron2 model (`model_final.pkl` of the release's model zoo, or the
  `.pth` of a detectron2 training run): `{"model": {name: array}}` with the
  release's parameter names (`backbone.bottom_up.res2.0.conv1.weight`,
  `head.cls_score.bias`, ...), converted into the whole TensorMask model
  (backbone `msra_resnet`, decoder `detectron2_fpn`);
- an ImageNet backbone of the MSRA/Caffe2 model zoo (`R-50.pkl`, `R-101.pkl`:
  `conv1_w`, `res2_0_branch2a_bn_s`, ...), converted into the backbone only,
  as an `init_checkpoint` for the COCO experiments.

Conventions bridged (the numbers are otherwise the release's):
- layouts: conv weights OIHW -> HWIO;
- input: the release feeds BGR minus [103.53, 116.28, 123.675] with std 1;
  this project feeds RGB normalized by Model Garden's `normalize_image`,
  whose mean is the same in RGB order. Reversing the stem's input channels
  and multiplying them by Model Garden's std is exact (zero padding stays
  zero), so it is folded into the stem's weights;
- box deltas: the release's (dx, dy, dw, dh) output channels are permuted to
  Model Garden's (dy, dx, dh, dw);
- frozen BN: Caffe2 backbones carry only scale and bias; their statistics
  are mean 0, variance 1, as detectron2 loads them.
A file whose keys or shapes are not exactly those of the model (another
detectron2 model, another depth, a truncated file) is refused with the keys
named.
"""

import dataclasses
import pickle
import re

import numpy as np
import tensorflow as tf
import tf_keras

from official.vision.ops import preprocess_ops
from tensormask_tf.modeling import tensormask_model

# Box-delta channels of one window size: ours (dy, dx, dh, dw) read the
# release's (dx, dy, dw, dh) at these positions.
_BOX_DELTA_ORDER = (1, 0, 3, 2)
# Keys a detectron2/Caffe2 file may hold that no model parameter reads.
_IGNORED_KEY = re.compile(r"(^|\.)num_batches_tracked$|_momentum$|^fc1000_[wb]$")
_MAX_KEYS_NAMED = 12


class CheckpointMismatchError(ValueError):
  """The file's parameters are not the model's: keys named in the message."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists and numpy arrays only: a checkpoint is data, and
  a pickle may otherwise run any code when loaded."""

  _ALLOWED = {
      ("collections", "OrderedDict"),
      ("_codecs", "encode"),  # bytes in protocol-2 pickles
      ("numpy", "ndarray"), ("numpy", "dtype"),
      ("numpy.core.multiarray", "_reconstruct"),
      ("numpy.core.multiarray", "scalar"),
      ("numpy._core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "scalar"),
  }

  def find_class(self, module: str, name: str):
    if (module, name) in self._ALLOWED:
      if module.startswith("numpy._core") and not hasattr(np, "_core"):
        module = module.replace("numpy._core", "numpy.core")
      return super().find_class(module, name)
    raise pickle.UnpicklingError(
        f"refusing to load {module}.{name}: a detectron2 .pkl checkpoint "
        "holds only dicts and numpy arrays")


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
  """{name: float32 array} of a detectron2 `.pkl`/`.pth` or Caffe2 `.pkl`.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a readable checkpoint (truncated, another format), or a
      `.pth` without torch installed.
  """
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  if path.endswith(".pth"):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError(
          f"{path}: reading a .pth file needs torch (pip install torch), or "
          "give the model zoo's .pkl") from e
    data = torch.load(path, map_location="cpu", weights_only=True)
    data = data.get("model", data)
    return {k: np.asarray(v.float().numpy() if hasattr(v, "numpy") else v,
                          np.float32) for k, v in data.items()}
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
          AttributeError, IndexError, KeyError) as e:
    raise ValueError(f"{path}: not a readable detectron2 .pkl checkpoint "
                     f"(truncated or another format?): {e}") from e
  if isinstance(data, dict) and isinstance(data.get("model"), dict):
    data = data["model"]  # detectron2's model zoo
  elif isinstance(data, dict) and isinstance(data.get("blobs"), dict):
    data = data["blobs"]  # Caffe2's model zoo
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a dict of named arrays, got "
                     f"{type(data).__name__}")
  params = {}
  for key, value in data.items():
    if not isinstance(value, np.ndarray):
      raise ValueError(f"{path}: {key!r} is a {type(value).__name__}, not an "
                       "array")
    params[str(key)] = value.astype(np.float32)
  return params


def caffe2_to_detectron2_names(params: dict[str, np.ndarray]
                               ) -> dict[str, np.ndarray]:
  """Caffe2 backbone names (`res2_0_branch2a_bn_s`) -> the release's
  (`backbone.bottom_up.res2.0.conv1.norm.weight`); other keys unchanged."""
  renamed = {}
  for key, value in params.items():
    match = re.fullmatch(r"(conv1|res_conv1|res(\d)_(\d+)_branch(1|2[abc]))"
                         r"(_bn)?_([wsb])", key)
    if match is None:
      renamed[key] = value
      continue
    stem, stage, block, branch, norm, kind = match.groups()
    if stage is None:
      module = "stem.conv1"
    else:
      conv = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}
      module = f"res{stage}.{block}.{conv[branch]}"
    if norm:
      module += ".norm"
    renamed[f"backbone.bottom_up.{module}." +
            {"w": "weight", "s": "weight", "b": "bias"}[kind]] = value
  # Caffe2's frozen BN is an affine: statistics mean 0, variance 1.
  for key in list(renamed):
    if key.endswith(".norm.weight"):
      prefix = key[:-len("weight")]
      channels = renamed[key].shape
      renamed.setdefault(prefix + "running_mean", np.zeros(channels, np.float32))
      renamed.setdefault(prefix + "running_var", np.ones(channels, np.float32))
  return renamed


@dataclasses.dataclass(frozen=True)
class ReleaseLayout:
  """What a release checkpoint's keys say about its model."""
  depth: int  # 50 or 101
  has_head: bool  # a whole TensorMask model, or an ImageNet backbone
  num_classes: int = 0
  mask_sides: tuple[int, ...] = ()


def release_layout(params: dict[str, np.ndarray], path: str = "checkpoint"
                   ) -> ReleaseLayout:
  """Reads the depth, classes and window sizes off the release's keys."""
  blocks = {int(m.group(1)) for key in params
            if (m := re.match(r"backbone\.bottom_up\.res4\.(\d+)\.", key))}
  depth = {6: 50, 23: 101}.get(max(blocks) + 1 if blocks else 0)
  if depth is None:
    raise CheckpointMismatchError(
        f"{path}: not a ResNet-50/101 detectron2 checkpoint: res4 has "
        f"{len(blocks)} blocks (keys 'backbone.bottom_up.res4.<i>.*'; "
        f"first keys: {sorted(params)[:5]})")
  if not any(key.startswith("head.") for key in params):
    return ReleaseLayout(depth=depth, has_head=False)
  sides = sorted(int(m.group(1)) for key in params
                 if (m := re.fullmatch(r"head\.mask_pred_(\d+)\.weight", key)))
  logits = params.get("head.cls_score.bias")
  if not sides or logits is None or logits.shape[0] % len(sides):
    raise CheckpointMismatchError(
        f"{path}: not a TensorMask checkpoint: it has no "
        "'head.mask_pred_<S>.weight' or 'head.cls_score.bias' matching them "
        f"(head keys: {sorted(k for k in params if k.startswith('head.'))[:8]})")
  return ReleaseLayout(depth=depth, has_head=True,
                       num_classes=logits.shape[0] // len(sides),
                       mask_sides=tuple(sides))


def _stem_kernel(weight: np.ndarray) -> np.ndarray:
  """OIHW BGR-input stem weight -> HWIO on Model Garden-normalized RGB."""
  rgb = weight[:, ::-1] * np.asarray(preprocess_ops.STDDEV_RGB,
                                     np.float64)[None, :, None, None]
  return rgb.astype(np.float32).transpose(2, 3, 1, 0)


def _box_order(value: np.ndarray) -> np.ndarray:
  """Permutes the last axis' (dx, dy, dw, dh) groups to (dy, dx, dh, dw)."""
  groups = value.shape[-1] // 4
  order = [4 * g + j for g in range(groups) for j in _BOX_DELTA_ORDER]
  return value[..., order]


def _backbone_sources(backbone: tf_keras.Model):
  """`_layer_sources` of the msra_resnet backbone, whose layer names are the
  release's module names with "_" for "."."""
  return [(layer, "backbone.bottom_up." + layer.name.replace("_", "."),
           "stem" if layer.name == "stem_conv1" else "conv")
          for layer in backbone.layers if layer.weights]


def _layer_sources(model: tensormask_model.TensorMaskModel):
  """(layer, release module name, converter kind) per layer with weights."""
  sources = _backbone_sources(model.backbone)
  for layer in model.decoder.layers:
    if layer.weights:
      sources.append((layer, "backbone." + layer.name.replace(
          "top_block_", "top_block."), "conv"))
  head = model.head
  # pylint: disable=protected-access
  towers = ((head._class_tower, "cls_subnet"), (head._box_tower, "bbox_subnet"),
            (head._mask_tower, "mask_subnet"))
  for tower, release_name in towers:
    for i, layer in enumerate(tower):
      # nn.Sequential(conv, ReLU, conv, ReLU, ...): convs at even indices.
      sources.append((layer, f"head.{release_name}.{2 * i}", "conv"))
  for attribute, release_name, kind in (("_class_logits", "cls_score", "conv"),
                                        ("_box_deltas", "bbox_pred", "box"),
                                        ("_fuse", "mask_fuse.0", "conv")):
    layer = getattr(head, attribute, None)  # No fuse without the bipyramid.
    if layer is not None:
      sources.append((layer, f"head.{release_name}", kind))
  for side, layer in zip(head._config_dict["mask_sides"],
                         head._mask_projections):
    sources.append((layer, f"head.mask_pred_{side:02d}", "conv"))
  # pylint: enable=protected-access
  return sources


def _converted(kind: str, suffix: str, value: np.ndarray) -> np.ndarray:
  if suffix == "weight" and value.ndim == 4:
    value = _stem_kernel(value) if kind == "stem" else value.transpose(
        2, 3, 1, 0)
  if kind == "box":
    value = _box_order(value)
  return value


def _suffixes(layer) -> list[str]:
  names = [w.name.split("/")[-1].split(":")[0] for w in layer.weights]
  table = {"kernel": "weight", "bias": "bias", "gamma": "weight",
           "beta": "bias", "moving_mean": "running_mean",
           "moving_variance": "running_var"}
  return [table[name] for name in names]


def release_variables(model: tensormask_model.TensorMaskModel
                      ) -> dict[str, tf.Variable]:
  """{release parameter name: the model's variable holding it} (in this
  project's layout: HWIO kernels, box-delta channels permuted, the stem's
  input channels reordered and scaled)."""
  return {f"{module}.{suffix}": weight
          for layer, module, _ in _layer_sources(model)
          for suffix, weight in zip(_suffixes(layer), layer.weights)}


def assign_release_weights(model: tensormask_model.TensorMaskModel | None,
                           backbone: tf_keras.Model | None,
                           params: dict[str, np.ndarray],
                           path: str = "checkpoint") -> None:
  """Sets the model's (or only the backbone's) weights from the release's
  named arrays, after checking that they are exactly the model's.

  Raises:
    CheckpointMismatchError: missing, unexpected or misshapen keys (all of
      them counted, the first ones named); nothing is assigned then.
  """
  sources = (_layer_sources(model) if model is not None
             else _backbone_sources(backbone))
  values, misshapen = [], []
  expected = set()
  for layer, module, kind in sources:
    layer_values = []
    for suffix, weight in zip(_suffixes(layer), layer.weights):
      key = f"{module}.{suffix}"
      expected.add(key)
      if key not in params:
        continue
      value = _converted(kind, suffix, params[key])
      if tuple(value.shape) != tuple(weight.shape):
        misshapen.append(f"{key} {tuple(params[key].shape)} (the model's "
                         f"{tuple(weight.shape)} in TF layout)")
      layer_values.append(value)
    values.append((layer, layer_values))
  missing = sorted(expected - set(params))
  unexpected = sorted(k for k in set(params) - expected
                      if not _IGNORED_KEY.search(k))
  problems = []
  for what, keys in (("missing", missing), ("unexpected", unexpected),
                     ("misshapen", misshapen)):
    if keys:
      more = (f" and {len(keys) - _MAX_KEYS_NAMED} more"
              if len(keys) > _MAX_KEYS_NAMED else "")
      problems.append(f"{len(keys)} {what} keys: "
                      f"{', '.join(keys[:_MAX_KEYS_NAMED])}{more}")
  if problems:
    raise CheckpointMismatchError(
        f"{path} does not match the model: " + "; ".join(problems))
  for layer, layer_values in values:
    layer.set_weights(layer_values)


def output_is_free(output_dir: str) -> None:
  """Raises FileExistsError when output_dir holds files already."""
  if tf.io.gfile.exists(output_dir) and tf.io.gfile.listdir(output_dir):
    raise FileExistsError(f"{output_dir} is not empty; remove it or pick "
                          "another --output_dir")
