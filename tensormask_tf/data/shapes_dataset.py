"""A deterministic synthetic "shapes" instance-segmentation dataset.

Images with circles, rectangles, triangles and rings (the four classes) of
random colours on a noisy background, sizes from about 8 px to most of the
image, overlapping (later shapes occlude earlier ones; an object left with
too few visible pixels is dropped). Written as a COCO instances JSON plus
PNG images, so the same tools convert it as real COCO data. Masks are stored
as uncompressed RLE lists (exact, holes included), which pycocotools and
Model Garden's COCO TFRecord writer both read.
"""

import json
import os

import numpy as np
from PIL import Image

CATEGORIES = ("circle", "rectangle", "triangle", "ring")
MIN_VISIBLE_PIXELS = 24


def _shape_mask(kind: str, height: int, width: int, rng) -> np.ndarray:
  """One shape's full mask (before occlusion)."""
  side = rng.uniform(8, 0.8 * min(height, width))
  cy = rng.uniform(side / 3, height - side / 3)
  cx = rng.uniform(side / 3, width - side / 3)
  yy, xx = np.mgrid[0:height, 0:width] + 0.5
  if kind == "circle":
    return (yy - cy)**2 + (xx - cx)**2 <= (side / 2)**2
  if kind == "ring":
    r2 = (yy - cy)**2 + (xx - cx)**2
    return (r2 <= (side / 2)**2) & (r2 >= (side / 2 * rng.uniform(0.4, 0.7))**2)
  if kind == "rectangle":
    h = side * rng.uniform(0.5, 1.0)
    w = side * rng.uniform(0.5, 1.0)
    return (np.abs(yy - cy) <= h / 2) & (np.abs(xx - cx) <= w / 2)
  # Triangle pointing up: apex at the top, base at the bottom.
  top, bottom = cy - side / 2, cy + side / 2
  half_width = (yy - top) / side * side / 2
  return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half_width)


def uncompressed_rle(mask: np.ndarray) -> dict:
  """COCO uncompressed RLE: run lengths in column-major order, zeros first."""
  flat = np.asarray(mask, np.uint8).flatten(order="F")
  changes = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], changes, [flat.size]])
  counts = np.diff(bounds).tolist()
  if flat.size and flat[0] == 1:
    counts = [0] + counts
  return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def generate_image(height: int, width: int, max_objects: int, rng):
  """One image and its objects: (uint8 image, [(category, mask)])."""
  image = rng.uniform(60, 110, (height, width, 3))
  image += rng.normal(0, 8, (height, width, 3))
  visible = []
  for _ in range(rng.randint(1, max_objects + 1)):
    category = int(rng.randint(len(CATEGORIES)))
    mask = _shape_mask(CATEGORIES[category], height, width, rng)
    if mask.sum() < MIN_VISIBLE_PIXELS:
      continue
    image[mask] = rng.uniform(130, 255, 3)
    visible = [(c, m & ~mask) for c, m in visible]  # Occlusion.
    visible.append((category, mask))
  objects = [(c, m) for c, m in visible if m.sum() >= MIN_VISIBLE_PIXELS]
  return np.clip(image, 0, 255).astype(np.uint8), objects


def write_shapes_dataset(output_dir: str, split: str, num_images: int,
                         height: int = 128, width: int = 128,
                         max_objects: int = 4, seed: int = 0) -> str:
  """Writes `<output_dir>/<split>/*.png` and `<output_dir>/<split>.json`.

  Returns the path of the COCO instances JSON. The same seed gives the same
  dataset, byte for byte.
  """
  rng = np.random.RandomState(seed)
  image_dir = os.path.join(output_dir, split)
  os.makedirs(image_dir, exist_ok=True)
  images, annotations = [], []
  for image_id in range(1, num_images + 1):
    pixels, objects = generate_image(height, width, max_objects, rng)
    file_name = f"{split}_{image_id:06d}.png"
    Image.fromarray(pixels).save(os.path.join(image_dir, file_name))
    images.append({"id": image_id, "file_name": file_name, "height": height,
                   "width": width})
    for category, mask in objects:
      rows, cols = np.nonzero(mask)
      x0, y0 = int(cols.min()), int(rows.min())
      annotations.append({
          "id": len(annotations) + 1, "image_id": image_id,
          "category_id": category + 1, "iscrowd": 0,
          "area": int(mask.sum()),
          "bbox": [x0, y0, int(cols.max()) + 1 - x0, int(rows.max()) + 1 - y0],
          "segmentation": [uncompressed_rle(mask)],
      })
  coco = {"images": images, "annotations": annotations,
          "categories": [{"id": i + 1, "name": name}
                         for i, name in enumerate(CATEGORIES)]}
  json_path = os.path.join(output_dir, f"{split}.json")
  with open(json_path, "w") as f:
    json.dump(coco, f)
  return json_path
