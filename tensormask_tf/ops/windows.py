"""TensorMask's windows: the sliding windows that play the role of anchors.

At pyramid level k (k = 0 for P2, stride `stride0 * 2**k`) there is one square
window per window size per location; its side is `base_side * 2**k` pixels
for each base side (docs/model.md: [44, 60]), and its centre is at
`(x * stride, y * stride)` for grid position (y, x), as in the authors'
release. In mask pixels of the P2 grid a level-0 window has side
`S = base_side / stride0` (11 and 15); at level k its natural mask has side
`S * 2**k`.

Boxes are `[ymin, xmin, ymax, xmax]` in absolute input-image pixels (Model
Garden's convention). Per level the windows are ordered location-major,
`(y, x, a)`, matching a head output `[N, H, W, A * C]` reshaped to
`[N, H * W * A, C]`.
"""

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """The window layout of a model.

  Attributes:
    min_level: the finest pyramid level with windows (2 = P2).
    max_level: the coarsest (7 = P7).
    base_sides: window sides in pixels at min_level, one per window size.
    min_level_stride: the stride of min_level in pixels (4 for P2).
    masks_on_min_level_grid: whether a window's natural mask has the
      min-level stride as its cell at every level (the tensor bipyramid:
      side S * 2**k at level k) or its own level's stride (the
      feature-pyramid heads: side S everywhere), as the release's
      BIPYRAMID_ON.
  """

  min_level: int = 2
  max_level: int = 7
  base_sides: tuple[int, ...] = (44, 60)
  min_level_stride: int = 4
  masks_on_min_level_grid: bool = True

  def __post_init__(self):
    if self.min_level > self.max_level:
      raise ValueError(f"min_level {self.min_level} > max_level "
                       f"{self.max_level}.")
    if not self.base_sides:
      raise ValueError("base_sides must name at least one window size.")
    for side in self.base_sides:
      if side <= 0 or side % self.min_level_stride:
        raise ValueError(
            f"window side {side} must be a positive multiple of the stride "
            f"{self.min_level_stride}, so its mask has a whole number of "
            "pixels.")

  @property
  def levels(self) -> list[int]:
    return list(range(self.min_level, self.max_level + 1))

  @property
  def num_sizes(self) -> int:
    """A, the number of windows per location."""
    return len(self.base_sides)

  @property
  def mask_sides(self) -> tuple[int, ...]:
    """S for each window size: its side in mask pixels at min_level."""
    return tuple(side // self.min_level_stride for side in self.base_sides)

  @property
  def min_window_size(self) -> float:
    """Smallest min_level window side minus its stride (the scale clause's
    fallback for small objects, docs/model.md)."""
    return float(min(self.base_sides) - self.min_level_stride)

  def stride(self, level: int) -> int:
    return self.min_level_stride * 2**(level - self.min_level)

  def upscale(self, level: int) -> int:
    """lam of swap_align2nat for this level: 2**k."""
    return 2**(level - self.min_level)

  def mask_cell(self, level: int) -> int:
    """Side in pixels of a natural-mask cell of the level's windows."""
    return (self.min_level_stride if self.masks_on_min_level_grid
            else self.stride(level))

  def mask_side(self, level: int, size_index: int) -> int:
    """Side M in cells of the natural masks of a window size at a level."""
    return (self.base_sides[size_index] * self.upscale(level)
            // self.mask_cell(level))


def feature_sizes(spec: WindowSpec, image_size: tuple[int, int]
                  ) -> dict[int, tuple[int, int]]:
  """Grid size (H_k, W_k) per level: ceil(image / stride), as FPN produces
  for an image padded to a multiple of the coarsest stride. (Ints, or
  scalar int tensors for sizes known only when the graph runs.)"""
  height, width = image_size
  # (n + s - 1) // s, not -(-n // s): tf2onnx converts an integer FloorDiv
  # to ONNX's Div, which truncates, so a negated quotient rounds the wrong
  # way in an exported graph.
  return {level: ((height + spec.stride(level) - 1) // spec.stride(level),
                  (width + spec.stride(level) - 1) // spec.stride(level))
          for level in spec.levels}


def window_boxes(spec: WindowSpec, image_size) -> dict[int, tf.Tensor]:
  """The windows of every level for a (padded) input image size.

  Args:
    spec: the window layout.
    image_size: (height, width) of the model input in pixels: ints, or
      scalar int32 tensors (an exported graph that takes any size).

  Returns:
    {level: [H_k * W_k * A, 4] float32 boxes [ymin, xmin, ymax, xmax]},
    location-major (y, x, a). (Centres and half sides are whole or half
    pixels: exact in float32.)
  """
  windows = {}
  for level, (grid_h, grid_w) in feature_sizes(spec, image_size).items():
    stride = spec.stride(level)
    cy, cx = tf.meshgrid(tf.range(grid_h) * stride,
                         tf.range(grid_w) * stride, indexing="ij")
    centres = tf.reshape(tf.cast(tf.stack([cy, cx], axis=-1), tf.float32),
                         [-1, 1, 2])  # [HW, 1, 2]
    half = tf.reshape(tf.constant([side * spec.upscale(level) / 2.0
                                   for side in spec.base_sides], tf.float32),
                      [1, -1, 1])  # [1, A, 1]
    windows[level] = tf.reshape(
        tf.concat([centres - half, centres + half], axis=-1), [-1, 4])
  return windows


def generate_windows(spec: WindowSpec, image_size: tuple[int, int]
                     ) -> dict[int, np.ndarray]:
  """`window_boxes` of a static size as numpy (eagerly)."""
  return {level: boxes.numpy()
          for level, boxes in window_boxes(spec, image_size).items()}


def unit_lengths(spec: WindowSpec, image_size: tuple[int, int]
                 ) -> dict[int, np.ndarray]:
  """{level: [H_k * W_k * A] float32}, each window's unit length (stride)."""
  return {level: np.full(h * w * spec.num_sizes, spec.stride(level),
                         np.float32)
          for level, (h, w) in feature_sizes(spec, image_size).items()}


def concat_levels(per_level: dict[int, np.ndarray]) -> tf.Tensor:
  """Concatenates per-level arrays in level order, as one tensor."""
  return tf.constant(np.concatenate([per_level[k] for k in sorted(per_level)]))
