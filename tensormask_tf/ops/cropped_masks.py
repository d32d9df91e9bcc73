"""Binary instance masks of one image, each stored over its own extent.

A TensorMask detection's mask lives inside its window box (the release pastes
it there and nowhere else), so a full-image [n, H, W] array is almost all
zeros: 100 detections on a 24 MP photo would be 2.4 GB of bools. Here each
mask is a box-local bool array with the pixel offset of its top-left corner;
`dense()` builds the full-image array only for a caller that asks for one,
and `to_rle()` writes COCO RLE straight from the crops.
"""

from collections.abc import Sequence
import dataclasses
import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_api


@dataclasses.dataclass(frozen=True)
class CroppedMasks:
  """n binary masks of an image of `image_size` (height, width) pixels.

  Mask i is `crops[i]` ([h_i, w_i] bool) placed with its top-left pixel at
  image pixel `offsets[i]` (row, column) and False everywhere else; a crop
  lies inside the image.
  """
  crops: tuple[np.ndarray, ...]
  offsets: np.ndarray  # [n, 2] int64 (row, column)
  image_size: tuple[int, int]

  def __post_init__(self):
    offsets = np.asarray(self.offsets, np.int64).reshape(-1, 2)
    crops = tuple(np.asarray(c, bool) for c in self.crops)
    if len(crops) != len(offsets):
      raise ValueError(f"{len(crops)} crops but {len(offsets)} offsets")
    height, width = (int(v) for v in self.image_size)
    for i, (crop, (y, x)) in enumerate(zip(crops, offsets)):
      if (crop.ndim != 2 or y < 0 or x < 0 or y + crop.shape[0] > height
          or x + crop.shape[1] > width):
        raise ValueError(f"mask {i}: crop of shape {crop.shape} at ({y}, "
                         f"{x}) is not inside the {height}x{width} image")
    object.__setattr__(self, "crops", crops)
    object.__setattr__(self, "offsets", offsets)
    object.__setattr__(self, "image_size", (height, width))

  @classmethod
  def from_dense(cls, masks: np.ndarray) -> "CroppedMasks":
    """[n, H, W] masks, each cropped to the bounding box of its pixels."""
    masks = np.asarray(masks, bool)
    crops, offsets = [], []
    for mask in masks:
      rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
      if rows.size == 0:
        crops.append(np.zeros((0, 0), bool))
        offsets.append((0, 0))
        continue
      crops.append(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
      offsets.append((rows[0], cols[0]))
    return cls(tuple(crops), np.asarray(offsets, np.int64).reshape(-1, 2),
               masks.shape[1:3])

  @classmethod
  def from_png(cls, encoded: Sequence[bytes], offsets,
               image_size: tuple[int, int]) -> "CroppedMasks":
    """Masks from PNG-encoded crops (nonzero pixels are in the mask; empty
    bytes are an empty mask), as the exported signatures serve them."""
    crops = []
    for data in encoded:
      if not data:
        crops.append(np.zeros((0, 0), bool))
        continue
      with Image.open(io.BytesIO(data)) as png:
        crops.append(np.asarray(png) > 0)
    return cls(tuple(crops), offsets, image_size)

  def __len__(self) -> int:
    return len(self.crops)

  def __getitem__(self, index) -> "CroppedMasks":
    """The masks picked by a bool mask, integer indices or a slice."""
    picked = np.arange(len(self))[index]
    return CroppedMasks(tuple(self.crops[i] for i in np.atleast_1d(picked)),
                        self.offsets[np.atleast_1d(picked)], self.image_size)

  @property
  def shape(self) -> tuple[int, int, int]:
    """(n, H, W) of the dense array."""
    return (len(self), *self.image_size)

  def areas(self) -> np.ndarray:
    """[n] int64 pixels in each mask."""
    return np.asarray([c.sum() for c in self.crops], np.int64)

  def mask(self, i: int) -> np.ndarray:
    """[H, W] bool, mask i over the whole image."""
    full = np.zeros(self.image_size, bool)
    (y, x), crop = self.offsets[i], self.crops[i]
    full[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
    return full

  def dense(self) -> np.ndarray:
    """[n, H, W] bool (n x H x W bytes: only for small images)."""
    full = np.zeros(self.shape, bool)
    for i, ((y, x), crop) in enumerate(zip(self.offsets, self.crops)):
      full[i, y:y + crop.shape[0], x:x + crop.shape[1]] = crop
    return full

  def to_rle(self) -> list[dict]:
    """COCO RLE of each mask ({"size": [H, W], "counts": str}), equal to
    pycocotools' encoding of the dense mask, without building it."""
    return [rle_of_crop(crop, offset, self.image_size)
            for crop, offset in zip(self.crops, self.offsets)]


def as_cropped(masks) -> CroppedMasks:
  """`CroppedMasks` as they are; an [n, H, W] array cropped
  (`CroppedMasks.from_dense`)."""
  if isinstance(masks, CroppedMasks):
    return masks
  return CroppedMasks.from_dense(masks)


def rle_of_crop(crop: np.ndarray, offset, image_size) -> dict:
  """COCO RLE of an [H, W] mask that is `crop` at `offset`, else False.

  COCO RLE counts alternate runs of 0s and 1s (starting with 0s) along the
  image in column-major order. A crop column's runs of 1s start and end at
  image index x * H + y; an end that meets the next column's start (a run
  through the crop's bottom and the next column's top) is one run.
  """
  height, width = (int(v) for v in image_size)
  crop = np.asarray(crop, bool)
  y0, x0 = (int(v) for v in offset)
  # Per crop column (rows of crop.T), +1 where a run starts, -1 past its end.
  edges = np.diff(np.pad(crop.T.astype(np.int8), [(0, 0), (1, 1)]), axis=1)
  column, row = np.nonzero(edges)
  changes = (column.astype(np.int64) + x0) * height + y0 + row
  # A value present twice is an end meeting a start: no change there.
  values, counts = np.unique(changes, return_counts=True)
  # (pycocotools writes no empty last run for a mask that ends the image.)
  changes = values[(counts == 1) & (values < height * width)]
  runs = np.diff(np.concatenate([[0], changes, [height * width]]))
  rle = mask_api.frPyObjects({"size": [height, width],
                              "counts": runs.tolist()}, height, width)
  return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
