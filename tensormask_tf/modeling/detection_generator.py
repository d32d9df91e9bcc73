"""TensorMask inference: detections and their window masks (SPEC.md 3).

Sigmoid scores over every (window, class); scores above `score_threshold`;
the `pre_nms_top_k` best over all levels; box deltas decoded against their
windows and clipped to the image; class-aware NMS at `nms_iou_threshold`;
the `max_detections` best kept. Masks are computed only for kept detections,
with the head's gathered path, and returned *window-relative*: the natural
mask (sigmoid) of each detection's window resampled to `mask_size` x
`mask_size`, plus the window box. `paste_window_masks` turns them into
image-size binary masks (inside the window box, thresholded at 0.5).
Runs in graph mode (the number of detections per window size varies); it is
not meant for XLA.
"""

import numpy as np
import tensorflow as tf

from tensormask_tf.ops import window_targets
from tensormask_tf.ops import windows as windows_lib


def _window_table(spec: windows_lib.WindowSpec, image_size):
  """Per window, concatenated over levels: boxes (tensor), and numpy level,
  size index, y, x."""
  boxes = windows_lib.generate_windows(spec, image_size)
  sizes = windows_lib.feature_sizes(spec, image_size)
  level, size_index, y, x = [], [], [], []
  for k in spec.levels:
    grid_h, grid_w = sizes[k]
    yy, xx, aa = np.meshgrid(np.arange(grid_h), np.arange(grid_w),
                             np.arange(spec.num_sizes), indexing="ij")
    level.append(np.full(yy.size, k))
    size_index.append(aa.ravel())
    y.append(yy.ravel())
    x.append(xx.ravel())
  cat = lambda parts: np.concatenate(parts).astype(np.int32)
  return (windows_lib.concat_levels(boxes), cat(level), cat(size_index),
          cat(y), cat(x))


def generate_detections(outputs: dict, mask_logits_fn,
                        spec: windows_lib.WindowSpec, image_size,
                        num_classes: int, score_threshold: float = 0.05,
                        pre_nms_top_k: int = 6000,
                        nms_iou_threshold: float = 0.5,
                        max_detections: int = 100,
                        mask_size: int = 64,
                        image_sizes=None) -> dict[str, tf.Tensor]:
  """Detections of a batch from the model's outputs.

  Args:
    outputs: the model's outputs (per-level "class_outputs", "box_outputs").
    mask_logits_fn: `(level, size_index, indices [P, 3]) -> [P, M, M]` mask
      logits of given windows (the head's gathered path).
    spec: the window layout.
    image_size: (height, width) of the model input.
    num_classes: K.
    score_threshold, pre_nms_top_k, nms_iou_threshold, max_detections: the
      post-processing of SPEC.md 3.
    mask_size: side R of the returned window-relative masks.
    image_sizes: optional [N, 2] (height, width) of each image inside the
      padded input (Model Garden's image_info[:, 1]); boxes are clipped to
      it before NMS, else to image_size.

  Returns:
    {"detection_boxes": [N, D, 4] (input pixels, [ymin, xmin, ymax, xmax]),
     "detection_scores": [N, D], "detection_classes": [N, D] int32,
     "num_detections": [N] int32, "detection_windows": [N, D, 4] window
     boxes, "detection_masks": [N, D, R, R] mask probabilities over each
     window}; entries past num_detections are zero.
  """
  window_boxes, window_level, window_size, window_y, window_x = _window_table(
      spec, image_size)
  num_windows = window_boxes.shape[0]
  levels = spec.levels
  batch = tf.shape(outputs["class_outputs"][str(levels[0])])[0]
  logits = tf.concat([tf.reshape(outputs["class_outputs"][str(k)],
                                 [batch, -1]) for k in levels], axis=1)
  deltas = tf.concat([tf.reshape(outputs["box_outputs"][str(k)],
                                 [batch, -1, 4]) for k in levels], axis=1)
  scores = tf.sigmoid(tf.cast(logits, tf.float32))  # [N, windows * K]
  top_k = min(pre_nms_top_k, num_windows * num_classes)
  top_scores, top_index = tf.math.top_k(scores, k=top_k)
  window = top_index // num_classes
  classes = top_index % num_classes
  windows = tf.gather(window_boxes, window)  # [N, k, 4]
  boxes = window_targets.decode_window_boxes(
      tf.gather(tf.cast(deltas, tf.float32), window, batch_dims=1), windows)
  height, width = image_size
  if image_sizes is None:
    image_sizes = tf.constant([[height, width]], tf.float32)
  # The image, not its padding: overlaps for NMS as on the image.
  limits = tf.tile(tf.cast(image_sizes, tf.float32), [1, 2])[:, None, :]
  boxes = tf.maximum(tf.minimum(boxes, limits), 0.0)

  # Class-aware NMS: boxes of different classes are moved apart so that they
  # never overlap.
  offset = tf.cast(classes, tf.float32)[..., None] * float(max(height, width) + 1)
  # This NMS suppresses at IoU >= its threshold; detectron2's (and TF's
  # unpadded one) only above it: the next float32 up keeps IoU == 0.5.
  iou_threshold = float(np.nextafter(np.float32(nms_iou_threshold),
                                     np.float32(np.inf)))
  selected, num_detections = tf.image.non_max_suppression_padded(
      boxes + offset, top_scores, max_output_size=max_detections,
      iou_threshold=iou_threshold, score_threshold=score_threshold,
      pad_to_max_output_size=True)
  valid = tf.sequence_mask(num_detections, max_detections)  # [N, D]
  valid_f = tf.cast(valid, tf.float32)
  pick = lambda t: tf.gather(t, selected, batch_dims=1)
  det_window = pick(window)
  detections = {
      "detection_boxes": pick(boxes) * valid_f[..., None],
      "detection_scores": pick(top_scores) * valid_f,
      "detection_classes": pick(classes) * tf.cast(valid, tf.int32),
      "num_detections": num_detections,
      "detection_windows": pick(windows) * valid_f[..., None],
  }

  # Masks of the kept detections only, one (level, window size) at a time.
  masks = tf.zeros([batch, max_detections, mask_size, mask_size])
  det_level = tf.gather(tf.constant(window_level), det_window)
  det_size = tf.gather(tf.constant(window_size), det_window)
  det_y = tf.gather(tf.constant(window_y), det_window)
  det_x = tf.gather(tf.constant(window_x), det_window)
  for level in levels:
    for a in range(spec.num_sizes):
      where = tf.cast(tf.where(valid & (det_level == level) &
                               (det_size == a)), tf.int32)  # [P, 2] (n, d)
      indices = tf.stack([where[:, 0], tf.gather_nd(det_y, where),
                          tf.gather_nd(det_x, where)], axis=1)
      probs = tf.sigmoid(tf.cast(mask_logits_fn(level, a, indices),
                                 tf.float32))
      resized = tf.image.resize(probs[..., None], [mask_size, mask_size],
                                method="bilinear", antialias=True)[..., 0]
      masks = tf.tensor_scatter_nd_update(masks, where, resized)
  detections["detection_masks"] = masks
  return detections


def paste_window_masks(window_masks, window_boxes, image_size,
                       threshold: float = 0.5) -> tf.Tensor:
  """Pastes window-relative masks into the image.

  Every image pixel centre inside a window samples the window's mask
  bilinearly (pixel-centre aligned); pixels outside the window are 0.
  A window without area (the zeroed rows after `num_detections` in padded
  outputs) pastes an empty mask.

  Args:
    window_masks: [D, R, R] mask probabilities over each window.
    window_boxes: [D, 4] windows [ymin, xmin, ymax, xmax] in pixels.
    image_size: (height, width), ints or scalar int tensors.
    threshold: masks are `probability >= threshold`.

  Returns:
    [D, height, width] bool.
  """
  masks = tf.cast(tf.convert_to_tensor(window_masks), tf.float32)
  boxes = tf.cast(tf.convert_to_tensor(window_boxes), tf.float32)
  side = tf.cast(tf.shape(masks)[1], tf.float32)
  height, width = image_size
  # One edge-replicated pixel around each mask, so samples in the window's
  # outer half mask-pixel read the edge value, not 0.
  padded = tf.pad(masks, [[0, 0], [1, 1], [1, 1]], mode="SYMMETRIC")
  # Image row i (centre i + 0.5) sits at padded-mask coordinate
  # (i + 0.5 - ymin) / (ymax - ymin) * R + 0.5; crop_and_resize samples
  # y1 * (R+1) + i * (y2 - y1) * (R+1) / (height-1), hence these ends.
  # crop_and_resize refuses the infinite scale of an empty window: sample
  # those through a unit box and clear them below.
  has_area = tf.reduce_all(boxes[:, 2:] > boxes[:, :2], axis=1)
  boxes = tf.where(has_area[:, None], boxes, [0.0, 0.0, 1.0, 1.0])
  scale = side / (boxes[:, 2:] - boxes[:, :2])  # mask pixels per image pixel
  first = (0.5 - boxes[:, :2]) * scale + 0.5
  last = (tf.cast(tf.stack([height, width]), tf.float32) - 0.5 -
          boxes[:, :2]) * scale + 0.5
  denominator = side + 1.0
  normalized = tf.concat([first / denominator, last / denominator], axis=1)
  pasted = tf.image.crop_and_resize(
      padded[..., None], normalized, tf.range(tf.shape(masks)[0]),
      [height, width], method="bilinear", extrapolation_value=0.0)[..., 0]
  # Only pixels whose centres lie inside the window box.
  rows = tf.range(height, dtype=tf.float32) + 0.5
  cols = tf.range(width, dtype=tf.float32) + 0.5
  inside_rows = (rows[None, :] >= boxes[:, 0:1]) & (rows[None, :] <= boxes[:, 2:3])
  inside_cols = (cols[None, :] >= boxes[:, 1:2]) & (cols[None, :] <= boxes[:, 3:4])
  inside = (inside_rows[:, :, None] & inside_cols[:, None, :] &
            has_area[:, None, None])
  pasted = tf.where(inside, pasted, 0.0)
  return pasted >= threshold


def to_original_pixels(boxes, image_info) -> tf.Tensor:
  """Boxes in model-input pixels -> the original image's pixels.

  Args:
    boxes: [..., D, 4] [ymin, xmin, ymax, xmax] in the (resized, padded)
      model input.
    image_info: [..., 4, 2] Model Garden's (original size, scaled size,
      scale, offset) of the images.

  Returns:
    [..., D, 4] float32, not clipped.
  """
  image_info = tf.cast(image_info, tf.float32)
  scale = tf.tile(image_info[..., 2:3, :], [1] * (image_info.shape.rank - 1)
                  + [2])  # [..., 1, 4]: y, x, y, x
  offset = tf.tile(image_info[..., 3:4, :], [1] * (image_info.shape.rank - 1)
                   + [2])
  return (tf.cast(boxes, tf.float32) + offset) / scale


def detections_in_original_image(detections: dict, image_info,
                                 include_masks: bool = True) -> dict:
  """One image's detections mapped back to its original pixels.

  Args:
    detections: numpy `generate_detections` outputs of one image (no batch
      dimension): num_detections, detection_boxes [D, 4], ...
    image_info: [4, 2] Model Garden's (original size, scaled size, scale,
      offset) of the image.
    include_masks: whether to paste the masks.

  Returns:
    {"boxes": [n, 4] [ymin, xmin, ymax, xmax] original pixels, "classes":
     [n] int (0-based), "scores": [n], "masks": [n, H, W] bool or None}
    for the n = num_detections detections.
  """
  image_info = np.asarray(image_info, np.float32)
  height, width = (int(round(v)) for v in image_info[0])
  count = int(detections["num_detections"])
  boxes = to_original_pixels(detections["detection_boxes"][:count],
                             image_info).numpy()
  masks = None
  if include_masks:
    windows = to_original_pixels(detections["detection_windows"][:count],
                                 image_info)
    masks = paste_window_masks(detections["detection_masks"][:count], windows,
                               (height, width)).numpy()
  boxes = np.clip(boxes, 0, [height, width, height, width])
  return {"boxes": boxes,
          "classes": np.asarray(detections["detection_classes"][:count],
                                np.int64),
          "scores": np.asarray(detections["detection_scores"][:count]),
          "masks": masks}
