"""Prediction on image files from a training checkpoint.

`load_image` reads JPEG/PNG/... files into RGB uint8 (grayscale, palette
and RGBA images are converted; empty, unreadable or huge files raise
`ImageError` with the reason). `CheckpointPredictor` runs the model with
the evaluation preprocessing and returns detections in original pixels;
`SavedModelPredictor` and `OnnxPredictor` return the same from an export.
"""

import collections
from collections.abc import Sequence
import io
import json
import os
import struct

import numpy as np
from PIL import Image
from PIL import ImageOps
import tensorflow as tf

from official.core import config_definitions as cfg
from official.vision.ops import preprocess_ops
from tensormask_tf.configs import tensormask_config
from tensormask_tf.dataloaders import tensormask_input
from tensormask_tf.evaluation import coco_evaluator
from tensormask_tf.evaluation import visualization
from tensormask_tf.modeling import detection_generator
from tensormask_tf.modeling import factory
from tensormask_tf.ops import cropped_masks
from tensormask_tf.tasks import tensormask as tensormask_task

MAX_IMAGE_PIXELS = 100_000_000


class ImageError(ValueError):
  """An input file is not a usable image."""


class RunError(RuntimeError):
  """The model failed on one image (onnxruntime's error, as its message)."""


# The EXIF Orientation tag: how the stored pixels turn into the displayed
# image (1: as stored; 2-4 mirrored or half-turned; 5-8 a quarter turn,
# width and height swapped).
EXIF_ORIENTATION = 0x0112


def exif_orientation(image: Image.Image) -> int:
  """The EXIF Orientation (1..8) of an opened image; 1 without one, with
  a value outside 1..8, or when its EXIF cannot be parsed (its pixels are
  still usable, as detectron2's read_image takes them)."""
  try:
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
  except (OSError, SyntaxError, ValueError, struct.error):
    return 1
  return orientation if orientation in range(1, 9) else 1


def load_image(path: str, formats: Sequence[str] | None = None
               ) -> np.ndarray:
  """[H, W, 3] uint8 RGB of an image file as displayed, or ImageError
  saying why not.

  The file's EXIF Orientation is applied first (`ImageOps.exif_transpose`,
  as detectron2's read_image), so boxes, masks and pictures refer to the
  image a viewer shows; H x W is the displayed size, which the
  MAX_IMAGE_PIXELS limit and its message refer to.

  formats: the PIL format names a server decodes (others are refused);
  None accepts any image PIL reads, as predict.py decodes with PIL.
  """
  if not os.path.isfile(path):
    raise ImageError(f"{path}: no such file")
  if os.path.getsize(path) == 0:
    raise ImageError(f"{path}: the file is empty")
  try:
    with Image.open(path) as image:
      orientation = exif_orientation(image)
      # Checked before decoding anything: a quarter turn swaps the sides.
      width, height = image.size if orientation < 5 else image.size[::-1]
      if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"{path}: {width}x{height} is larger than "
            f"{MAX_IMAGE_PIXELS} pixels; downscale it first")
      if formats is not None and image.format not in formats:
        raise ImageError(f"{path}: {image.format} images are not decoded by "
                         f"the server ({', '.join(formats)} are)")
      image.load()
      if orientation != 1:  # In the image's own mode: before converting.
        image = ImageOps.exif_transpose(image)
      if image.mode.startswith("I"):  # 16/32-bit grayscale: 16-bit range.
        gray = np.clip(np.asarray(image, np.float64) / 257.0, 0, 255)
        return np.repeat(np.round(gray).astype(np.uint8)[..., None], 3, -1)
      # Grayscale, palette, RGBA (alpha dropped), CMYK...: to RGB.
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (OSError, Image.DecompressionBombError, SyntaxError) as e:
    raise ImageError(f"{path}: not a readable image ({e})") from e


def request_bytes(path: str, image: np.ndarray | None = None) -> bytes:
  """The encoded image to send a server that decodes with TensorFlow
  (which ignores EXIF), so that it sees the image as displayed.

  The file's own bytes when its EXIF Orientation is 1 or absent; else a
  PNG (lossless) of the displayed pixels, `load_image(path)` or `image`
  when given (its result, to decode the file once).

  Raises:
    ImageError: as load_image, for a file that is not a readable image.
  """
  try:
    with Image.open(path) as opened:
      orientation = exif_orientation(opened)
  except (OSError, SyntaxError) as e:
    raise ImageError(f"{path}: not a readable image ({e})") from e
  if orientation == 1:
    with open(path, "rb") as f:
      return f.read()
  if image is None:
    image = load_image(path)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def class_names(task_config) -> dict[int, str]:
  """{category id: name} of the model's classes, in class order, from the
  task's annotation file (see visualization)."""
  return visualization.class_names(
      task_config.annotation_file,
      tensormask_config.category_ids(task_config.model))


def picture_names(paths: list[str], output_dir: str | None = None
                  ) -> list[str]:
  """The pictures' file names of `paths`, all different.

  `<image name>.png`; `<image name>_<index in paths>.png` for names that
  several paths share (a.jpg and a.png, or one name in two folders); and
  a further `_<n>` for a name still taken, by an earlier picture (a_1.png
  beside a.jpg and a.png) or, with output_dir, by one of the images
  themselves, so no picture overwrites another or an input image.
  """
  inputs = {os.path.realpath(path) for path in paths}
  stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
  counts = collections.Counter(stems)
  names, taken = [], set()
  for i, stem in enumerate(stems):
    base = f"{stem}_{i}" if counts[stem] > 1 else stem
    name, n = f"{base}.png", 0
    while name in taken or (output_dir is not None and os.path.realpath(
        os.path.join(output_dir, name)) in inputs):
      n += 1
      name = f"{base}_{n}.png"
    names.append(name)
    taken.add(name)
  return names


def save_prediction(path: str, image: np.ndarray, detections: dict,
                    image_id: int, names: dict[int, str], output_dir: str,
                    min_score: float, picture_name: str | None = None,
                    category_ids: Sequence[int] | None = None
                    ) -> tuple[list[dict], str]:
  """Writes `<output_dir>/<picture_name>` with the detections scoring at
  least min_score; returns their COCO results entries (with "file_name")
  and the picture's path.

  Args:
    path: the image's file.
    image: [H, W, 3] uint8.
    detections: `detections_in_original_image`-style dict of the image.
    image_id: the COCO image id of the entries.
    names: {category id: name} for the picture.
    output_dir: an existing directory.
    min_score: detections below it are left out.
    picture_name: the picture's file name; by default `<image name>.png`
      (see `picture_names` for several images).
    category_ids: the category id of each class 0..K-1 (the predictor's
      `category_ids`); None: class k is id k + 1.
  """
  keep = detections["scores"] >= min_score
  found = {k: v[keep] for k, v in detections.items()}
  entries = coco_evaluator.coco_results(image_id, found, category_ids)
  for entry in entries:
    entry["file_name"] = os.path.basename(path)
  picture = visualization.draw_detections(image, found, names,
                                          min_score=min_score,
                                          category_ids=category_ids)
  picture_path = os.path.join(
      output_dir, picture_name or picture_names([path], output_dir)[0])
  Image.fromarray(picture).save(picture_path)
  return entries, picture_path


def padded_size(model_config, parser_config) -> tuple[int, int]:
  """(height, width) of `preprocess`'s images: the padded input size, or
  with orientation buckets the square that holds both (see
  `export_module`, which crops a batch of one orientation to its
  bucket)."""
  size = factory.padded_input_size(model_config)
  if parser_config.orientation_buckets:
    return tensormask_input.any_orientation_size(size)
  return size


def preprocess(image, model_config, parser_config):
  """uint8 [H, W, 3] -> (normalized model input [*padded_size(...), 3],
  image_info [4, 2]), the evaluation preprocessing."""
  size = padded_size(model_config, parser_config)
  image, image_info = tensormask_input.resize_image(
      preprocess_ops.normalize_image(image),
      size if parser_config.orientation_buckets else
      model_config.input_size[:2], size, parser_config.short_side,
      parser_config.long_side)
  return tf.cast(image, tf.float32), tf.cast(image_info, tf.float32)


def resolve_checkpoint(checkpoint: str) -> str:
  """A checkpoint prefix, or the latest one of a directory; or
  FileNotFoundError."""
  if tf.io.gfile.isdir(checkpoint):
    latest = tf.train.latest_checkpoint(checkpoint)
    if latest is None:
      raise FileNotFoundError(f"no checkpoint in {checkpoint}")
    return latest
  if not tf.io.gfile.exists(checkpoint + ".index"):
    raise FileNotFoundError(f"no checkpoint {checkpoint}")
  return checkpoint


class CheckpointPredictor:
  """Detections of one image at a time from a training checkpoint.

  `category_ids` (class k's category id) and `class_names` ({category id:
  name}) are the model's.
  """

  def __init__(self, params: cfg.ExperimentConfig, checkpoint: str):
    """Builds the experiment's model and restores `checkpoint` (a file
    prefix or a directory with checkpoints)."""
    checkpoint = resolve_checkpoint(checkpoint)
    self._params = params
    task = tensormask_task.TensorMaskTask(params.task)
    self._model = task.build_model()
    tf.train.Checkpoint(model=self._model).read(
        checkpoint).expect_partial().assert_existing_objects_matched()
    self.class_names = class_names(params.task)
    self.category_ids = tensormask_config.category_ids(params.task.model)

  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
  def _preprocess(self, image):
    return preprocess(image, self._params.task.model,
                      self._params.task.validation_data.parser)

  @tf.function(reduce_retracing=False)  # One trace per padded size.
  def _detect(self, inputs, image_info):
    outputs = self._model(inputs[None], training=False)
    detections = factory.postprocess(self._model, outputs,
                                     inputs.shape[:2],
                                     self._params.task.model,
                                     image_info[None, 1, :])
    # (The mask values are not batched: with one image they are all its.)
    return {k: v if k == "detection_mask_values" else v[0]
            for k, v in detections.items()}

  def __call__(self, image: np.ndarray) -> dict:
    """`detections_in_original_image` of an [H, W, 3] uint8 image.

    A model that `factory.runs_at_any_size` runs on the image padded to its
    own size rounded up to `factory.size_divisibility`, as the release
    pads each image (padding changes the values near the border, and costs
    time); others on the padded `input_size`.
    """
    model_config = self._params.task.model
    inputs, image_info = self._preprocess(tf.convert_to_tensor(image))
    if factory.runs_at_any_size(model_config):
      divisor = factory.size_divisibility(model_config)
      height, width = (-(-int(round(v)) // divisor) * divisor
                       for v in image_info[1].numpy())
      inputs = inputs[:height, :width]
    detections = self._detect(inputs, image_info)
    return detection_generator.detections_in_original_image(
        {k: v.numpy() for k, v in detections.items()}, image_info.numpy())


def read_class_names(path: str) -> dict[int, str]:
  """An export's class_names.json: {category id: name}, in class order (so
  its keys are the model's category_ids)."""
  with tf.io.gfile.GFile(path) as f:
    return {int(k): v for k, v in json.load(f).items()}


class SavedModelPredictor:
  """Detections of one image at a time from an exported SavedModel (its
  `image_tensor` signature; see export_module.py).

  `category_ids` come from the export's class_names.json (None without
  it: category id k + 1 is class k).
  """

  def __init__(self, path: str):
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
      raise FileNotFoundError(f"{path} is not a SavedModel directory (no "
                              "saved_model.pb)")
    self._signature = tf.saved_model.load(path).signatures["image_tensor"]
    names_path = os.path.join(path, "assets.extra", "class_names.json")
    self.class_names, self.category_ids = {}, None
    if tf.io.gfile.exists(names_path):
      self.class_names = read_class_names(names_path)
      self.category_ids = list(self.class_names)

  def __call__(self, image: np.ndarray) -> dict:
    """Like CheckpointPredictor.__call__."""
    outputs = {k: v.numpy() for k, v in self._signature(
        inputs=tf.convert_to_tensor(image[None])).items()}
    return detections_from_outputs(outputs, 0, self.category_ids)


def detections_from_outputs(outputs: dict[str, np.ndarray], index: int,
                            category_ids: Sequence[int] | None = None
                            ) -> dict:
  """One image's detections (original pixels, 0-based classes, masks as
  `CroppedMasks` at the image's size: the served PNGs decoded, the masks
  that `CheckpointPredictor` pastes) from the exported signature's
  outputs.

  category_ids: the model's category id of each class (the keys of the
  export's class_names.json, `read_class_names`), to map the
  served category ids back to classes; None: id k + 1 is class k. Either
  way `coco_results` and `draw_detections` given the same list write the
  served ids.

  Raises:
    ValueError: a served category id not in category_ids.
  """
  count = int(outputs["num_detections"][index])
  height, width = (int(round(v)) for v in outputs["image_info"][index][0])
  pick = lambda key: np.asarray(outputs[key][index][:count])
  return {
      "boxes": pick("detection_boxes").astype(np.float32),
      "classes": detection_generator.classes_of(pick("detection_classes"),
                                                category_ids),
      "scores": pick("detection_scores").astype(np.float32),
      "masks": cropped_masks.CroppedMasks.from_png(
          pick("detection_masks_png_bytes"), pick("detection_mask_offsets"),
          (height, width)),
  }


class OnnxPredictor:
  """Detections of one image at a time from an ONNX export
  (`scripts/export_onnx.py`, `onnx_export`) run by onnxruntime on the CPU.

  The masks are pasted by `detections_in_original_image`, as
  `CheckpointPredictor` pastes them. `category_ids` and `class_names` come
  from the model's `class_names` metadata.
  """

  def __init__(self, path: str, threads: int = 0):
    """Opens the model at `path`.

    Args:
      path: an .onnx file.
      threads: onnxruntime's intra-op threads; 0 lets it choose (one per
        physical core).

    Raises:
      FileNotFoundError: no file at path.
      ValueError: the file is not an ONNX model of this project's export.
    """
    import onnxruntime  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(path):
      raise FileNotFoundError(f"no ONNX model {path}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    try:
      self._session = onnxruntime.InferenceSession(
          path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types.
      raise ValueError(f"{path}: not a loadable ONNX model ({e})") from e
    inputs = [i.name for i in self._session.get_inputs()]
    outputs = {o.name for o in self._session.get_outputs()}
    missing = {"num_detections", "detection_mask_values",
               "image_info"} - outputs
    if inputs != ["inputs"] or missing:
      raise ValueError(
          f"{path}: not a TensorMask ONNX export (inputs {inputs}, missing "
          f"outputs {sorted(missing)}); make one with export_onnx.py")
    metadata = self._session.get_modelmeta().custom_metadata_map
    self.class_names, self.category_ids = {}, None
    if "class_names" in metadata:
      self.class_names = {int(k): v for k, v in
                          json.loads(metadata["class_names"]).items()}
      self.category_ids = list(self.class_names)

  def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """The ONNX model's outputs (`onnx_export`) of uint8 [B, H, W, 3]."""
    names = [o.name for o in self._session.get_outputs()]
    try:
      return dict(zip(names, self._session.run(None, {"inputs": images})))
    except Exception as e:  # onnxruntime raises its own exception types.
      raise RunError(str(e).splitlines()[0] if str(e) else type(e).__name__
                     ) from e

  def detections_and_raw(self, image: np.ndarray) -> tuple[dict, dict]:
    """(`__call__`'s detections of an [H, W, 3] uint8 image, the model's
    raw outputs for it (`unbatch_detections` of `run`) they were pasted
    from)."""
    raw, = detection_generator.unbatch_detections(
        self.run(np.ascontiguousarray(image[None], np.uint8)))
    return detection_generator.detections_in_original_image(
        raw, raw["image_info"]), raw

  def __call__(self, image: np.ndarray) -> dict:
    """Like CheckpointPredictor.__call__."""
    return self.detections_and_raw(image)[0]
