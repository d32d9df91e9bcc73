"""Finds the first unreadable record of TFRecord files, to name it in errors.

TensorFlow reports a corrupt TFRecord ("corrupted record at <offset>") or an
undecodable example without the file it came from. When the input pipeline
fails, the training driver scans the split with `find_bad_record`, which
reads every file in order, decodes each example with Model Garden's decoder
(masks included) and checks that masks, boxes and classes agree and that the
masks are the image's size.
"""

from google.protobuf import message
import tensorflow as tf

from official.vision.dataloaders import tf_example_decoder


def _checked(decoded: dict) -> tf.Tensor:
  num = tf.shape(decoded["groundtruth_boxes"])[0]
  masks = decoded["groundtruth_instance_masks"]
  tf.debugging.assert_equal(
      tf.shape(masks)[0], num,
      message="instance masks disagree with the box count")
  tf.debugging.assert_equal(tf.shape(decoded["groundtruth_classes"])[0], num,
                            message="classes disagree with the box count")
  if num > 0:  # (A record without objects may carry masks of any size.)
    tf.debugging.assert_equal(
        tf.shape(masks)[1:3], tf.shape(decoded["image"])[0:2],
        message="instance masks are not the size of its image (its JSON "
                "height and width, or an EXIF-rotated image?)")
  return num


def input_files(input_path, name: str = "input_path") -> list[str]:
  """The sorted files of a data config's input_path.

  Args:
    input_path: a glob, comma-separated globs, or a list of them.
    name: how errors name the setting.

  Raises:
    FileNotFoundError: no pattern at all, or a pattern that matches no
      files (named).
  """
  patterns = [input_path] if isinstance(input_path, str) else list(input_path)
  patterns = [p for pattern in patterns for p in pattern.split(",") if p]
  if not patterns:
    raise FileNotFoundError(f"{name} is empty: no files to read")
  files = []
  for pattern in patterns:
    matches = tf.io.gfile.glob(pattern)
    if not matches:
      raise FileNotFoundError(f"{name} {pattern!r} matches no files")
    files += matches
  return sorted(files)


def find_bad_record(file_pattern: str) -> str | None:
  """'<file>: record <i> (source_id ...): <reason>' for the first bad record.

  Args:
    file_pattern: glob (or comma-separated globs) of TFRecord files of
      Model Garden TF-Examples with instance masks.

  Returns:
    The description of the first record that cannot be read, decoded or
    checked, or None when every record is fine.
  """
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
  for path in input_files(file_pattern):
    records = tf.data.TFRecordDataset(path)
    index = 0
    try:
      for record in records:
        try:
          _checked(decoder.decode(record))
        except (tf.errors.OpError, ValueError) as e:
          source = _source_id(record.numpy())
          return (f"{path}: record {index} (source_id {source}): "
                  f"{_message(e)}")
        index += 1
    except tf.errors.OpError as e:  # The file itself: CRC, truncation.
      return f"{path}: record {index}: {_message(e)}"
  return None


def _source_id(record: bytes) -> str:
  """The record's image/source_id, "?" when it has none or is no Example."""
  try:
    example = tf.train.Example.FromString(record)
  except message.DecodeError:
    return "?"
  feature = example.features.feature.get("image/source_id")
  return (feature.bytes_list.value[0].decode("utf-8", "replace")
          if feature and feature.bytes_list.value else "?")


def _message(error: Exception) -> str:
  text = getattr(error, "message", None) or str(error)
  # Drop TensorFlow's "{{function_node ...}}" prefix and "[Op:...]" suffix.
  if "}}" in text:
    text = text.split("}}", 1)[1]
  return text.split(" [Op:", 1)[0].strip()
