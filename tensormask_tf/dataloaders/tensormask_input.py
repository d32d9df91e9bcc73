"""Parser of decoded COCO-style examples into TensorMask inputs and labels.

Takes the output of Model Garden's `TfExampleDecoder(include_mask=True)` and
produces the normalized, resized and padded image with the per-image window
labels of `ops.label_windows` (static shapes, so examples batch). Training
applies Model Garden's horizontal flip (image, boxes and masks together) and
scale jitter; evaluation keeps the image's aspect ratio without jitter.
Resizing is Model Garden's RetinaNet-style `resize_and_crop_image` to fit
`output_size`, or, when `short_side` is set, the release's (short side
`short_side`, long side at most `long_side`, antialiased as PIL's bilinear:
`resize_short_side`); the image is then padded to `output_size` rounded up
to the model's size divisibility. Ground-truth
classes are category ids, the model's `category_ids` (1..K by default),
and become the classes 0..K-1; crowd regions and images without objects are
allowed (they give no positives). Records whose classes, masks or crowd
flags disagree with their boxes or image, or with a category id not in the
model's, fail with an error naming the record.

Orientation buckets (`orientation_buckets`): COCO's images are about three
quarters landscape, and padding both orientations to one square input
computes ~1.6x the pixels they need. With buckets, an image at least as
wide as tall is padded to the landscape bucket (short, long) and a taller
one to the portrait bucket (long, short), each labelled in its own
orientation. So that every element of the dataset has one static shape, a
portrait example is *stored* transposed (its image and its per-level grid
labels, `class_targets_k` and `box_targets_k`; the mask labels have the
same shapes in both orientations and are kept as they are) with
`labels["portrait"]` true; `batch_by_orientation` makes every batch one
orientation, and `run_in_orientation` transposes a portrait batch back
inside a `tf.cond` branch of static shapes (XLA and TPUs compile both).
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from official.vision.dataloaders import parser
from official.vision.ops import box_ops
from official.vision.ops import preprocess_ops
from tensormask_tf.ops import image_resize
from tensormask_tf.ops import window_labeler
from tensormask_tf.ops import windows as windows_lib


PORTRAIT_KEY = "portrait"
# Labels on the pyramid levels' grids, [H_k, W_k, ...]: transposed in a
# stored portrait example.
_GRID_LABEL_PREFIXES = ("class_targets_", "box_targets_")


def bucket_sizes(size: Sequence[int]) -> tuple[tuple[int, int],
                                               tuple[int, int]]:
  """(landscape, portrait) (height, width) buckets of a size's sides."""
  short, long = sorted(int(v) for v in size[:2])
  return (short, long), (long, short)


def any_orientation_size(size: Sequence[int]) -> tuple[int, int]:
  """The square that holds both buckets of `size` (what a batch of mixed
  orientations is padded to at serving time)."""
  side = max(int(v) for v in size[:2])
  return side, side


def _transpose_grids(image, labels: dict, batched: bool):
  """The image and grid labels transposed; other labels as they are."""
  perm = [1, 0, 2] if not batched else [0, 2, 1, 3]
  return tf.transpose(image, perm), {
      k: tf.transpose(v, perm) if k.startswith(_GRID_LABEL_PREFIXES) else v
      for k, v in labels.items()}


def batch_by_orientation(dataset: tf.data.Dataset, batch_size: int,
                         drop_remainder: bool) -> tf.data.Dataset:
  """Batches of `batch_size` examples of one orientation each (the last of
  each orientation partial unless drop_remainder)."""
  return dataset.group_by_window(
      key_func=lambda image, labels: tf.cast(labels[PORTRAIT_KEY], tf.int64),
      reduce_func=lambda key, examples: examples.batch(
          batch_size, drop_remainder=drop_remainder),
      window_size=batch_size)


def run_in_orientation(fn, images, labels: dict):
  """`fn(images, labels)` on a batch in its own orientation.

  A batch of stored portrait examples (see the module docstring) is
  transposed back first: `fn` sees [B, long, short, 3] images and grid
  labels of their own grids, in a `tf.cond` branch whose shapes are static.
  Batches without buckets go to `fn` as they are. Every example of a batch
  must have one orientation (`batch_by_orientation`); an empty batch counts
  as landscape. `fn`'s outputs must have one structure in both branches.
  """
  if PORTRAIT_KEY not in labels:
    return fn(images, labels)
  return tf.cond(
      tf.reduce_any(labels[PORTRAIT_KEY]),
      lambda: fn(*_transpose_grids(images, labels, batched=True)),
      lambda: fn(images, labels))


def resize_image(image, output_size: tuple[int, int],
                 padded_size: tuple[int, int], short_side: int = 0,
                 long_side: int = 0, aug_scale_min: float = 1.0,
                 aug_scale_max: float = 1.0):
  """Resizes a normalized image for the model (see the module docstring).

  Args:
    image: [H, W, 3] float, normalized.
    output_size, padded_size: (height, width) to fit and to pad to.
    short_side, long_side: Mask R-CNN-style sides when short_side > 0.
    aug_scale_min, aug_scale_max: scale jitter range. With short_side it
      scales the short side only, drawn uniformly from [short_side *
      aug_scale_min, short_side * aug_scale_max], the long side still at
      most long_side (docs/training.md: "short-side scale jitter 640..800", as
      detectron2's ResizeShortestEdge); otherwise Model Garden's jitter of
      the whole resized image, randomly cropped to output_size.

  Returns:
    (image [*padded_size, 3], image_info [4, 2]: original size, the
    image's size inside the padded input, scale, offset; Model Garden's
    layout, whose resize_and_crop_image puts output_size in row 1 instead
    (the clip of boxes before NMS and of the masks read row 1).
  """
  if short_side > 0:
    # (Model Garden's own jitter in resize_and_crop_image_v2 adds its int32
    # crop offset to a float32 size and fails to trace.)
    if aug_scale_min != 1.0 or aug_scale_max != 1.0:
      short_side = short_side * tf.random.uniform([], aug_scale_min,
                                                  aug_scale_max)
    image, image_info = resize_short_side(image, short_side, long_side,
                                          padded_size)
  else:
    image, image_info = preprocess_ops.resize_and_crop_image(
        image, output_size, padded_size=padded_size,
        aug_scale_min=aug_scale_min, aug_scale_max=aug_scale_max)
  inside = tf.minimum(scaled_size(image_info) - image_info[3],
                      tf.constant(output_size, tf.float32))
  return image, tf.stack([image_info[0], inside, image_info[2], image_info[3]])


def resize_short_side(image, short_side, long_side: int,
                      padded_size: tuple[int, int]):
  """Short side to `short_side`, long side at most `long_side`, zero-padded
  to padded_size; returns (image, Model Garden's image_info [4, 2]).

  The sizes of Model Garden's `resize_and_crop_image_v2`; the resampling is
  the release's: detectron2 resizes with PIL's bilinear filter, which
  widens with the scale when shrinking (antialiased; Model Garden's
  `tf.image.resize` is not, up to 10 levels off at COCO's sizes), and
  which `antialias=True` reproduces to within PIL's rounding to uint8
  (`image_resize.antialiased_resize`: the same in standard ops, which
  export to ONNX).

  Args:
    image: [H, W, C] float.
    short_side: the short side's length, a number or float32 scalar.
    long_side: the long side's limit.
    padded_size: (height, width) >= the resized image's.
  """
  size = tf.cast(tf.shape(image)[0:2], tf.float32)
  by_short_side = tf.math.round(size * short_side / tf.reduce_min(size))
  scaled = tf.where(
      tf.reduce_max(by_short_side) > long_side,
      tf.math.round(size * long_side / tf.reduce_max(size)), by_short_side)
  resized = image_resize.antialiased_resize(image, tf.cast(scaled, tf.int32))
  padded = tf.image.pad_to_bounding_box(resized, 0, 0, *padded_size)
  return padded, tf.stack([size, scaled, scaled / size, tf.zeros([2])])


def scaled_size(image_info) -> tf.Tensor:
  """[2] float32 size the image was resized to (before any crop)."""
  return tf.round(image_info[0] * image_info[2])


def resize_masks(masks, image_info, padded_size: tuple[int, int]):
  """[G, H, W] masks resized, cropped and padded as the image was.

  Nearest neighbour to the image's own scaled size (Model Garden's
  resize_and_crop_masks truncates scale * size instead of rounding it: one
  pixel short of the image in ~5% of COCO's image sizes, which shifts the
  masks against the image by up to a pixel towards the far edge), cropped
  to the image's extent (image_info[1]: a jitter above 1 crops the image
  to output_size, which padded_size may exceed), then zero-padded.
  """
  size = tf.cast(scaled_size(image_info), tf.int32)
  offset = tf.cast(image_info[3], tf.int32)
  inside = tf.cast(image_info[1], tf.int32)
  # A zero mask in front: resizing no masks at all fails.
  masks = tf.concat([tf.zeros(tf.concat([[1], tf.shape(masks)[1:]], 0),
                              masks.dtype), masks], axis=0)
  scaled = tf.image.resize(masks[..., None], size, method="nearest")
  cropped = scaled[:, offset[0]:offset[0] + inside[0],
                   offset[1]:offset[1] + inside[1]]
  return tf.image.pad_to_bounding_box(cropped, 0, 0, *padded_size)[1:, ..., 0]


class Parser(parser.Parser):
  """Decoded example -> (image [H, W, 3], labels dict)."""

  def __init__(self,
               output_size: tuple[int, int],
               window_spec: windows_lib.WindowSpec,
               mask_caps: dict[int, int],
               aug_rand_hflip: bool = False,
               aug_flip_prob: float = 0.5,
               aug_scale_min: float = 1.0,
               aug_scale_max: float = 1.0,
               short_side: int = 0,
               long_side: int = 0,
               num_classes: int | None = None,
               category_ids: Sequence[int] | None = None,
               size_divisibility: int | None = None,
               orientation_buckets: bool = False,
               dtype: str = "float32"):
    """Initializes the parser.

    Args:
      output_size: (height, width) the image is resized to fit.
      window_spec: the model's window layout.
      mask_caps: {level: most positive windows per window size with masks}.
      aug_rand_hflip: whether training flips images horizontally.
      aug_flip_prob: probability of the flip when aug_rand_hflip.
      aug_scale_min, aug_scale_max: training scale jitter range.
      short_side, long_side: when short_side > 0, images are resized so
        their short side is short_side and their long side at most
        long_side (which must fit output_size).
      num_classes: K; when set, records with class ids outside 1..K fail
        (the task sets it).
      category_ids: the category id of each class 0..K-1 (K = its length;
        `tensormask_config.category_ids`); records' ids are mapped to their
        classes and ids not in it fail. Without it, id c is class c - 1.
      size_divisibility: the padded image's sides are multiples of it
        (`factory.size_divisibility`; default the coarsest stride).
      orientation_buckets: pad landscape images to output_size's (short,
        long) bucket and portrait ones to its transpose, stored transposed
        (see the module docstring); needs short_side > 0.
      dtype: image dtype ("float32", "bfloat16" or "float16").
    """
    self._output_size = tuple(output_size)
    self._spec = window_spec
    self._padded_size = tuple(preprocess_ops.compute_padded_size(
        list(output_size),
        size_divisibility or window_spec.stride(window_spec.max_level)))
    self._mask_caps = dict(mask_caps)
    self._aug_rand_hflip = aug_rand_hflip
    self._aug_flip_prob = aug_flip_prob
    self._aug_scale_min = aug_scale_min
    self._aug_scale_max = aug_scale_max
    self._dtype = tf.dtypes.as_dtype(dtype)
    self._orientation_buckets = orientation_buckets
    if orientation_buckets:
      if short_side <= 0:
        raise ValueError(
            "orientation_buckets needs short_side > 0 (each image resized by "
            "its own sides), got short_side 0.")
      self._output_size, _ = bucket_sizes(output_size)
      self._padded_size, self._portrait_padded_size = bucket_sizes(
          self._padded_size)
      if not (0 < short_side <= long_side and
              short_side <= self._output_size[0] and
              long_side <= self._output_size[1]):
        raise ValueError(
            f"short_side {short_side} and long_side {long_side} must satisfy "
            f"0 < short_side <= long_side, short_side <= {min(output_size)} "
            f"and long_side <= {max(output_size)} (output_size "
            f"{output_size}), so every resized image fits its bucket.")
    elif short_side > 0 and not (
        0 < short_side <= long_side <= min(output_size)):
      raise ValueError(
          f"short_side {short_side} and long_side {long_side} must satisfy "
          f"0 < short_side <= long_side <= min(output_size {output_size}), "
          "so every resized image fits the padded input.")
    self._short_side = short_side
    self._long_side = long_side
    if num_classes is not None and num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if category_ids is None and num_classes is not None:
      category_ids = range(1, num_classes + 1)
    self._class_of_id = None  # [max id + 1] int32: class of each id, or -1
    if category_ids is not None:
      ids = [int(i) for i in category_ids]
      if num_classes is not None and len(ids) != num_classes:
        raise ValueError(f"{len(ids)} category_ids for num_classes "
                         f"{num_classes}; give one id per class.")
      if not ids or min(ids) < 1 or len(set(ids)) != len(ids):
        raise ValueError("category_ids must be distinct positive ids, got "
                         f"{ids}.")
      table = np.full(max(ids) + 1, -1, np.int32)
      table[ids] = np.arange(len(ids))
      self._class_of_id = table
      self._unknown_id_error = (
          f"class ids are outside 1..{len(ids)} (num_classes)"
          if ids == list(range(1, len(ids) + 1)) else
          "class ids are not in the model's category_ids")

  @property
  def padded_size(self) -> tuple[int, int]:
    """The (height, width) of every image the parser returns (with
    orientation buckets: the landscape bucket, portraits stored
    transposed)."""
    return self._padded_size

  def _parse(self, data: dict, training: bool):
    source_id = data["source_id"]
    classes = tf.cast(data["groundtruth_classes"], tf.int32)
    boxes = data["groundtruth_boxes"]
    masks = tf.cast(data["groundtruth_instance_masks"], tf.float32)
    is_crowd = tf.cast(data["groundtruth_is_crowd"], tf.bool)
    num = tf.shape(boxes)[0]

    def check(condition, what):
      return tf.debugging.Assert(condition,
                                 [f"record's {what}; source_id:", source_id])

    image_size = tf.shape(data["image"])[0:2]
    checks = [
        check(tf.equal(tf.shape(masks)[0], num),
              "instance masks disagree with its box count"),
        check(tf.equal(tf.shape(classes)[0], num),
              "classes disagree with its box count"),
        check(tf.equal(tf.shape(is_crowd)[0], num),
              "crowd flags disagree with its box count"),
        # (A record without objects may carry masks of any size.)
        check(tf.logical_or(
            tf.equal(num, 0),
            tf.reduce_all(tf.equal(tf.shape(masks)[1:3], image_size))),
              "instance masks are not the size of its image"),
        check(tf.reduce_all((masks >= 0.0) & (masks <= 1.0)),
              "instance masks have values outside 0..1 (0/255 masks? set "
              "the decoder's mask_binarize_threshold)"),
    ]
    if self._class_of_id is None:
      classes -= 1
    else:
      table = tf.constant(self._class_of_id)
      known = (classes >= 0) & (classes < len(self._class_of_id))
      classes = tf.where(known, tf.gather(
          table, tf.clip_by_value(classes, 0, len(self._class_of_id) - 1)),
                         -1)
      checks.append(check(tf.reduce_all(classes >= 0),
                          self._unknown_id_error))
    with tf.control_dependencies(checks):
      image = preprocess_ops.normalize_image(data["image"])

    if training and self._aug_rand_hflip:
      # seed=None: Model Garden's default op seed (1) is also its scale
      # jitter's, and two ops with one seed draw the same numbers.
      image, boxes, masks = preprocess_ops.random_horizontal_flip(
          image, boxes, masks, seed=None, prob=self._aug_flip_prob)
    boxes = box_ops.denormalize_boxes(boxes, tf.shape(image)[0:2])
    objects = (image, boxes, classes, masks, is_crowd, training)
    if not self._orientation_buckets:
      image, labels = self._resize_and_label(*objects, self._output_size,
                                             self._padded_size)
    else:
      as_portrait = lambda: _transpose_grids(  # noqa: E731
          *self._resize_and_label(*objects, self._output_size[::-1],
                                  self._portrait_padded_size), batched=False)
      as_landscape = lambda: self._resize_and_label(  # noqa: E731
          *objects, self._output_size, self._padded_size)
      height, width = image.shape[0:2]
      if height is not None and width is not None:
        # Static sides (not the decoder's): the other orientation's padding
        # would not even trace.
        portrait = tf.constant(height > width)
        image, labels = as_portrait() if height > width else as_landscape()
      else:
        size = tf.shape(image)[0:2]
        portrait = size[0] > size[1]
        image, labels = tf.cond(portrait, as_portrait, as_landscape)
      labels[PORTRAIT_KEY] = portrait
    labels["source_id"] = source_id
    image = tf.ensure_shape(image, [*self._padded_size, 3])
    return tf.cast(image, self._dtype), labels

  def _resize_and_label(self, image, boxes, classes, masks, is_crowd,
                        training: bool, output_size: tuple[int, int],
                        padded_size: tuple[int, int]):
    """(image [*padded_size, 3], labels with image_info) of an example
    whose boxes are in the image's pixels."""
    image, image_info = resize_image(
        image, output_size, padded_size, self._short_side,
        self._long_side,
        aug_scale_min=self._aug_scale_min if training else 1.0,
        aug_scale_max=self._aug_scale_max if training else 1.0)
    scale, offset = image_info[2, :], image_info[3, :]
    boxes = preprocess_ops.resize_and_crop_boxes(boxes, scale, image_info[1, :],
                                                 offset)
    masks = resize_masks(masks, image_info, padded_size)
    # Objects cropped away by the jitter leave empty boxes: drop them.
    keep = box_ops.get_non_empty_box_indices(boxes)
    boxes = tf.gather(boxes, keep)
    labels = window_labeler.label_windows(
        self._spec, padded_size, boxes, tf.gather(classes, keep),
        tf.gather(masks, keep), self._mask_caps,
        gt_is_crowd=tf.gather(is_crowd, keep),
        # The mask targets' edge ring sits at the image, not at the padding
        # (resize_masks crops to the same int32 extent).
        image_extent=tf.cast(image_info[1], tf.int32))
    labels["image_info"] = image_info
    return tf.ensure_shape(image, [*padded_size, 3]), labels

  def _parse_train_data(self, data):
    return self._parse(data, training=True)

  def _parse_eval_data(self, data):
    return self._parse(data, training=False)
