"""The release reference checkpoint: a random R50 TensorMask in detectron2's format.

`build(seed)` regenerates the checkpoint that produced the recorded outputs
of the authors' release in tests/data/detectron2_reference/ (seed 38; see
its README.md and SOURCE.md): numpy float32 arrays under exactly the
parameter and buffer names and shapes of detectron2's TensorMask built from
`projects/TensorMask/configs/tensormask_R_50_FPN_1x.yaml` (ResNet-50 with
FrozenBN, FPN with P6/P7 from res5, 80 classes, 2 windows per position, mask
sides 11 and 15, aligned + bipyramid head): 319 arrays, 36,620,610 values.
The weights are random, not trained; they are scaled so the network is
numerically healthy on the reference images (every level P2..P7 active, tens
of detections with blob masks). `checkpoint_checksums.json` there holds
every array's sha256 and the `params_digest`, so the draw order below is
part of the definition and must not change.

Scheme (every draw from one `np.random.default_rng(seed)`, in build()'s
order, in float64, stored as float32):
* convs: He-normal, std = gain * sqrt(2 / fan_in) (sqrt(1 / fan_in) for the
  FPN convs, which no ReLU follows); conv biases (FPN and head) N(0, 0.02^2);
  the ResNet's convs have no bias.
* FrozenBN (y = (x - running_mean) / sqrt(running_var + 1e-5) * weight +
  bias): weight = s * (1 + 0.1 N), bias = s * 0.1 N, running_mean = 0.05 N,
  running_var ~ U(0.8, 1.25); s = 1 except LAST_BN_SCALE on each
  bottleneck's conv3.norm.
* the stem conv is scaled by STEM_GAIN (its input is mean-subtracted BGR
  with std 1, |x| ~ 100).
* per-level gains on fpn_output2..5 and top_block.p6/p7 roughly equalise
  the class-logit spread across P2..P7.
* cls_score: N(0, CLS_SCORE_STD^2) weights; bias[a * 80 + k] =
  CLS_BIAS_MEAN + 0.35 z_k + 0.1 z_ak.
* bbox_pred: N(0, BOX_PRED_STD^2) weights, N(0, 0.05^2) bias (index a * 4 +
  j, j over dx, dy, dw, dh).
* mask_pred_11/15 (1x1 convs, output channel v * S + u): weights smooth in
  (v, u) (a 3x3 cosine basis) plus small noise, times MASK_PRED_GAIN; bias a
  centred blob MASK_BLOB_AMPLITUDE * (0.8 - 1.6 r^2) + N(0, 0.1^2), so the
  predicted masks are blobs.
"""

import hashlib
import pickle

import numpy as np

NUM_CLASSES = 80
NUM_ANCHORS = 2
MASK_SIZES = (11, 15)
FPN_CHANNELS = 256
CLS_CHANNELS = 256
BOX_CHANNELS = 128
MASK_CHANNELS = 128
# (stage, blocks, bottleneck channels, output channels) of ResNet-50.
STAGES = (("res2", 3, 64, 256), ("res3", 4, 128, 512),
          ("res4", 6, 256, 1024), ("res5", 3, 512, 2048))
RES_CHANNELS = {2: 256, 3: 512, 4: 1024, 5: 2048}

# Scales chosen so that the reference images give a healthy network.
STEM_GAIN = 1.0 / 64.0  # The input is mean-subtracted BGR in [-125, 150].
LAST_BN_SCALE = 0.25  # gamma of each bottleneck's conv3 norm
FPN_OUT_GAIN = {2: 0.95, 3: 1.0, 4: 0.78, 5: 0.73}  # of fpn_output{l}
P6_GAIN, P7_GAIN = 0.85, 1.6
CLS_SCORE_STD = 0.02
CLS_BIAS_MEAN = -7.3
BOX_PRED_STD = 0.004
MASK_PRED_GAIN = 0.25
MASK_BLOB_AMPLITUDE = 3.0

AUTHOR = "tensormask-tf reference"


class _Generator:
  """Draws the arrays in order from one generator into `params`."""

  def __init__(self, seed: int):
    self.rng = np.random.default_rng(seed)
    self.params: dict[str, np.ndarray] = {}

  def put(self, name: str, value: np.ndarray) -> None:
    if name in self.params:
      raise ValueError(f"release_checkpoint: {name} drawn twice.")
    self.params[name] = np.ascontiguousarray(value, dtype=np.float32)

  def normal(self, shape, std: float) -> np.ndarray:
    return self.rng.standard_normal(shape) * std

  def conv(self, name: str, cout: int, cin: int, k: int, gain: float = 1.0,
           relu_after: bool = True, bias_std: float | None = None) -> None:
    """OIHW [cout, cin, k, k] He-normal weight, then the optional bias."""
    std = gain * np.sqrt((2.0 if relu_after else 1.0) / (cin * k * k))
    self.put(f"{name}.weight", self.normal((cout, cin, k, k), std))
    if bias_std is not None:
      self.put(f"{name}.bias", self.normal((cout,), bias_std))

  def frozen_bn(self, name: str, channels: int, scale: float = 1.0) -> None:
    self.put(f"{name}.weight",
             scale * (1.0 + 0.1 * self.rng.standard_normal(channels)))
    self.put(f"{name}.bias", scale * 0.1 * self.rng.standard_normal(channels))
    self.put(f"{name}.running_mean",
             0.05 * self.rng.standard_normal(channels))
    self.put(f"{name}.running_var", self.rng.uniform(0.8, 1.25, channels))

  def mask_pred(self, name: str, side: int, cin: int) -> None:
    """[S*S, cin, 1, 1] weights smooth in the window cell (v, u) (channel v *
    S + u) and a centred-blob [S*S] bias: the predicted masks are blobs."""
    v = (np.arange(side) + 0.5) / side  # cell centres in [0, 1]
    basis = np.stack([
        np.outer(np.cos(np.pi * fy * v), np.cos(np.pi * fx * v)).reshape(-1)
        for fy in range(3) for fx in range(3)], axis=1)  # [S*S, 9]
    coef = self.normal((9, cin), np.sqrt(2.0 / cin))
    weight = basis @ coef + self.normal((side * side, cin),
                                        0.25 * np.sqrt(2.0 / cin))
    r2 = ((v[:, None] - 0.5) ** 2 + (v[None, :] - 0.5) ** 2) / 0.25
    bias = (MASK_BLOB_AMPLITUDE * (0.8 - 1.6 * r2).reshape(-1) +
            self.normal((side * side,), 0.1))
    self.put(f"{name}.weight",
             (MASK_PRED_GAIN * weight).reshape(side * side, cin, 1, 1))
    self.put(f"{name}.bias", bias)


def build(seed: int) -> dict[str, np.ndarray]:
  """The checkpoint of `seed`: {detectron2 state_dict key: float32 array}.

  Keys come in generation (draw) order; conv weights are OIHW.
  """
  g = _Generator(seed)
  fpn = "backbone."
  for level in (2, 3, 4, 5):
    g.conv(f"{fpn}fpn_lateral{level}", FPN_CHANNELS, RES_CHANNELS[level], 1,
           relu_after=False, bias_std=0.02)
    g.conv(f"{fpn}fpn_output{level}", FPN_CHANNELS, FPN_CHANNELS, 3,
           gain=FPN_OUT_GAIN[level], relu_after=False, bias_std=0.02)
  g.conv(f"{fpn}top_block.p6", FPN_CHANNELS, RES_CHANNELS[5], 3,
         gain=P6_GAIN, relu_after=False, bias_std=0.02)
  g.conv(f"{fpn}top_block.p7", FPN_CHANNELS, FPN_CHANNELS, 3, gain=P7_GAIN,
         relu_after=True, bias_std=0.02)

  resnet = "backbone.bottom_up."
  g.conv(f"{resnet}stem.conv1", 64, 3, 7, gain=STEM_GAIN)
  g.frozen_bn(f"{resnet}stem.conv1.norm", 64)
  cin = 64
  for stage, blocks, bottleneck, cout in STAGES:
    for i in range(blocks):
      block = f"{resnet}{stage}.{i}."
      if i == 0:
        g.conv(f"{block}shortcut", cout, cin, 1)
        g.frozen_bn(f"{block}shortcut.norm", cout)
      g.conv(f"{block}conv1", bottleneck, cin, 1)
      g.frozen_bn(f"{block}conv1.norm", bottleneck)
      g.conv(f"{block}conv2", bottleneck, bottleneck, 3)
      g.frozen_bn(f"{block}conv2.norm", bottleneck)
      g.conv(f"{block}conv3", cout, bottleneck, 1)
      g.frozen_bn(f"{block}conv3.norm", cout, scale=LAST_BN_SCALE)
      cin = cout

  head = "head."
  _tower(g, f"{head}cls_subnet", CLS_CHANNELS)
  g.put(f"{head}cls_score.weight", g.normal(
      (NUM_ANCHORS * NUM_CLASSES, CLS_CHANNELS, 3, 3), CLS_SCORE_STD))
  per_class = CLS_BIAS_MEAN + 0.35 * g.rng.standard_normal(NUM_CLASSES)
  cls_bias = per_class[None, :] + 0.1 * g.rng.standard_normal(
      (NUM_ANCHORS, NUM_CLASSES))
  g.put(f"{head}cls_score.bias", cls_bias.reshape(-1))  # index a * K + k
  _tower(g, f"{head}bbox_subnet", BOX_CHANNELS)
  g.put(f"{head}bbox_pred.weight",
        g.normal((NUM_ANCHORS * 4, BOX_CHANNELS, 3, 3), BOX_PRED_STD))
  g.put(f"{head}bbox_pred.bias", g.normal((NUM_ANCHORS * 4,), 0.05))
  _tower(g, f"{head}mask_subnet", MASK_CHANNELS)
  for side in MASK_SIZES:
    g.mask_pred(f"{head}mask_pred_{side:02d}", side, MASK_CHANNELS)
  g.conv(f"{head}mask_fuse.0", MASK_CHANNELS, MASK_CHANNELS, 3,
         bias_std=0.02)
  return g.params


def _tower(g: _Generator, name: str, channels: int) -> None:
  """4 conv3x3 + ReLU from the FPN's channels (Sequential indices 0, 2, 4,
  6: the ReLUs sit between them)."""
  cin = FPN_CHANNELS
  for i in range(4):
    g.conv(f"{name}.{2 * i}", channels, cin, 3, bias_std=0.02)
    cin = channels


def params_digest(params: dict[str, np.ndarray]) -> str:
  """sha256 hex of every array, keys in sorted (Python str) order: the key
  (utf-8), str(shape) as Python prints a tuple (e.g. '(256,)'), then the
  float32 C-order little-endian bytes (checkpoint_checksums.json's
  `digest_definition`)."""
  digest = hashlib.sha256()
  for key in sorted(params):
    value = np.ascontiguousarray(params[key], dtype="<f4")
    digest.update(key.encode("utf-8"))
    digest.update(str(tuple(value.shape)).encode("utf-8"))
    digest.update(value.tobytes())
  return digest.hexdigest()


def array_sha256(value: np.ndarray) -> str:
  """sha256 hex of one array's float32 C-order little-endian bytes."""
  return hashlib.sha256(
      np.ascontiguousarray(value, dtype="<f4").tobytes()).hexdigest()


def write_pkl(params: dict[str, np.ndarray], path: str) -> None:
  """Writes a detectron2 model-zoo style .pkl: {"model": params,
  "__author__": ...}, pickle protocol 4."""
  with open(path, "wb") as f:
    pickle.dump({"model": params, "__author__": AUTHOR}, f, protocol=4)
