"""SavedModel export of a TensorMask model for TF Serving.

The serving graph uses standard TensorFlow ops only: the model is rebuilt
with the pure-TF ops backend (no custom-op library is needed to load it) and
masks are computed with the gathered path for the kept detections only.

Signatures (all with a dynamic batch; input key "inputs"):
- `serving_default`: encoded JPEG/PNG/BMP/GIF images, `tf.string [B]`;
- `image_tensor`: `uint8 [B, H, W, 3]`;
- `tf_example`: serialized `tf.train.Example`s with `image/encoded`,
  `tf.string [B]`;
- `raw_detections`: `uint8 [B, H, W, 3]` like `image_tensor`, the
  detections before pasting (model-input pixels, 0-based classes, each
  mask over its window: the outputs listed in `onnx_export`); what the
  ONNX export converts.

Outputs (D = the config's `max_detections`, entries past num_detections
zero):
- `num_detections` int32 [B];
- `detection_boxes` float32 [B, D, 4]: `[ymin, xmin, ymax, xmax]` in pixels
  of the input image;
- `detection_scores` float32 [B, D];
- `detection_classes` int32 [B, D]: category ids (the model's
  `category_ids`, 1..K when it has none);
- `detection_masks_png_bytes` string [B, D]: each detection's binary mask
  in the input image, pasted as the release does (over its window,
  bilinear at pixel centres, zeros outside its M x M cells, threshold 0.5:
  `detection_generator.paste_window_mask`), cropped to its pixels'
  bounding box and encoded as a grayscale PNG (255 in the mask, 0
  outside); empty for entries past num_detections and masks without
  pixels. A served image with 100 detections costs a few hundred
  kilobytes instead of a [100, R, R] float array (docs/serving.md). TF Serving's
  REST API sends an output whose name ends in `_bytes` as base64
  (`{"b64": ...}`);
- `detection_mask_offsets` int32 [B, D, 2]: (row, column) of each PNG's
  top-left pixel in the input image (`CroppedMasks.from_png` decodes
  both);
- `detection_windows` float32 [B, D, 4]: the window boxes, pixels of the
  input image, not clipped;
- `image_info` float32 [B, 4, 2]: original size, scaled size, scale,
  offset of each image;
- with `window_masks=True` (research) also the float masks before pasting:
  `detection_window_masks` float32 [B, D, R, R], each detection's M x M
  mask probabilities over its window in the top-left corner, zeros
  elsewhere, R the batch's largest M (natural masks, M = S * 2**k, with
  `mask_size` 0; else M = R = `mask_size`), and `detection_mask_sides`
  int32 [B, D] the M's;
- with `image_masks=True` also `detection_image_masks` uint8
  [B, D, H_max, W_max]: the pasted binary masks at the largest input size of
  the batch (each image's in its top-left corner).

A model that runs at any size (the release's backbone and FPN) runs at the
batch's largest resized image rounded up to a multiple of 32, as the
release and `predict.py --model_dir` pad; other models with orientation
buckets (the validation parser's `orientation_buckets`) run a batch of
landscape images at the landscape bucket and one of portrait images at the
portrait bucket, as in evaluation, a batch of both at the square that holds
them.
"""

import json
import os
import time

import tensorflow as tf

from official.core import config_definitions as cfg
from tensormask_tf.configs import tensormask_config
from tensormask_tf.dataloaders import tensormask_input
from tensormask_tf.modeling import detection_generator
from tensormask_tf.modeling import factory
from tensormask_tf.serving import predictor
from tensormask_tf.tasks import tensormask as tensormask_task

_CHANNELS = 3


class TensorMaskExportModule(tf.Module):
  """The exported functions of one TensorMask model."""

  def __init__(self, params: cfg.ExperimentConfig, checkpoint: str | None,
               image_masks: bool = False, window_masks: bool = False):
    """Builds the pure-TF model and restores `checkpoint` into it.

    Args:
      params: the experiment (its task's model, validation parser).
      checkpoint: a checkpoint prefix or directory; None keeps the random
        initialization (tests).
      image_masks: whether to add `detection_image_masks`.
      window_masks: whether to add `detection_window_masks` and
        `detection_mask_sides`.
    """
    super().__init__(name="tensormask")
    params = params.replace()  # An unlocked copy.
    params.task.model.ops_backend = "tf"  # Stock TF ops only.
    self._params = params
    self._image_masks = image_masks
    self._window_masks = window_masks
    model = tensormask_task.TensorMaskTask(params.task).build_model()
    if checkpoint is not None:
      path = predictor.resolve_checkpoint(checkpoint)
      tf.train.Checkpoint(model=model).read(
          path).expect_partial().assert_existing_objects_matched()
    # Track the variables, not the Keras model: saving a Keras model also
    # saves every layer's call traces (5x the functions, slower to write,
    # hundreds of warnings at load time), which serving never uses.
    object.__setattr__(self, "model", model)
    self.model_variables = list(model.variables)

  def _preprocess(self, image):
    image = tf.ensure_shape(image, [None, None, _CHANNELS])
    return predictor.preprocess(image, self._params.task.model,
                                self._params.task.validation_data.parser)

  def _preprocess_batch(self, images_fn, elements):
    """map_fn of decode + resize: images of any size batch together."""
    image_size = predictor.padded_size(
        self._params.task.model, self._params.task.validation_data.parser)
    return tf.map_fn(
        lambda element: self._preprocess(images_fn(element)), elements,
        fn_output_signature=(
            tf.TensorSpec([*image_size, _CHANNELS], tf.float32),
            tf.TensorSpec([4, 2], tf.float32)))

  def _model_input(self, images, image_info) -> tf.Tensor:
    """The batch at the size the model runs at.

    A model that `factory.runs_at_any_size` runs at the batch's largest
    resized image rounded up to `factory.size_divisibility`, as the release
    pads (and `CheckpointPredictor`, so their detections are the same);
    with orientation buckets, a batch of landscape images at the landscape
    bucket and one of portrait images at the portrait bucket, as in
    evaluation (a batch of both at the square that holds them); else at
    the padded input size.
    """
    model_config = self._params.task.model
    if factory.runs_at_any_size(model_config):
      divisor = factory.size_divisibility(model_config)
      scaled = tf.reduce_max(
          tf.cast(tf.round(image_info[:, 1, :]), tf.int32), axis=0)
      # (Not -(-scaled // divisor): ONNX's integer Div truncates.)
      size = (scaled + divisor - 1) // divisor * divisor
      return images[:, :size[0], :size[1]]
    if not self._params.task.validation_data.parser.orientation_buckets:
      return images
    landscape, portrait = tensormask_input.bucket_sizes(
        factory.padded_input_size(model_config))
    tall = image_info[:, 0, 0] > image_info[:, 0, 1]  # As the parser's.
    return tf.case(
        [(tf.reduce_all(tall), lambda: images[:, :portrait[0], :portrait[1]]),
         (tf.reduce_all(~tall),
          lambda: images[:, :landscape[0], :landscape[1]])],
        default=lambda: images)

  def _raw_detections(self, images, image_info) -> dict[str, tf.Tensor]:
    """`factory.postprocess`'s detections (model-input pixels, masks over
    their windows) of the batch, with its image_info."""
    images = self._model_input(images, image_info)
    size = [images.shape[i] or tf.shape(images)[i] for i in (1, 2)]
    detections = factory.postprocess(
        self.model, self.model(images, training=False), size,
        self._params.task.model, image_info[:, 1, :])
    return {**detections, "image_info": image_info}

  def _detect(self, images, image_info) -> dict[str, tf.Tensor]:
    model_config = self._params.task.model
    detections = self._raw_detections(images, image_info)
    original = tf.tile(image_info[:, 0:1, :], [1, 1, 2])  # [B, 1, 4]
    valid = tf.sequence_mask(detections["num_detections"],
                             tf.shape(detections["detection_scores"])[1])
    valid = tf.cast(valid, tf.float32)[..., None]
    boxes = tf.clip_by_value(detection_generator.to_original_pixels(
        detections["detection_boxes"], image_info), 0.0, original)
    category_ids = tf.constant(
        tensormask_config.category_ids(model_config), tf.int32)
    result = {
        "num_detections": detections["num_detections"],
        "detection_boxes": boxes * valid,
        "detection_scores": detections["detection_scores"],
        "detection_classes": tf.gather(
            category_ids, detections["detection_classes"]) * tf.cast(
                valid[..., 0], tf.int32),
        "detection_windows": detection_generator.to_original_pixels(
            detections["detection_windows"], image_info) * valid,
        "image_info": image_info,
    }
    values = detections["detection_mask_values"]
    sides = detections["detection_mask_sides"]
    result["detection_masks_png_bytes"], result["detection_mask_offsets"] = (
        self._encoded_masks(values, sides, result["detection_windows"],
                            image_info))
    if self._window_masks or self._image_masks:
      window_masks = detection_generator.padded_window_masks(values, sides)
    if self._window_masks:
      result["detection_window_masks"] = window_masks
      result["detection_mask_sides"] = sides
    if self._image_masks:
      result["detection_image_masks"] = self._paste(
          window_masks, sides, result["detection_windows"], image_info)
    return result

  def _encoded_masks(self, values, sides, windows, image_info):
    """(PNGs [B, D] string, offsets [B, D, 2] int32) of the binary masks
    pasted in the original images (module docstring)."""
    shape = tf.shape(sides)
    sizes = tf.cast(tf.round(image_info[:, 0, :]), tf.int32)  # [B, 2]

    def encode(mask, window, size):
      crop, extent = detection_generator.paste_window_mask(mask, window,
                                                           size)
      png = tf.cond(
          tf.size(crop) > 0,
          lambda: tf.io.encode_png(tf.cast(crop, tf.uint8)[..., None] * 255),
          lambda: tf.constant(b""))
      return png, extent[:2]

    pngs, offsets = detection_generator.map_window_masks(
        encode, values, sides, windows,
        tf.repeat(sizes, shape[1], axis=0),
        (tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int32)))
    return (tf.reshape(pngs, shape),
            tf.reshape(offsets, tf.concat([shape, [2]], 0)))

  def _paste(self, window_masks, sides, windows, image_info) -> tf.Tensor:
    sizes = tf.cast(tf.round(image_info[:, 0, :]), tf.int32)
    canvas = tf.reduce_max(sizes, axis=0)

    def paste(args):
      masks, sides, windows, size = args
      pasted = detection_generator.paste_window_masks(
          masks, sides, windows, (canvas[0], canvas[1]))
      # Windows reach past the image: nothing outside the image itself.
      inside = (tf.range(canvas[0])[:, None] < size[0]) & (
          tf.range(canvas[1])[None, :] < size[1])
      return tf.cast(pasted & inside[None], tf.uint8)

    return tf.map_fn(
        paste, (window_masks, sides, windows, sizes),
        fn_output_signature=tf.TensorSpec([None, None, None], tf.uint8))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def serve_encoded_images(self, inputs):
    def decode(encoded):
      return tf.io.decode_image(encoded, channels=_CHANNELS,
                                expand_animations=False)
    return self._detect(*self._preprocess_batch(decode, inputs))

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, None, _CHANNELS], tf.uint8)])
  def serve_image_tensors(self, inputs):
    return self._detect(*self._preprocess_batch(lambda x: x, inputs))

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, None, _CHANNELS], tf.uint8)])
  def serve_raw_detections(self, inputs):
    return self._raw_detections(
        *self._preprocess_batch(lambda x: x, inputs))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def serve_tf_examples(self, inputs):
    def decode(serialized):
      features = tf.io.parse_single_example(serialized, {
          "image/encoded": tf.io.FixedLenFeature((), tf.string)})
      return tf.io.decode_image(features["image/encoded"],
                                channels=_CHANNELS, expand_animations=False)
    return self._detect(*self._preprocess_batch(decode, inputs))

  def signatures(self) -> dict:
    return {
        "serving_default": self.serve_encoded_images.get_concrete_function(),
        "image_tensor": self.serve_image_tensors.get_concrete_function(),
        "tf_example": self.serve_tf_examples.get_concrete_function(),
        "raw_detections": self.serve_raw_detections.get_concrete_function(),
    }


def export_saved_model(params: cfg.ExperimentConfig, checkpoint: str | None,
                       export_dir: str, version: int | None = None,
                       image_masks: bool = False,
                       window_masks: bool = False) -> str:
  """Writes `<export_dir>/<version>/` (TF Serving's layout); returns it.

  The version defaults to the current Unix time. The class names go to
  `assets.extra/class_names.json` ({"<category id>": name, ...} in class
  order, so its keys are the model's category ids) for clients.
  """
  version = int(time.time()) if version is None else version
  path = os.path.join(export_dir, str(version))
  if tf.io.gfile.exists(path):
    raise FileExistsError(f"{path} exists; pick another --version")
  module = TensorMaskExportModule(params, checkpoint, image_masks=image_masks,
                                  window_masks=window_masks)
  # Serving needs no gradients: saving the custom ones only adds functions
  # that warn at load time.
  tf.saved_model.save(
      module, path, signatures=module.signatures(),
      options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
  extra = os.path.join(path, "assets.extra")
  tf.io.gfile.makedirs(extra)
  with tf.io.gfile.GFile(os.path.join(extra, "class_names.json"), "w") as f:
    json.dump({str(k): v for k, v in
               predictor.class_names(params.task).items()}, f)
  return path
