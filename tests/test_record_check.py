"""find_bad_record names the first unreadable or inconsistent record."""

import glob
import shutil

import tensorflow as tf

from tensormask_tf.dataloaders import record_check


def test_good_records_pass(shapes_records):
  assert record_check.find_bad_record(shapes_records["train"]) is None


def test_a_corrupt_file_is_named_with_the_record_index(shapes_records,
                                                       tmp_path):
  source = sorted(glob.glob(shapes_records["val"]))[0]
  count = sum(1 for _ in tf.data.TFRecordDataset(source))
  content = bytearray(open(source, "rb").read())
  content[-20:-10] = b"x" * 10  # Inside the last record.
  (tmp_path / "b.tfrecord").write_bytes(bytes(content))
  shutil.copy(source, tmp_path / "a.tfrecord")
  found = record_check.find_bad_record(str(tmp_path / "*.tfrecord"))
  assert found.startswith(f"{tmp_path / 'b.tfrecord'}: record {count - 1}:")
  assert "corrupted record" in found or "truncated" in found


def test_masks_disagreeing_with_boxes_are_named(shapes_records, tmp_path):
  source = sorted(glob.glob(shapes_records["val"]))[0]
  records = [r.numpy() for r in tf.data.TFRecordDataset(source)]
  example = tf.train.Example.FromString(records[1])
  masks = example.features.feature["image/object/mask"].bytes_list.value
  assert len(masks) >= 1
  del masks[-1]  # One box without its mask.
  records[1] = example.SerializeToString()
  path = str(tmp_path / "m.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)
  source_id = example.features.feature["image/source_id"].bytes_list.value[0]
  found = record_check.find_bad_record(path)
  assert found.startswith(f"{path}: record 1 (source_id "
                          f"{source_id.decode()}): ")
  assert "instance masks disagree with the box count" in found


def test_a_record_that_is_no_example_is_named(shapes_records, tmp_path):
  source = sorted(glob.glob(shapes_records["val"]))[0]
  path = str(tmp_path / "x.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(next(iter(tf.data.TFRecordDataset(source))).numpy())
    writer.write(b"\xff\xff not a tf.train.Example")
  found = record_check.find_bad_record(path)
  assert found.startswith(f"{path}: record 1 (source_id ?):")


def test_masks_of_another_size_than_the_image_are_named(shapes_records,
                                                        tmp_path):
  # What a COCO JSON with a wrong height/width (or an EXIF-rotated image)
  # gives: the parser refuses it, and the scan must name it.
  source = sorted(glob.glob(shapes_records["val"]))[0]
  records = [r.numpy() for r in tf.data.TFRecordDataset(source)]
  example = tf.train.Example.FromString(records[1])
  masks = example.features.feature["image/object/mask"].bytes_list.value
  assert len(masks) >= 1
  for i, mask in enumerate(masks):
    wider = tf.pad(tf.io.decode_png(mask), [[0, 0], [0, 3], [0, 0]])
    masks[i] = tf.io.encode_png(wider).numpy()
  records[1] = example.SerializeToString()
  path = str(tmp_path / "s.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)
  found = record_check.find_bad_record(path)
  assert found.startswith(f"{path}: record 1 (source_id ")
  assert "instance masks are not the size of its image" in found
