"""Tests of the synthetic shapes dataset and the COCO TFRecord writer."""

import filecmp
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_api
import pytest
import tensorflow as tf

from official.vision.dataloaders import tf_example_decoder
from tensormask_tf.data import coco_tfrecord
from tensormask_tf.data import shapes_dataset


def test_uncompressed_rle_decodes_with_pycocotools():
  rng = np.random.RandomState(0)
  for first in (0, 1):
    mask = rng.uniform(size=(7, 5)) < 0.5
    mask[0, 0] = bool(first)
    rle = mask_api.frPyObjects([shapes_dataset.uncompressed_rle(mask)], 7, 5)
    np.testing.assert_array_equal(mask_api.decode(rle)[..., 0], mask)


def test_shapes_round_trip_through_model_garden_writer_and_decoder(tmp_path):
  size, count, seed = 96, 5, 1
  json_path = shapes_dataset.write_shapes_dataset(
      str(tmp_path), "train", count, height=size, width=size, seed=seed)
  # The generator's own objects, regenerated with the same random stream.
  rng = np.random.RandomState(seed)
  generated = [shapes_dataset.generate_image(size, size, 4, rng)
               for _ in range(count)]
  paths = coco_tfrecord.write_coco_tfrecords(
      json_path, str(tmp_path / "train"), str(tmp_path / "records" / "train"),
      num_shards=2)
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
  seen = set()
  with open(json_path) as f:
    coco = json.load(f)
  for record in tf.data.TFRecordDataset(paths):
    example = decoder.decode(record)
    image_id = int(example["source_id"])
    seen.add(image_id)
    pixels, objects = generated[image_id - 1]
    np.testing.assert_array_equal(example["image"], pixels)
    np.testing.assert_array_equal(
        example["groundtruth_classes"], [c + 1 for c, _ in objects])
    masks = example["groundtruth_instance_masks"].numpy() > 0.5
    np.testing.assert_array_equal(masks, np.stack([m for _, m in objects]))
    annotations = [a for a in coco["annotations"] if a["image_id"] == image_id]
    for annotation, mask, box in zip(annotations, masks,
                                     example["groundtruth_boxes"].numpy()):
      decoded = mask_api.decode(mask_api.frPyObjects(
          annotation["segmentation"], size, size))[..., 0]
      np.testing.assert_array_equal(decoded, mask)
      x, y, w, h = annotation["bbox"]
      np.testing.assert_allclose(box * size, [y, x, y + h, x + w], atol=1e-4)
      rows, cols = np.nonzero(mask)
      assert (y, x, y + h, x + w) == (rows.min(), cols.min(), rows.max() + 1,
                                      cols.max() + 1)
  assert seen == set(range(1, count + 1))
  assert len(coco["annotations"]) >= count


def test_writer_warns_about_annotations_it_leaves_out(tmp_path, caplog):
  json_path = shapes_dataset.write_shapes_dataset(str(tmp_path), "t", 2,
                                                  height=64, width=64)
  with open(json_path) as f:
    coco = json.load(f)
  coco["annotations"][0]["bbox"][2] = 0  # No area: Model Garden drops it.
  with open(json_path, "w") as f:
    json.dump(coco, f)
  with caplog.at_level("WARNING"):
    coco_tfrecord.write_coco_tfrecords(json_path, str(tmp_path / "t"),
                                       str(tmp_path / "out"))
  assert (f"1 of {len(coco['annotations'])} annotations were left out"
          in caplog.text)


def test_same_seed_gives_the_same_dataset(tmp_path):
  for run in ("a", "b"):
    shapes_dataset.write_shapes_dataset(str(tmp_path / run), "val", 3, seed=7)
  assert filecmp.cmp(tmp_path / "a" / "val.json", tmp_path / "b" / "val.json",
                     shallow=False)
  for name in os.listdir(tmp_path / "a" / "val"):
    assert filecmp.cmp(tmp_path / "a" / "val" / name,
                       tmp_path / "b" / "val" / name, shallow=False)
  assert Image.open(tmp_path / "a" / "val" / "val_000001.png").size == (128, 128)


def test_writer_rejects_missing_and_malformed_inputs(tmp_path):
  with pytest.raises(ValueError, match="num_shards must be at least 1, got 0"):
    coco_tfrecord.write_coco_tfrecords(str(tmp_path / "none.json"),
                                       str(tmp_path), str(tmp_path / "out"), 0)
  with pytest.raises(FileNotFoundError, match="no annotations file"):
    coco_tfrecord.write_coco_tfrecords(str(tmp_path / "none.json"),
                                       str(tmp_path), str(tmp_path / "out"))
  (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
  with pytest.raises(ValueError, match="not a COCO instances file.*annotations"):
    coco_tfrecord.write_coco_tfrecords(str(tmp_path / "bad.json"),
                                       str(tmp_path), str(tmp_path / "out"))
  json_path = shapes_dataset.write_shapes_dataset(str(tmp_path), "t", 2)
  os.remove(tmp_path / "t" / "t_000002.png")
  with pytest.raises(FileNotFoundError, match="t_000002.png"):
    coco_tfrecord.write_coco_tfrecords(json_path, str(tmp_path / "t"),
                                       str(tmp_path / "out"))


def test_scripts_write_the_dataset_and_fail_clearly(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = lambda *args: subprocess.run(
      [sys.executable, *args], capture_output=True, text=True, timeout=300,
      check=False, cwd=root)
  ok = run("scripts/create_shapes_dataset.py", f"--output_dir={tmp_path}",
           "--num_train=3", "--num_val=2", "--size=64", "--shards=1")
  assert ok.returncode == 0, ok.stderr[-2000:]
  for split in ("train", "val"):
    assert (tmp_path / f"{split}.json").is_file()
    assert (tmp_path / "tfrecords" /
            f"{split}-00000-of-00001.tfrecord").is_file()
  bad = run("scripts/create_coco_tfrecord.py",
            f"--annotations_file={tmp_path / 'missing.json'}",
            f"--images_dir={tmp_path}", f"--output_prefix={tmp_path / 'o'}")
  assert bad.returncode != 0
  assert "no annotations file" in bad.stderr
  assert "Traceback" not in bad.stderr


def test_writer_reads_compressed_and_bare_rle_masks(tmp_path):
  # Compressed RLE ("counts" a string, as many exporters write) and a bare
  # non-crowd RLE dict failed in Model Garden's writer.
  height, width = 20, 30
  Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(
      tmp_path / "a.png")
  rng = np.random.RandomState(4)
  blobs = []
  for top, left in ((2, 3), (8, 12), (1, 20)):
    blob = np.zeros((height, width), np.uint8)
    blob[top:top + 6, left:left + 7] = rng.uniform(size=(6, 7)) < 0.8
    blob[top, left] = blob[top + 5, left + 6] = 1  # The box's corners.
    blobs.append(blob)

  def compressed(blob):
    rle = mask_api.encode(np.asfortranarray(blob))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}

  polygon = [[3.0, 14.0, 9.0, 14.0, 9.0, 18.0, 3.0, 18.0]]
  polygon_mask = mask_api.decode(mask_api.frPyObjects(
      polygon, height, width)).max(axis=2)
  segmentations = [(compressed(blobs[0]), 0),
                   (shapes_dataset.uncompressed_rle(blobs[1]), 0),
                   (compressed(blobs[2]), 1), (polygon, 0)]
  annotations = []
  for i, (segmentation, crowd) in enumerate(segmentations):
    mask = [blobs[0], blobs[1], blobs[2], polygon_mask][i]
    rows, cols = np.nonzero(mask)
    annotations.append({
        "id": i + 1, "image_id": 7, "category_id": 1, "iscrowd": crowd,
        "segmentation": segmentation, "area": float(mask.sum()),
        "bbox": [float(cols.min()), float(rows.min()),
                 float(cols.max() + 1 - cols.min()),
                 float(rows.max() + 1 - rows.min())]})
  json_path = tmp_path / "a.json"
  json_path.write_text(json.dumps({
      "images": [{"id": 7, "file_name": "a.png", "height": height,
                  "width": width}],
      "annotations": annotations,
      "categories": [{"id": 1, "name": "blob"}]}))
  paths = coco_tfrecord.write_coco_tfrecords(
      str(json_path), str(tmp_path), str(tmp_path / "rec"))
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
  decoded = decoder.decode(next(iter(tf.data.TFRecordDataset(paths))))
  np.testing.assert_array_equal(decoded["groundtruth_is_crowd"],
                                [False, False, True, False])
  np.testing.assert_array_equal(
      decoded["groundtruth_instance_masks"],
      np.stack([blobs[0], blobs[1], blobs[2], polygon_mask]).astype(
          np.float32))
  # An RLE of another size than its image is named.
  annotations[0]["segmentation"]["size"] = [height, width + 1]
  json_path.write_text(json.dumps({
      "images": [{"id": 7, "file_name": "a.png", "height": height,
                  "width": width}],
      "annotations": annotations[:1],
      "categories": [{"id": 1, "name": "blob"}]}))
  with pytest.raises(ValueError, match="annotation 1 of image 7: its RLE size"):
    coco_tfrecord.write_coco_tfrecords(str(json_path), str(tmp_path),
                                       str(tmp_path / "rec2"))
