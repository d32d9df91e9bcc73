"""COCO instances JSON + images -> TFRecords in Model Garden's TF-Example
format (image, boxes, classes, PNG instance masks, is_crowd), with Model
Garden's own writer functions (`official.vision.data.create_coco_tf_record`).
"""

import collections
import json
import os

from absl import logging

from official.vision.data import create_coco_tf_record
from official.vision.data import tfrecord_lib
from pycocotools import mask as mask_api
from tensormask_tf.data import shapes_dataset


def write_coco_tfrecords(annotations_file: str, image_dir: str,
                         output_prefix: str, num_shards: int = 1,
                         include_masks: bool = True) -> list[str]:
  """Converts a COCO instances file; returns the written shard paths.

  Raises:
    FileNotFoundError: the annotations file or an image is missing.
    ValueError: the annotations file is not COCO instances JSON, an RLE
      mask is unreadable or not its image's size, or num_shards < 1.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards must be at least 1, got {num_shards}")
  if not os.path.isfile(annotations_file):
    raise FileNotFoundError(f"no annotations file {annotations_file}")
  with open(annotations_file) as f:
    coco = json.load(f)
  for key in ("images", "annotations", "categories"):
    if key not in coco:
      raise ValueError(f"{annotations_file} is not a COCO instances file: it "
                       f"has no '{key}'.")
  for image in coco["images"]:
    path = os.path.join(image_dir, image["file_name"])
    if not os.path.isfile(path):
      raise FileNotFoundError(f"image {path} of {annotations_file} is missing")
  sizes = {image["id"]: (image["height"], image["width"])
           for image in coco["images"]}
  by_image = collections.defaultdict(list)
  for annotation in coco["annotations"]:
    if (include_masks and annotation["image_id"] in sizes and
        isinstance(annotation.get("segmentation"), dict)):
      annotation = {**annotation, "segmentation": _model_garden_rle(
          annotation, *sizes[annotation["image_id"]])}
    by_image[annotation["image_id"]].append(annotation)
  id_to_name = {c["id"]: c["name"] for c in coco["categories"]}
  os.makedirs(os.path.dirname(output_prefix) or ".", exist_ok=True)
  examples = create_coco_tf_record.generate_annotations(
      images=coco["images"], image_dirs=[image_dir],
      panoptic_masks_dir=None, img_to_obj_annotation=by_image,
      img_to_caption_annotation=None, img_to_panoptic_annotation=None,
      is_category_thing=None, id_to_name_map=id_to_name,
      include_panoptic_masks=False, include_masks=include_masks)
  skipped = tfrecord_lib.write_tf_record_dataset(
      output_prefix, examples, create_coco_tf_record.create_tf_example,
      num_shards, multiple_processes=0)
  if skipped:
    # Model Garden's writer drops them and says so only at INFO level; the
    # objects become background.
    logging.warning(
        "%s: %d of %d annotations were left out of the TFRecords (Model "
        "Garden's writer drops boxes without area or reaching past their "
        "image).", annotations_file, skipped, len(coco["annotations"]))
  return [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord"
          for i in range(num_shards)]


def _model_garden_rle(annotation: dict, height: int, width: int):
  """An RLE segmentation in the forms Model Garden's writer decodes.

  It reads uncompressed RLE ("counts" a list) only, and for a non-crowd
  object only inside a list (as polygons come); compressed RLE ("counts" a
  string, as many exporters write) and a bare non-crowd RLE failed in it
  without naming the annotation.
  """
  rle = annotation["segmentation"]
  if isinstance(rle.get("counts"), str):
    try:
      binary = mask_api.decode({"size": rle["size"],
                                "counts": rle["counts"].encode("ascii")})
    except (ValueError, TypeError, UnicodeEncodeError) as e:
      raise ValueError(f"annotation {annotation.get('id')} of image "
                       f"{annotation.get('image_id')}: unreadable RLE ({e})"
                       ) from e
    rle = shapes_dataset.uncompressed_rle(binary)
  if list(rle.get("size", ())) != [height, width]:
    raise ValueError(
        f"annotation {annotation.get('id')} of image "
        f"{annotation.get('image_id')}: its RLE size {rle.get('size')} is "
        f"not the image's {height}x{width}")
  return rle if annotation.get("iscrowd") else [rle]
