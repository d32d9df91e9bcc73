"""TensorMask's heads (docs/model.md): class, box and mask towers and the masks.

Inputs are Model Garden style per-level dicts `{str(level): [N, H_k, W_k, C]}`.
The class and box towers are shared across levels (4 conv3x3 + ReLU, normal
std 0.01 init, zero bias) and end in conv3x3 layers with A*K logits (prior
bias) and A*4 deltas per location (A window sizes, K classes). Its 3x3
convolutions are `layers.Conv3x3`: Conv2D weights, run as Winograd F(4x4,
3x3) at inference where that is faster (`winograd_at_inference`).

Masks. With `head_type="bipyramid"` every level's mask-tower feature is
upsampled bilinearly (half-pixel centres) by 2**k to the P2 grid, cropped to
it, added to the P2 mask feature and passed through a shared conv3x3 + ReLU
("fuse"): `mask_features[level]` is that fused P2-grid feature. The masks of
window size a at level k are then `swap_align2nat(conv1x1_a(fused_k),
lam=2**k)`, of side `S_a * 2**k` on level k's grid. The baseline heads of the
paper's Fig. 6 keep `mask_features[level]` on level k's own grid and predict
masks of side S_a there ("simple_*": S_a**2 channels, natural or aligned;
"upscale_*": (S_a/lam)**2 channels upscaled by lam).

`call` returns the towers' outputs and the mask features only; masks are
computed by `mask_logits`, densely (tests, ablations) or only at given
windows (`indices`), so training and inference never build the dense
bipyramid; at given windows the bipyramid's projection is fused into the
gather (`ops.project_swap_align2nat_gather`), so its dense [N, H2, W2, S*S]
output is not built either. `mask_logits_at` computes the windows of every
(level, size) pair at once (the training loss), with a backward that builds
one feature gradient per level, not one per level and window size.
"""

import math
from typing import Sequence

import tensorflow as tf
import tf_keras

from tensormask_tf import layers
from tensormask_tf import ops

HEAD_TYPES = ("bipyramid", "simple_natural", "simple_aligned",
              "upscale_natural", "upscale_aligned")

# The bipyramid fuses levels upsampled by at least this factor on their own
# grid (ops.upsampled_conv3x3): 1.15x faster at 4 and 2.3-3.7x at 8-32 on
# the 896x1408 P2 grid, half as fast at 2 (scripts/bench_bipyramid_fuse.py).
_FUSE_ON_COARSE_GRID_FROM_SCALE = 4


def _coarse_side(side: int, lam: float) -> int | None:
  """side / lam where it is a whole number (the upscale heads' predicted
  mask side: 15 / 1.5 = 10), else None."""
  coarse = round(side / lam)
  return coarse if coarse >= 1 and abs(coarse * lam - side) < 1e-9 else None


@tf_keras.utils.register_keras_serializable(package="TensorMask")
class TensorMaskHead(tf_keras.layers.Layer):
  """The class, box and mask heads of TensorMask."""

  def __init__(self,
               min_level: int,
               max_level: int,
               num_classes: int,
               mask_sides: tuple[int, ...] = (11, 15),
               head_type: str = "bipyramid",
               num_convs: int = 4,
               class_filters: int = 256,
               box_filters: int = 128,
               mask_filters: int = 128,
               prior_prob: float = 0.01,
               mask_pad: float = ops.DEFAULT_PAD,
               upscale_factor: float = 1,
               upscale_interpolation: str = "bilinear",
               ops_backend: str = "auto",
               winograd_at_inference: bool = True,
               winograd_in_training: bool = False,
               kernel_regularizer: tf_keras.regularizers.Regularizer | None = None,
               **kwargs):
    """Initializes the head.

    Args:
      min_level: finest pyramid level (2 = P2; the bipyramid's grid).
      max_level: coarsest pyramid level.
      num_classes: K, classes without background (sigmoid scores).
      mask_sides: S per window size at min_level, in mask pixels.
      head_type: one of HEAD_TYPES.
      num_convs: conv3x3 + ReLU layers per tower.
      class_filters, box_filters, mask_filters: tower widths.
      prior_prob: initial foreground probability of the class logits.
      mask_pad: value read outside the tensors by the representation ops.
      upscale_factor: lam of the "upscale_*" heads: every S / lam must be
        a whole number (the predicted masks' side), e.g. 1.5 for S = 15.
      upscale_interpolation: "bilinear" or "nearest" for "upscale_*".
      ops_backend: the representation ops' backend ("auto", "tf",
        "custom").
      winograd_at_inference: let the 3x3 convolutions run as Winograd
        F(4x4, 3x3) when not training, where it pays (layers.Conv3x3); False
        on GPUs and TPUs.
      winograd_in_training: the same when training.
      kernel_regularizer: regularizer of the conv kernels.
      **kwargs: other keyword arguments of `tf_keras.layers.Layer`.
    """
    super().__init__(**kwargs)
    if head_type not in HEAD_TYPES:
      raise ValueError(f"head_type must be one of {HEAD_TYPES}, got "
                       f"{head_type!r}.")
    if min_level > max_level:
      raise ValueError(f"min_level {min_level} > max_level {max_level}.")
    if not mask_sides or any(s < 1 for s in mask_sides):
      raise ValueError(f"mask_sides must be positive, got {mask_sides}.")
    if head_type.startswith("upscale"):
      if not upscale_factor >= 1 or any(
          _coarse_side(s, upscale_factor) is None for s in mask_sides):
        raise ValueError(
            f"{head_type} needs an upscale_factor >= 1 that divides every "
            f"mask side into a whole number of pixels, got {upscale_factor} "
            f"for sides {tuple(mask_sides)}.")
      if upscale_interpolation not in ("bilinear", "nearest"):
        raise ValueError("upscale_interpolation must be 'bilinear' or "
                         f"'nearest', got {upscale_interpolation!r}.")
    self._config_dict = {
        "min_level": min_level,
        "max_level": max_level,
        "num_classes": num_classes,
        "mask_sides": tuple(mask_sides),
        "head_type": head_type,
        "num_convs": num_convs,
        "class_filters": class_filters,
        "box_filters": box_filters,
        "mask_filters": mask_filters,
        "prior_prob": prior_prob,
        "mask_pad": mask_pad,
        "upscale_factor": upscale_factor,
        "upscale_interpolation": upscale_interpolation,
        "ops_backend": ops_backend,
        "winograd_at_inference": winograd_at_inference,
        "winograd_in_training": winograd_in_training,
        "kernel_regularizer": kernel_regularizer,
    }

  # -------------------------------------------------------------------------
  # Layers.
  # -------------------------------------------------------------------------
  def _conv(self, filters, kernel_size, name, activation=None,
            bias_initializer="zeros"):
    kwargs = dict(
        activation=activation,
        kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.01),
        bias_initializer=bias_initializer,
        kernel_regularizer=self._config_dict["kernel_regularizer"], name=name)
    if kernel_size == 3:
      return layers.Conv3x3(
          filters,
          winograd_at_inference=self._config_dict["winograd_at_inference"],
          winograd_in_training=self._config_dict["winograd_in_training"],
          **kwargs)
    return tf_keras.layers.Conv2D(filters, kernel_size, padding="same",
                                  **kwargs)

  def _tower(self, filters, name):
    return [self._conv(filters, 3, f"{name}_conv{i}", activation="relu")
            for i in range(self._config_dict["num_convs"])]

  def build(self, input_shape):
    c = self._config_dict
    num_sizes = len(c["mask_sides"])
    self._class_tower = self._tower(c["class_filters"], "class")
    prior = -math.log((1.0 - c["prior_prob"]) / c["prior_prob"])
    self._class_logits = self._conv(
        num_sizes * c["num_classes"], 3, "class_logits",
        bias_initializer=tf_keras.initializers.Constant(prior))
    self._box_tower = self._tower(c["box_filters"], "box")
    self._box_deltas = self._conv(num_sizes * 4, 3, "box_deltas")
    self._mask_tower = self._tower(c["mask_filters"], "mask")
    if c["head_type"] == "bipyramid":
      self._fuse = self._conv(c["mask_filters"], 3, "mask_fuse",
                              activation="relu")
      # mask_features may read its weights without calling it.
      with tf.name_scope(self._fuse.name):
        self._fuse.build([None, None, None, c["mask_filters"]])
    # One projection per window size, shared across levels.
    self._mask_projections = [
        self._conv(self._coarse_side(s)**2, 1, f"mask_projection_{s}")
        for s in c["mask_sides"]]
    # mask_logits, not call, runs them: build them here so every variable
    # exists (and is initialized, restored, mirrored) once the model is.
    for projection in self._mask_projections:
      with tf.name_scope(projection.name):
        projection.build([None, None, None, c["mask_filters"]])
    super().build(input_shape)

  def _coarse_side(self, side: int) -> int:
    """Side of the predicted (pre-upscale) masks of a window size."""
    if self._config_dict["head_type"].startswith("upscale"):
      return _coarse_side(side, self._config_dict["upscale_factor"])
    return side

  # -------------------------------------------------------------------------
  # Forward.
  # -------------------------------------------------------------------------
  @property
  def levels(self) -> list[int]:
    return list(range(self._config_dict["min_level"],
                      self._config_dict["max_level"] + 1))

  def call(self, features: dict[str, tf.Tensor],
           training: bool | None = None):
    """Runs the towers.

    Args:
      features: {str(level): [N, H_k, W_k, C]} for min_level..max_level.
      training: Keras training flag (inference may run the 3x3
        convolutions as Winograd F(4x4, 3x3)).

    Returns:
      class_outputs: {str(level): [N, H_k, W_k, A*K]} logits.
      box_outputs: {str(level): [N, H_k, W_k, A*4]} deltas.
      mask_features: {str(level): [N, Hm, Wm, mask_filters]}: the fused
        P2-grid features for "bipyramid" (Hm, Wm = P2's size), the level's
        own mask-tower features otherwise.
    """
    return (self.class_outputs(features, training),
            self.box_outputs(features, training),
            self.mask_features(features, training))

  def _run_tower(self, tower, last, features, training):
    outputs = {}
    for level in self.levels:
      y = features[str(level)]
      for conv in tower:
        y = conv(y, training=training)
      outputs[str(level)] = (last(y, training=training) if last is not None
                             else y)
    return outputs

  # The three parts of `call`, public so that they can be run (and timed,
  # scripts/bench_model.py) on their own.
  def class_outputs(self, features: dict[str, tf.Tensor],
                    training: bool | None = None):
    """{str(level): [N, H_k, W_k, A*K]} class logits (class tower)."""
    return self._run_tower(self._class_tower, self._class_logits, features,
                           training)

  def box_outputs(self, features: dict[str, tf.Tensor],
                  training: bool | None = None):
    """{str(level): [N, H_k, W_k, A*4]} box deltas (box tower)."""
    return self._run_tower(self._box_tower, self._box_deltas, features,
                           training)

  def mask_features(self, features: dict[str, tf.Tensor],
                    training: bool | None = None):
    """The mask tower's features, fused on the P2 grid for "bipyramid".

    Returns {str(level): [N, Hm, Wm, mask_filters]}, as `call`'s third
    output.
    """
    tower = self._run_tower(self._mask_tower, None, features, training)
    if self._config_dict["head_type"] != "bipyramid":
      return tower
    min_level = self._config_dict["min_level"]
    base = tower[str(min_level)]
    base_size = tf.shape(base)[1:3]
    scales = {level: 2**(level - min_level) for level in self.levels}
    shared_base_conv = max(scales.values()) >= _FUSE_ON_COARSE_GRID_FROM_SCALE
    if shared_base_conv:
      # The fuse is linear before its ReLU: conv3x3(up + base) =
      # conv3x3(up) + conv3x3(base), the second the same for every level
      # (level 0's input is 2 * base), and conv3x3(up) runs on the level's
      # own grid (ops.upsampled_conv3x3).
      kernel = tf.cast(self._fuse.kernel, base.dtype)
      bias = tf.cast(self._fuse.bias, base.dtype)
      base_conv = self._fuse.convolve(base, kernel, training)
    mask_features = {}
    for level, scale in scales.items():
      up = tower[str(level)]
      if scale >= _FUSE_ON_COARSE_GRID_FROM_SCALE:
        fused = ops.upsampled_conv3x3(up, kernel, scale, base_size)
        fused = tf.nn.relu(tf.nn.bias_add(fused + base_conv, bias))
      elif scale == 1 and shared_base_conv:
        fused = tf.nn.relu(tf.nn.bias_add(2 * base_conv, bias))
      else:
        if scale > 1:
          # Bilinear with half-pixel centres (align_corners=False), then
          # cropped to the P2 grid.
          # tf.image.resize computes in float32: cast back (float64 models).
          up = tf.cast(tf.image.resize(up, tf.shape(up)[1:3] * scale,
                                       method="bilinear"), base.dtype)
          up = up[:, :base_size[0], :base_size[1], :]
        fused = self._fuse(up + base, training=training)
      mask_features[str(level)] = fused
    return mask_features

  def mask_side(self, level: int, size_index: int) -> int:
    """Side M of the natural masks of a window size at a level."""
    side = self._config_dict["mask_sides"][size_index]
    if self._config_dict["head_type"] == "bipyramid":
      return side * 2**(level - self._config_dict["min_level"])
    return side

  def mask_logits(self, mask_features: dict[str, tf.Tensor], level: int,
                  size_index: int, indices=None) -> tf.Tensor:
    """Natural mask logits of one window size at one level.

    Args:
      mask_features: the third output of `call`.
      level: pyramid level.
      size_index: which window size (index into mask_sides).
      indices: None for every window of the level, or [K, 3] int32 rows
        (n, y, x) on level k's grid for those windows only.

    Returns:
      [N, H_k, W_k, M*M] when indices is None, else [K, M, M]; M is
      `mask_side(level, size_index)`.
    """
    c = self._config_dict
    feature = mask_features[str(level)]
    projection = self._mask_projections[size_index]
    head_type = c["head_type"]
    if head_type == "bipyramid":
      lam = 2**(level - c["min_level"])
      if indices is None:
        return ops.swap_align2nat(projection(feature), lam, pad=c["mask_pad"],
                                  backend=c["ops_backend"])
      # The projection only where the windows read it (docs/ops.md, fused ops
      # note): it is [N, H2, W2, S*S] on the P2 grid for every level.
      return ops.project_swap_align2nat_gather(
          feature, projection.kernel, projection.bias, indices, lam,
          pad=c["mask_pad"], backend=c["ops_backend"])
    projected = projection(feature)
    side = self.mask_side(level, size_index)
    # Baselines: masks are S x S on the level's own grid, so computing them
    # densely is cheap; windows are gathered afterwards (the aligned heads'
    # up_align2nat computes only the windows asked for).
    if head_type in ("simple_aligned", "upscale_aligned"):
      lam, interpolation = 1, "bilinear"
      if head_type == "upscale_aligned":
        lam, interpolation = c["upscale_factor"], c["upscale_interpolation"]
      if indices is None:
        return ops.up_align2nat(projected, lam, interpolation=interpolation,
                                pad=c["mask_pad"], backend=c["ops_backend"])
      return ops.up_align2nat_gather(
          projected, indices, lam, interpolation=interpolation,
          pad=c["mask_pad"], backend=c["ops_backend"])
    if head_type == "simple_natural":
      dense = projected
    else:  # upscale_natural: resize each window's coarse natural mask.
      coarse = self._coarse_side(c["mask_sides"][size_index])
      shape = tf.shape(projected)
      windows = tf.reshape(projected, [-1, coarse, coarse, 1])
      windows = tf.cast(tf.image.resize(windows, [side, side],
                                        method=c["upscale_interpolation"]),
                        projected.dtype)
      dense = tf.reshape(windows, [shape[0], shape[1], shape[2], side * side])
    if indices is None:
      return dense
    return tf.reshape(tf.gather_nd(dense, indices), [-1, side, side])

  def mask_logits_at(self, mask_features: dict[str, tf.Tensor],
                     windows: Sequence[tuple[int, int, tf.Tensor]]
                     ) -> list[tf.Tensor]:
    """Natural mask logits at given windows of several (level, size) pairs.

    The values of `[mask_logits(mask_features, level, a, indices) for level,
    a, indices in windows]`, computed together: for "bipyramid" through
    `ops.project_swap_align2nat_gather_many`, whose gradient builds one
    P2-grid feature gradient per level instead of one per (level, window
    size). The training loss takes its masks from here.

    Args:
      mask_features: the third output of `call`.
      windows: (level, size_index, indices [K, 3] int32 rows (n, y, x) on
        level k's grid).

    Returns:
      One [K, M, M] tensor per window group, M = `mask_side(level, a)`.
    """
    c = self._config_dict
    if c["head_type"] != "bipyramid":
      return [self.mask_logits(mask_features, level, a, indices)
              for level, a, indices in windows]
    levels = sorted({level for level, _, _ in windows})
    requests = [
        ops.GatherRequest(levels.index(level), a, indices,
                          2**(level - c["min_level"]))
        for level, a, indices in windows]
    return ops.project_swap_align2nat_gather_many(
        [mask_features[str(level)] for level in levels],
        [projection.kernel for projection in self._mask_projections],
        [projection.bias for projection in self._mask_projections],
        requests, pad=c["mask_pad"], backend=c["ops_backend"])

  def get_config(self) -> dict:
    config = dict(self._config_dict)
    config["mask_sides"] = list(config["mask_sides"])
    config["kernel_regularizer"] = tf_keras.regularizers.serialize(
        config["kernel_regularizer"]) if config["kernel_regularizer"] else None
    return {**super().get_config(), **config}

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    if config.get("kernel_regularizer"):
      config["kernel_regularizer"] = tf_keras.regularizers.deserialize(
          config["kernel_regularizer"])
    return cls(**config)
