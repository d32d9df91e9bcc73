"""A deterministic synthetic "shapes" instance-segmentation dataset.

Two variants:
- "shapes" (the quickstart's): circles, rectangles, triangles and rings.
- "shapes_large" (the Table 2 ablations', docs/ablations.md): outlines
  whose detail a coarse mask loses: rings (holes), five-pointed stars
  (concave corners), crescents (concave curves) and wavy blobs, from 24 px
  to 95% of the image side, so that large objects are common.
Each object has a random colour on a noisy background; objects overlap
(later shapes occlude earlier ones; an object left with too few visible
pixels is dropped). Written as a COCO instances JSON plus
PNG images, so the same tools convert it as real COCO data. Masks are stored
as uncompressed RLE lists (exact, holes included), which pycocotools and
Model Garden's COCO TFRecord writer both read.
"""

import json
import os

import numpy as np
from PIL import Image

CATEGORIES = ("circle", "rectangle", "triangle", "ring")
# Per variant: the categories and the range of an object's side, as
# (pixels, fraction of the image's short side).
VARIANTS = {
    "shapes": (CATEGORIES, (8, 0.8)),
    "shapes_large": (("ring", "star", "crescent", "blob"), (24, 0.95)),
}
MIN_VISIBLE_PIXELS = 24


def _shape_mask(kind: str, height: int, width: int, rng,
                side_range: tuple[float, float] = (8, 0.8)) -> np.ndarray:
  """One shape's full mask (before occlusion); side_range as VARIANTS'."""
  side = rng.uniform(side_range[0], side_range[1] * min(height, width))
  cy = rng.uniform(side / 3, height - side / 3)
  cx = rng.uniform(side / 3, width - side / 3)
  yy, xx = np.mgrid[0:height, 0:width] + 0.5
  if kind in ("star", "blob"):
    # A radius that varies with the angle: five sharp points (star) or a
    # few smooth lobes (blob).
    angle = np.arctan2(yy - cy, xx - cx) + rng.uniform(0, 2 * np.pi)
    r = np.sqrt((yy - cy)**2 + (xx - cx)**2)
    if kind == "star":
      # Triangle wave of period 2 pi / 5 between the inner and outer radius.
      phase = np.abs((angle * 5 / (2 * np.pi)) % 1.0 - 0.5) * 2
      inner = rng.uniform(0.35, 0.55)
      return r <= side / 2 * (inner + (1 - inner) * phase)
    lobes = rng.randint(3, 7)
    wave = sum(rng.uniform(0.1, 0.25) * np.sin(k * angle + rng.uniform(0, 7))
               for k in (lobes, lobes + 2))
    return r <= side / 2 * (0.7 + wave)
  if kind == "crescent":
    # A disc minus a shifted disc of similar size.
    radius = side / 2
    shift = radius * rng.uniform(0.4, 0.8)
    direction = rng.uniform(0, 2 * np.pi)
    by, bx = cy + shift * np.sin(direction), cx + shift * np.cos(direction)
    inner = radius * rng.uniform(0.7, 0.95)
    return (((yy - cy)**2 + (xx - cx)**2 <= radius**2)
            & ((yy - by)**2 + (xx - bx)**2 > inner**2))
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


def generate_image(height: int, width: int, max_objects: int, rng,
                   variant: str = "shapes"):
  """One image and its objects: (uint8 image, [(category, mask)]), the
  category an index into the variant's categories."""
  kinds, side_range = VARIANTS[variant]
  image = rng.uniform(60, 110, (height, width, 3))
  image += rng.normal(0, 8, (height, width, 3))
  visible = []
  for _ in range(rng.randint(1, max_objects + 1)):
    category = int(rng.randint(len(kinds)))
    mask = _shape_mask(kinds[category], height, width, rng, side_range)
    if mask.sum() < MIN_VISIBLE_PIXELS:
      continue
    image[mask] = rng.uniform(130, 255, 3)
    visible = [(c, m & ~mask) for c, m in visible]  # Occlusion.
    visible.append((category, mask))
  objects = [(c, m) for c, m in visible if m.sum() >= MIN_VISIBLE_PIXELS]
  return np.clip(image, 0, 255).astype(np.uint8), objects


def write_shapes_dataset(output_dir: str, split: str, num_images: int,
                         height: int = 128, width: int = 128,
                         max_objects: int = 4, seed: int = 0,
                         variant: str = "shapes") -> str:
  """Writes `<output_dir>/<split>/*.png` and `<output_dir>/<split>.json`.

  Returns the path of the COCO instances JSON. The same seed gives the same
  dataset, byte for byte. `variant` is a key of VARIANTS.
  """
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got "
                     f"{variant!r}")
  kinds = VARIANTS[variant][0]
  rng = np.random.RandomState(seed)
  image_dir = os.path.join(output_dir, split)
  os.makedirs(image_dir, exist_ok=True)
  images, annotations = [], []
  for image_id in range(1, num_images + 1):
    pixels, objects = generate_image(height, width, max_objects, rng,
                                     variant)
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
                         for i, name in enumerate(kinds)]}
  json_path = os.path.join(output_dir, f"{split}.json")
  with open(json_path, "w") as f:
    json.dump(coco, f)
  return json_path
