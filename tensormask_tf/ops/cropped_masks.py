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

  Mask i is False outside its crop, the box `boxes[i]` = (row, column,
  height h, width w) inside the image. Inside, it is held as the runs of
  its pixels: `changes[i]`, int64 [2k] increasing, where runs start and
  end (exclusive) going down each crop column in turn, row r of column c
  (r = 0..h, h being past the column's bottom) written c * (h + 1) + r.
  That is the column-major order of COCO RLE, so `to_rle` is a relabeling,
  and it costs a few numbers per column: a mask filling a 24 MP photo is
  kilobytes. `crop(i)`, `mask(i)` and `dense()` decode on request.
  """
  boxes: np.ndarray  # [n, 4] int64 (row, column, height, width)
  changes: tuple[np.ndarray, ...]
  image_size: tuple[int, int]

  def __post_init__(self):
    boxes = np.asarray(self.boxes, np.int64).reshape(-1, 4)
    changes = tuple(np.asarray(c, np.int64).reshape(-1) for c in self.changes)
    if len(changes) != len(boxes):
      raise ValueError(f"{len(changes)} masks' runs but {len(boxes)} boxes")
    height, width = (int(v) for v in self.image_size)
    for i, ((y, x, h, w), runs) in enumerate(zip(boxes, changes)):
      if min(y, x, h, w) < 0 or y + h > height or x + w > width:
        raise ValueError(f"mask {i}: crop of shape ({h}, {w}) at ({y}, "
                         f"{x}) is not inside the {height}x{width} image")
      if runs.size % 2 or (runs.size and (runs.min() < 0 or runs.max() >
                                          w * (h + 1) - 1)):
        raise ValueError(f"mask {i}: runs {runs[:6].tolist()}... do not "
                         f"fit its {h}x{w} crop")
    object.__setattr__(self, "boxes", boxes)
    object.__setattr__(self, "changes", changes)
    object.__setattr__(self, "image_size", (height, width))

  @classmethod
  def from_regions(cls, boxes, changes: Sequence[np.ndarray],
                   image_size: tuple[int, int]) -> "CroppedMasks":
    """Masks given as the runs of larger regions (`changes` relative to
    `boxes`), each cut to the bounding box of its pixels."""
    cut = [_cut(box, runs) for box, runs in
           zip(np.asarray(boxes, np.int64).reshape(-1, 4), changes)]
    return cls(np.asarray([box for box, _ in cut], np.int64).reshape(-1, 4),
               tuple(runs for _, runs in cut), image_size)

  @classmethod
  def from_crops(cls, crops: Sequence[np.ndarray], offsets,
                 image_size: tuple[int, int]) -> "CroppedMasks":
    """Masks given as [h_i, w_i] bool crops with their (row, column)."""
    offsets = np.asarray(offsets, np.int64).reshape(-1, 2)
    crops = [np.asarray(c, bool).reshape(np.shape(c)[:2]) for c in crops]
    boxes = [(y, x, *c.shape) for (y, x), c in zip(offsets, crops)]
    return cls(np.asarray(boxes, np.int64).reshape(-1, 4),
               tuple(column_changes(c) for c in crops), image_size)

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
    return cls.from_crops(crops, offsets, masks.shape[1:3])

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
    return cls.from_crops(crops, offsets, image_size)

  def __len__(self) -> int:
    return len(self.changes)

  def __getitem__(self, index) -> "CroppedMasks":
    """The masks picked by a bool mask, integer indices or a slice."""
    picked = np.atleast_1d(np.arange(len(self))[index])
    return CroppedMasks(self.boxes[picked],
                        tuple(self.changes[i] for i in picked),
                        self.image_size)

  @property
  def shape(self) -> tuple[int, int, int]:
    """(n, H, W) of the dense array."""
    return (len(self), *self.image_size)

  @property
  def offsets(self) -> np.ndarray:
    """[n, 2] (row, column) of each crop's top-left pixel."""
    return self.boxes[:, :2]

  def areas(self) -> np.ndarray:
    """[n] int64 pixels in each mask."""
    return np.asarray([(c[1::2] - c[0::2]).sum() for c in self.changes],
                      np.int64)

  def crop(self, i: int) -> np.ndarray:
    """[h, w] bool, mask i inside its box."""
    _, _, height, width = (int(v) for v in self.boxes[i])
    marks = np.zeros(width * (height + 1) + 1, np.int8)
    marks[self.changes[i][0::2]] = 1
    marks[self.changes[i][1::2]] = -1
    inside = np.cumsum(marks[:-1], dtype=np.int8).astype(bool)
    return inside.reshape(width, height + 1)[:, :height].T

  def sample(self, i: int, rows: np.ndarray, cols: np.ndarray
             ) -> np.ndarray:
    """`crop(i)[rows][:, cols]` ([len(rows), len(cols)] bool) for
    nondecreasing crop rows and columns, from the runs of those columns
    only (a picture of a 24 MP photo samples a tenth of its pixels)."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    height = int(self.boxes[i, 2])
    column, row = np.divmod(self.changes[i], height + 1)
    kept_columns, inverse = np.unique(cols, return_inverse=True)
    runs = np.flatnonzero(np.isin(column[0::2], kept_columns))
    where = np.searchsorted(kept_columns, column[0::2][runs])
    marks = np.zeros((len(rows) + 1, len(kept_columns)), np.int32)
    np.add.at(marks, (np.searchsorted(rows, row[0::2][runs]), where), 1)
    np.add.at(marks, (np.searchsorted(rows, row[1::2][runs]), where), -1)
    return (np.cumsum(marks, axis=0)[:-1] > 0)[:, inverse]

  def mask(self, i: int) -> np.ndarray:
    """[H, W] bool, mask i over the whole image."""
    full = np.zeros(self.image_size, bool)
    y, x, h, w = self.boxes[i]
    full[y:y + h, x:x + w] = self.crop(i)
    return full

  def dense(self) -> np.ndarray:
    """[n, H, W] bool (n x H x W bytes: only for small images)."""
    return np.stack([self.mask(i) for i in range(len(self))]).reshape(
        self.shape)

  def to_rle(self) -> list[dict]:
    """COCO RLE of each mask ({"size": [H, W], "counts": str}), equal to
    pycocotools' encoding of the dense mask, without building it."""
    return [_rle(box, changes, self.image_size)
            for box, changes in zip(self.boxes, self.changes)]


def column_changes(crop: np.ndarray) -> np.ndarray:
  """`CroppedMasks.changes` of an [h, w] bool crop."""
  crop = np.asarray(crop, bool)
  steps = np.pad(crop.T.astype(np.int8), [(0, 0), (1, 1)])
  return np.flatnonzero(steps[:, 1:] != steps[:, :-1])


def _cut(box, changes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(box, changes) of a region's runs cut to their bounding box."""
  y, x, h, _ = (int(v) for v in box)
  if not changes.size:
    return np.zeros(4, np.int64), changes
  column, row = np.divmod(changes, h + 1)
  top, bottom = row[0::2].min(), row[1::2].max()
  left, right = column[0], column[-1] + 1
  rows = bottom - top
  return (np.asarray([y + top, x + left, rows, right - left], np.int64),
          (column - left) * (rows + 1) + row - top)


def _rle(box, changes: np.ndarray, image_size) -> dict:
  """COCO RLE of the [H, W] mask of a crop's runs.

  COCO RLE counts alternate runs of 0s and 1s (starting with 0s) along the
  image in column-major order, where crop row r of column c is image index
  (x + c) * H + y + r. An end that meets the next start (a run through the
  crop's bottom and the next column's top, when the crop spans the image's
  height) is no change.
  """
  height, width = (int(v) for v in image_size)
  y, x, h, _ = (int(v) for v in box)
  column, row = np.divmod(changes, h + 1)
  positions = (column + x) * height + y + row
  meets = np.flatnonzero(positions[1:] == positions[:-1])
  positions = np.delete(positions, np.concatenate([meets, meets + 1]))
  # (pycocotools writes no empty last run for a mask that ends the image.)
  positions = positions[positions < height * width]
  runs = np.diff(np.concatenate([[0], positions, [height * width]]))
  rle = mask_api.frPyObjects({"size": [height, width],
                              "counts": runs.tolist()}, height, width)
  return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def as_cropped(masks) -> CroppedMasks:
  """`CroppedMasks` as they are; an [n, H, W] array cropped
  (`CroppedMasks.from_dense`)."""
  if isinstance(masks, CroppedMasks):
    return masks
  return CroppedMasks.from_dense(masks)
