"""Pictures of detections: translucent class-coloured masks, boxes, labels
and scores, drawn with Model Garden's visualization utilities."""

from collections.abc import Sequence
import json
import os

import numpy as np
from PIL import Image
from PIL import ImageColor

from official.vision.utils.object_detection import visualization_utils
from tensormask_tf.modeling import detection_generator
from tensormask_tf.ops import cropped_masks


def class_names(annotation_file: str | None,
                category_ids: Sequence[int]) -> dict[int, str]:
  """{category id: name} of the model's classes, in class order
  (`tensormask_config.category_ids`), from a COCO annotation file's
  categories, else "class <id>"."""
  names = {}
  if annotation_file and os.path.isfile(annotation_file):
    with open(annotation_file) as f:
      names = {c["id"]: c["name"] for c in json.load(f)["categories"]}
  return {int(k): names.get(k, f"class {k}") for k in category_ids}


def _blend_mask(region: np.ndarray, mask: np.ndarray, color: str) -> None:
  """Model Garden's `draw_mask_on_image_array` (alpha 0.4) on a region in
  place, in numpy: PIL's composite of the colour over the region through a
  mask of 102, with PIL's rounding (x * 255 / 255 as ((t >> 8) + t) >> 8,
  t = x + 128)."""
  weight = int(255.0 * 0.4)
  rgb = np.asarray(ImageColor.getrgb(color), np.int32)
  under = region[mask].astype(np.int32)
  mixed = under * (255 - weight) + rgb * weight + 128
  region[mask] = (((mixed >> 8) + mixed) >> 8).astype(np.uint8)


def _picture_scale(height: int, width: int, min_side: int,
                   max_side: int) -> float:
  """The picture's size over the image's: a whole factor that brings the
  shorter side to min_side, or below 1 for a longer side over max_side."""
  if max(height, width) > max_side:
    return max_side / max(height, width)
  return float(max(1, -(-min_side // min(height, width))))


def draw_detections(image: np.ndarray, detections: dict,
                    class_names: dict[int, str], min_score: float = 0.5,
                    max_detections: int = 100,
                    min_side: int = 512, max_side: int = 2048,
                    category_ids: Sequence[int] | None = None) -> np.ndarray:
  """Draws one image's detections on a copy of it.

  Args:
    image: [H, W, 3] uint8.
    detections: {"boxes": [n, 4] pixels [ymin, xmin, ymax, xmax],
      "classes": [n] 0-based, "scores": [n], "masks": `CroppedMasks`,
      [n, H, W] bool or None} (as
      `detection_generator.detections_in_original_image`).
    class_names: {category id: name}.
    min_score: detections below it are not drawn.
    max_detections: at most this many (the best) are drawn.
    min_side: smaller images are enlarged by a whole factor (nearest
      neighbour) so labels stay readable.
    max_side: larger images (a 24 MP photo) are drawn at this longer side
      (bilinear, masks sampled at the picture's pixel centres): the picture
      is a preview, detections.json has the masks at full size.
    category_ids: the category id of each class 0..K-1; None: k + 1.

  Returns:
    [round(H * s), round(W * s), 3] uint8, s = ceil(min_side / min(H, W))
    or 1, or max_side / max(H, W) for an image larger than that.
  """
  height, width = image.shape[:2]
  scale = _picture_scale(height, width, min_side, max_side)
  size = (round(height * scale), round(width * scale))
  if scale >= 1:
    factor = int(scale)
    picture = np.repeat(np.repeat(np.asarray(image, np.uint8), factor, 0),
                        factor, 1)
  else:
    picture = np.array(Image.fromarray(np.asarray(image, np.uint8)).resize(
        size[::-1], Image.BILINEAR))
  # The image pixel under each picture pixel's centre, per axis.
  source = [np.minimum(((np.arange(n) + 0.5) / scale).astype(np.int64),
                       limit - 1) for n, limit in zip(size, (height, width))]
  category_index = {k: {"id": k, "name": v} for k, v in class_names.items()}
  ids = detection_generator.category_ids_of(detections["classes"],
                                            category_ids)
  scores = np.asarray(detections["scores"], np.float32)
  masks = detections.get("masks")
  if masks is not None:
    masks = cropped_masks.as_cropped(masks)
    # Model Garden's choice of detections and colours, drawn over each
    # mask's crop only (its full-image masks would cost n x H x W).
    for i in range(min(max_detections, len(masks))):
      if scores[i] <= min_score or not masks.changes[i].size:
        continue
      box = masks.boxes[i]
      spans = [np.flatnonzero((src >= start) & (src < start + length))
               for src, start, length in zip(source, box[:2], box[2:])]
      if not all(span.size for span in spans):
        continue
      rows, cols = spans
      crop = masks.sample(i, source[0][rows] - box[0],
                          source[1][cols] - box[1])
      _blend_mask(picture[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], crop,
                  visualization_utils.STANDARD_COLORS[
                      ids[i] % len(visualization_utils.STANDARD_COLORS)])
  visualization_utils.visualize_boxes_and_labels_on_image_array(
      picture, np.asarray(detections["boxes"], np.float32) * scale, ids,
      scores, category_index, max_boxes_to_draw=max_detections,
      min_score_thresh=min_score,
      line_thickness=max(1, min(picture.shape[:2]) // 200))
  return picture


def tile_pictures(pictures: Sequence[np.ndarray], side: int = 256,
                  columns: int = 4) -> np.ndarray:
  """Pictures side by side in rows of `columns`, one overview image.

  Args:
    pictures: [H_i, W_i, 3] uint8 each, at least one.
    side: each picture is resized (antialiased) so its longer side is
      `side` px, and put at the top left of its `side` x `side` cell.
    columns: cells per row.

  Returns:
    [rows * side, min(len(pictures), columns) * side, 3] uint8, white
    where no picture is.
  """
  if not pictures:
    raise ValueError("tile_pictures needs at least one picture")
  count = len(pictures)
  rows, width = -(-count // columns), min(count, columns)
  sheet = np.full((rows * side, width * side, 3), 255, np.uint8)
  for n, picture in enumerate(pictures):
    height, picture_width = picture.shape[:2]
    scale = side / max(height, picture_width)
    size = (max(1, round(picture_width * scale)), max(1, round(height * scale)))
    resized = np.asarray(Image.fromarray(np.asarray(picture, np.uint8)).resize(
        size, Image.Resampling.LANCZOS))
    top, left = (n // columns) * side, (n % columns) * side
    sheet[top:top + size[1], left:left + size[0]] = resized
  return sheet
