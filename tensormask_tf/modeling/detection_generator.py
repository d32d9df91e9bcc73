"""TensorMask inference: detections and their window masks (docs/model.md).

The release's post-processing (detectron2 `projects/TensorMask`,
`inference_single_image` and `_postprocess`), for every model:

1. candidates: sigmoid scores of every (window, class) strictly above
   `score_threshold`, pooled over the levels, the `pre_nms_top_k` best;
   their box deltas decoded against their windows, *not* clipped;
2. class-aware NMS on those unclipped boxes (suppressed when IoU > the
   threshold);
3. the `max_detections` best survivors; *then* their boxes clipped to the
   image; *then* detections whose clipped box has no width or height
   dropped (so an image may keep fewer than `max_detections`).

Masks are computed only for the kept detections, with the head's gathered
path, and returned *window-relative*: the sigmoid of each detection's
natural M x M mask (M = S * 2**k for the bipyramid), or that mask resampled
to `mask_size` x `mask_size` when `mask_size` > 0, plus the window box and
the mask's side; each mask at its own side, concatenated
(`detection_mask_values`), never padded to the batch's largest.
`paste_window_mask` pastes one into an image as the release does: bilinear
at pixel centres over the window box, zeros outside the mask, threshold 0.5,
computed only where the mask reaches (`paste_cropped_masks` gives an
image's masks as `CroppedMasks`).
Runs in graph mode (the number of detections per window size varies); it is
not meant for XLA.
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tensormask_tf.ops import cropped_masks
from tensormask_tf.ops import image_resize
from tensormask_tf.ops import window_targets
from tensormask_tf.ops import windows as windows_lib


def _window_table(spec: windows_lib.WindowSpec, image_size):
  """Per window, concatenated over levels: boxes [W, 4], and int32 level,
  size index, y, x [W] (tensors; the size may be known only at run
  time)."""
  boxes = windows_lib.window_boxes(spec, image_size)
  sizes = windows_lib.feature_sizes(spec, image_size)
  level, size_index, y, x = [], [], [], []
  for k in spec.levels:
    grid_h, grid_w = sizes[k]
    yy, xx, aa = tf.meshgrid(tf.range(grid_h), tf.range(grid_w),
                             tf.range(spec.num_sizes), indexing="ij")
    level.append(tf.fill([tf.size(yy)], k))
    size_index.append(tf.reshape(aa, [-1]))
    y.append(tf.reshape(yy, [-1]))
    x.append(tf.reshape(xx, [-1]))
  return (tf.concat([boxes[k] for k in spec.levels], axis=0),
          *(tf.concat(parts, axis=0) for parts in (level, size_index, y, x)))


def _class_separated_boxes(boxes, classes, valid, num_classes: int):
  """Boxes moved so that boxes of different classes never overlap.

  One class-agnostic NMS over the moved boxes is then a per-class NMS. The
  boxes are unclipped, so the shift is derived from the candidates' own
  extent (not the image's). Classes are laid out on a G x G grid (G =
  ceil(sqrt(K))), class c at grid cell (c // G, c % G), so the coordinates
  grow to ~G times the extent rather than ~K times (less float32 rounding
  in the IoUs). Every valid coordinate is >= 1: the padded NMS treats a
  box whose coordinates are all <= 0 as removed.

  Args:
    boxes: [N, k, 4] float32 [ymin, xmin, ymax, xmax], any values.
    classes: [N, k] int32 class of each box.
    valid: [N, k] bool, the boxes that take part (the others become 0).
    num_classes: K.

  Returns:
    [N, k, 4] float32.
  """
  grid = max(1, int(np.ceil(np.sqrt(num_classes))))
  big = tf.constant(np.finfo(np.float32).max, tf.float32)
  lowest = tf.reduce_min(tf.where(valid[..., None], boxes, big), axis=[1, 2])
  highest = tf.reduce_max(tf.where(valid[..., None], boxes, -big),
                          axis=[1, 2])
  any_valid = tf.reduce_any(valid, axis=1)
  lowest = tf.where(any_valid, lowest, 0.0)[:, None, None]  # [N, 1, 1]
  span = tf.where(any_valid, highest, 0.0)[:, None, None] - lowest + 2.0
  cell_y = tf.cast(classes // grid, tf.float32)[..., None]
  cell_x = tf.cast(classes % grid, tf.float32)[..., None]
  offset = tf.concat([cell_y, cell_x, cell_y, cell_x], axis=-1) * span
  moved = boxes - lowest + 1.0 + offset
  return tf.where(valid[..., None], moved, 0.0)


def generate_detections(outputs: dict, mask_logits_fn,
                        spec: windows_lib.WindowSpec, image_size,
                        num_classes: int, score_threshold: float = 0.05,
                        pre_nms_top_k: int = 6000,
                        nms_iou_threshold: float = 0.5,
                        max_detections: int = 100,
                        mask_size: int = 0,
                        image_sizes=None) -> dict[str, tf.Tensor]:
  """Detections of a batch from the model's outputs (module docstring).

  Args:
    outputs: the model's outputs (per-level "class_outputs", "box_outputs").
    mask_logits_fn: `(level, size_index, indices [P, 3]) -> [P, M, M]` mask
      logits of given windows (the head's gathered path).
    spec: the window layout.
    image_size: (height, width) of the model input.
    num_classes: K.
    score_threshold, pre_nms_top_k, nms_iou_threshold, max_detections: the
      post-processing of docs/model.md.
    mask_size: 0 returns each detection's natural M x M mask; R > 0
      resamples every mask to R x R (bilinear, antialiased).
    image_sizes: optional [N, 2] (height, width) of each image inside the
      padded input (Model Garden's image_info[:, 1]); the kept boxes are
      clipped to it, else to image_size.

  Returns:
    {"detection_boxes": [N, D, 4] (input pixels, [ymin, xmin, ymax, xmax],
     clipped), "detection_scores": [N, D], "detection_classes": [N, D]
     int32 (0-based), "num_detections": [N] int32, "detection_windows":
     [N, D, 4] window boxes (input pixels, unclipped),
     "detection_mask_sides": [N, D] int32 M (the natural S * 2**k with
     mask_size 0, else mask_size), "detection_mask_values": [T] float32
     the kept detections' M x M mask probabilities over their windows,
     row-major, concatenated in (image, detection) order, T = sum of M^2
     (`mask_value_offsets`, `unbatch_detections`; `padded_window_masks`
     gives the [N, D, R, R] layout)}; D = max_detections, entries past
     num_detections are zero.

  Raises:
    ValueError: a negative mask_size.
  """
  if mask_size < 0:
    raise ValueError(f"mask_size must be 0 (natural masks) or positive (the "
                     f"side masks are resampled to), got {mask_size}")
  window_boxes, window_level, window_size, window_y, window_x = _window_table(
      spec, image_size)
  # (Known when the graph is built for one input size, else at run time.)
  num_windows = window_boxes.shape[0] or tf.shape(window_boxes)[0]
  levels = spec.levels
  batch = tf.shape(outputs["class_outputs"][str(levels[0])])[0]
  logits = tf.concat([tf.reshape(outputs["class_outputs"][str(k)],
                                 [batch, -1]) for k in levels], axis=1)
  deltas = tf.concat([tf.reshape(outputs["box_outputs"][str(k)],
                                 [batch, -1, 4]) for k in levels], axis=1)
  scores = tf.sigmoid(tf.cast(logits, tf.float32))  # [N, windows * K]
  top_k = (min(pre_nms_top_k, num_windows * num_classes)
           if isinstance(num_windows, int) else
           tf.minimum(pre_nms_top_k, num_windows * num_classes))
  top_scores, top_index = tf.math.top_k(scores, k=top_k)
  window = top_index // num_classes
  classes = top_index % num_classes
  windows = tf.gather(window_boxes, window)  # [N, k, 4]
  # Not clipped: NMS compares the boxes as decoded.
  boxes = window_targets.decode_window_boxes(
      tf.gather(tf.cast(deltas, tf.float32), window, batch_dims=1), windows)
  candidate = top_scores > score_threshold

  # This NMS suppresses at IoU >= its threshold; detectron2's (and TF's
  # unpadded one) only above it: the next float32 up keeps IoU == 0.5.
  iou_threshold = float(np.nextafter(np.float32(nms_iou_threshold),
                                     np.float32(np.inf)))
  selected, num_selected = tf.image.non_max_suppression_padded(
      _class_separated_boxes(boxes, classes, candidate, num_classes),
      tf.where(candidate, top_scores, 0.0), max_output_size=max_detections,
      iou_threshold=iou_threshold, score_threshold=score_threshold,
      pad_to_max_output_size=True, canonicalized_coordinates=True)

  # The cap came first; now clip to the image and drop the boxes left
  # without area, moving the others to the front (in score order).
  height, width = image_size
  if image_sizes is None:
    image_sizes = tf.cast(tf.stack([height, width])[None], tf.float32)
  limits = tf.tile(tf.cast(image_sizes, tf.float32), [1, 2])[:, None, :]
  clipped = tf.maximum(tf.minimum(
      tf.gather(boxes, selected, batch_dims=1), limits), 0.0)
  kept = (tf.sequence_mask(num_selected, max_detections) &
          (clipped[..., 2] > clipped[..., 0]) &
          (clipped[..., 3] > clipped[..., 1]))
  order = tf.argsort(tf.cast(~kept, tf.int32), axis=1, stable=True)
  selected = tf.gather(selected, order, batch_dims=1)
  valid = tf.gather(kept, order, batch_dims=1)  # [N, D]
  num_detections = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
  valid_f = tf.cast(valid, tf.float32)
  pick = lambda t: tf.gather(t, selected, batch_dims=1)
  det_window = pick(window)
  detections = {
      "detection_boxes": tf.gather(clipped, order, batch_dims=1) *
                         valid_f[..., None],
      "detection_scores": pick(top_scores) * valid_f,
      "detection_classes": pick(classes) * tf.cast(valid, tf.int32),
      "num_detections": num_detections,
      "detection_windows": pick(windows) * valid_f[..., None],
  }

  # Masks of the kept detections only, one (level, window size) at a time,
  # each kept at its own side (no [N, D, R, R] padding to the largest).
  det_level = tf.gather(window_level, det_window)
  det_size = tf.gather(window_size, det_window)
  det_y = tf.gather(window_y, det_window)
  det_x = tf.gather(window_x, det_window)
  sides = tf.zeros([batch, max_detections], tf.int32)
  rows, keys = [], []  # per group: [P, M * M] ragged, [P] n * D + d
  for level in levels:
    for a in range(spec.num_sizes):
      where = tf.cast(tf.where(valid & (det_level == level) &
                               (det_size == a)), tf.int32)
      indices = tf.stack([where[:, 0], tf.gather_nd(det_y, where),
                          tf.gather_nd(det_x, where)], axis=1)
      probs = tf.sigmoid(tf.cast(mask_logits_fn(level, a, indices),
                                 tf.float32))
      if mask_size:
        probs = image_resize.antialiased_resize(
            probs[..., None], [mask_size, mask_size])[..., 0]
      side = tf.shape(probs)[1]
      sides = tf.tensor_scatter_nd_update(
          sides, where, tf.fill(tf.shape(where)[:1], side))
      rows.append(tf.RaggedTensor.from_tensor(
          tf.reshape(probs, [tf.shape(probs)[0], side * side])))
      keys.append(where[:, 0] * max_detections + where[:, 1])
  # Kept detections are at the front of each image: (n, d) order is the
  # order of n * D + d.
  ordered = tf.gather(tf.concat(rows, axis=0),
                      tf.argsort(tf.concat(keys, axis=0)))
  detections["detection_mask_values"] = ordered.flat_values
  detections["detection_mask_sides"] = sides
  return detections


def mask_value_offsets(mask_sides) -> tf.Tensor:
  """[..., D] int32 start of each detection's mask in
  `detection_mask_values` (exclusive cumulative sum of M^2 in (n, d)
  order)."""
  sides = tf.convert_to_tensor(mask_sides, tf.int32)
  sizes = tf.reshape(sides * sides, [-1])
  starts = tf.cumsum(sizes, exclusive=True)
  return tf.reshape(starts, tf.shape(sides))


def unbatch_detections(detections: dict) -> list[dict]:
  """A batch's numpy `generate_detections` outputs (and any other [N, ...]
  entries, e.g. source ids) as one dict per image, each holding its own
  images' `detection_mask_values` when the batch has them."""
  batched = {k: np.asarray(v) for k, v in detections.items()
             if k != "detection_mask_values"}
  images = [{k: v[n] for k, v in batched.items()}
            for n in range(len(batched["num_detections"]))]
  if "detection_mask_values" in detections:
    sizes = (batched["detection_mask_sides"].astype(np.int64) ** 2).sum(1)
    values = np.split(np.asarray(detections["detection_mask_values"]),
                      np.cumsum(sizes)[:-1])
    for image, image_values in zip(images, values):
      image["detection_mask_values"] = image_values
  return images


def padded_window_masks(mask_values, mask_sides) -> tf.Tensor:
  """[N, D, R, R] float32: each detection's M x M mask in the top-left
  corner, zeros elsewhere, R the largest M (at least 1). The former
  `detection_masks` layout, for research and `--window_masks` exports: it
  costs N * D * R^2 floats whatever the masks' sizes."""
  values = tf.convert_to_tensor(mask_values, tf.float32)
  sides = tf.convert_to_tensor(mask_sides, tf.int32)
  flat_sides = tf.reshape(sides, [-1])
  side = tf.maximum(tf.reduce_max(flat_sides), 1)
  masks = tf.RaggedTensor.from_row_lengths(values, flat_sides * flat_sides)

  def pad(args):
    row, m = args
    square = tf.reshape(row, [m, m])
    return tf.pad(square, [[0, side - m], [0, side - m]])

  padded = tf.map_fn(pad, (masks, flat_sides),
                     fn_output_signature=tf.TensorSpec([None, None],
                                                       tf.float32))
  return tf.reshape(padded, tf.concat([tf.shape(sides), [side, side]], 0))


def _axis_taps(start, end, side, size):
  """Bilinear taps along one image axis of one window, as `grid_sample`
  computes them.

  Pixel i (centre i + 0.5) of a window [start, end] with an M-cell mask
  reads mask coordinate c = ((i + 0.5 - start) / (end - start) * 2 - 1 + 1)
  * M / 2 - 0.5 (cell centres at 0..M-1), in float32 in this order.

  Args:
    start, end: scalar float32 window ends along the axis, end > start.
    side: scalar int32 mask side M.
    size: the image's length along the axis (scalar int32).

  Returns:
    (low [size] int32 cell index floor(c), far [size] float32 the weight
    c - floor(c) of cell low + 1).
  """
  centres = tf.range(size, dtype=tf.float32) + 0.5
  grid = (centres - start) / (end - start) * 2.0 - 1.0
  position = (grid + 1.0) * (tf.cast(side, tf.float32) / 2.0) - 0.5
  low = tf.floor(position)
  return tf.cast(low, tf.int32), position - low


# How far from the threshold the cells a pixel reads must all lie for the
# pixel to be decided without computing it: its value is a convex
# combination of those <= 4 cells (weights summing to 1 within a few
# float32 ulps), below the threshold when all are below threshold - margin,
# at least the threshold when all are at least threshold + margin.
_CELL_MARGIN = 1e-3


def _span(flags):
  """(first, count) of the True run from the first to the last True of a
  1-D bool tensor; (0, 0) without one."""
  flags = tf.cast(flags, tf.int32)
  size = tf.shape(flags)[0]
  any_set = tf.reduce_max(tf.concat([flags, [0]], 0))
  first = tf.cast(tf.argmax(tf.concat([flags, [0]], 0)), tf.int32)
  last = size - 1 - tf.cast(tf.argmax(tf.reverse(tf.concat([[0], flags], 0),
                                                 [0])), tf.int32)
  return first * any_set, (last - first + 1) * any_set


def _reached(low, first_cell, last_cell):
  """(first, count): the pixels of an axis whose taps read a cell in
  [first_cell, last_cell].

  A pixel reads cells low and low + 1. The mask coordinate grows with the
  pixel index (every step of `_axis_taps` is monotonic in float32), so
  these pixels form one run.
  """
  return _span((low >= first_cell - 1) & (low <= last_cell))


def _cell_classes(mask, threshold: float):
  """[M + 1, M + 1] int8: what the pixels reading each 2 x 2 block of
  cells are, for the blocks of rows r, r + 1 and columns c, c + 1, r and
  c in -1..M - 1 (zeros outside the mask). 2: in the mask (all four cells
  at least threshold + margin), 0: not (all below threshold - margin),
  1: to be computed."""
  padded = tf.pad(mask, [[1, 1], [1, 1]])
  corners = [padded[a:tf.shape(padded)[0] - 1 + a,
                    b:tf.shape(padded)[1] - 1 + b]
             for a in (0, 1) for b in (0, 1)]
  lowest = tf.reduce_min(tf.stack(corners), axis=0)
  highest = tf.reduce_max(tf.stack(corners), axis=0)
  code = lambda value: tf.constant(value, tf.int8)
  return tf.where(lowest >= threshold + _CELL_MARGIN, code(2),
                  tf.where(highest < threshold - _CELL_MARGIN, code(0),
                           code(1)))


def _paste(mask, window_box, image_size, threshold: float | None):
  """Pastes one window-relative mask into the image, where it can be.

  The release's rule (detectron2's `paste_masks_in_image`: `grid_sample`
  with align_corners=False): every image pixel centre samples the M x M
  mask laid over the window box bilinearly, with zeros outside the M x M
  cells, so a mask reaches half a mask cell past its outermost cell centres
  and no further; a pixel is in the mask when its value is >= threshold.

  Only what can differ is computed. Pixels are considered only where they
  read a mask cell (clipped to the image) or, for a binary mask, a cell of
  at least threshold - 1e-3. A pixel's value is a convex combination of
  the 2 x 2 cells it reads (weights summing to 1 within a few float32
  ulps), so pixels whose four cells are all at least threshold + 1e-3 are
  in the mask and those whose four are all below threshold - 1e-3 are not;
  only the others (along the mask's edge) are computed, with grid_sample's
  float32 arithmetic. Memory grows with the mask's area in the image,
  time mostly with its edge, not with the image or the window. A window without area or a mask
  without cells pastes nothing.

  Args:
    mask: [M, M] mask probabilities over the window (M may be 0).
    window_box: [4] window [ymin, xmin, ymax, xmax] in pixels.
    image_size: [2] int32 (height, width).
    threshold: the crop is `probability >= threshold`; None returns the
      probabilities (computed at every pixel of the reach).

  Returns:
    (crop, extent [4] int32 (row, column, height h, width w) of the region
    computed); crop: [w, h] bool, the region's columns, or [h, w] float32
    for threshold None. Pixels of the image outside the region are 0 /
    False.
  """
  mask = tf.cast(mask, tf.float32)
  box = tf.cast(window_box, tf.float32)
  side = tf.shape(mask)[0]
  has_area = (box[2] > box[0]) & (box[3] > box[1]) & (side > 0)
  box = tf.where(has_area, box, [0.0, 0.0, 1.0, 1.0])
  if threshold is None:
    cell_rows = cell_cols = (0, side)
  else:
    live = mask >= threshold - _CELL_MARGIN
    cell_rows = _span(tf.reduce_any(live, axis=1))
    cell_cols = _span(tf.reduce_any(live, axis=0))
  row_low, south = _axis_taps(box[0], box[2], side, image_size[0])
  col_low, east = _axis_taps(box[1], box[3], side, image_size[1])
  top, height = _reached(row_low, cell_rows[0],
                         cell_rows[0] + cell_rows[1] - 1)
  left, width = _reached(col_low, cell_cols[0],
                         cell_cols[0] + cell_cols[1] - 1)
  # (No live cell: an empty run of cells, and of pixels.)
  height *= tf.cast(has_area & (cell_rows[1] > 0), tf.int32)
  width *= tf.cast(has_area & (cell_cols[1] > 0), tf.int32)
  row_low, south = row_low[top:top + height], south[top:top + height]
  col_low, east = col_low[left:left + width], east[left:left + width]
  # One zero row and column at index M: taps outside the M x M cells read
  # them (zero padding).
  padded = tf.pad(mask, [[0, 1], [0, 1]])
  inside = lambda index: tf.where((index >= 0) & (index < side), index, side)

  def sample(row_low, south, col_low, east, rows_by_columns):
    """grid_sample's value at pixels (rows x columns as an outer product,
    or paired up), in its float32 order: north-west, north-east,
    south-west, south-east, each cell times (wy * wx)."""
    north, west = 1.0 - south, 1.0 - east
    if rows_by_columns:
      rows = [tf.gather(padded, inside(row_low + k)) for k in (0, 1)]
      value = lambda r, c: tf.gather(rows[r], inside(col_low + c), axis=1)
      weight = lambda wy, wx: wy[:, None] * wx[None, :]
    else:
      flat = tf.reshape(padded, [-1])
      value = lambda r, c: tf.gather(
          flat, inside(row_low + r) * (side + 1) + inside(col_low + c))
      weight = lambda wy, wx: wy * wx
    return (value(0, 0) * weight(north, west)
            + value(0, 1) * weight(north, east)
            + value(1, 0) * weight(south, west)
            + value(1, 1) * weight(south, east))

  if threshold is None:
    return (sample(row_low, south, col_low, east, True),
            tf.stack([top, left, height, width]))
  # Column-major ([w, h]), the order of COCO RLE (`_column_changes`).
  classes = tf.gather(
      tf.gather(tf.transpose(_cell_classes(mask, threshold)), col_low + 1),
      row_low + 1, axis=1)
  edge = tf.where(classes == 1)  # [E, 2] (column, row): to compute
  pick = lambda taps, axis: tf.gather(taps, edge[:, axis])
  columns = tf.tensor_scatter_nd_update(
      classes == 2, edge,
      sample(pick(row_low, 1), pick(south, 1), pick(col_low, 0),
             pick(east, 0), False) >= threshold)
  return columns, tf.stack([top, left, height, width])


def paste_window_mask(mask, window_box, image_size,
                      threshold: float | None = 0.5):
  """`_paste` as an image crop: (crop [h, w] bool, cut to the bounding
  box of its pixels, or float32 over the reach for threshold None; extent
  [4] int32 (row, column, height h, width w) of the crop in the image).
  Pixels of the image outside the crop are 0 / False."""
  crop, extent = _paste(mask, window_box, image_size, threshold)
  if threshold is None:
    return crop, extent
  crop = tf.transpose(crop)
  first_row, height = _span(tf.reduce_any(crop, axis=1))
  first_col, width = _span(tf.reduce_any(crop, axis=0))
  crop = crop[first_row:first_row + height, first_col:first_col + width]
  return crop, tf.stack([extent[0] + first_row, extent[1] + first_col,
                         height, width])


def _column_changes(columns):
  """[K] int64 where the runs of a crop start and end, from its columns
  [w, h] bool: column c, row r (0..h; an end at r = h is the column's
  bottom) as c * (h + 1) + r (`CroppedMasks`' `changes`)."""
  changed = tf.concat([columns[:, :1],
                       tf.not_equal(columns[:, 1:], columns[:, :-1]),
                       columns[:, -1:]], axis=1)  # [w, h + 1]
  return tf.reshape(tf.where(tf.reshape(changed, [-1])), [-1])


def map_window_masks(function, mask_values, mask_sides, window_boxes,
                     image_sizes, fn_output_signature):
  """`tf.map_fn` of `function(mask [M, M], window [4], image size [2])`
  over detections whose masks are concatenated in `mask_values`, one
  detection at a time (a window may cover a whole 24 MP photo).

  Args:
    function: what to compute from one detection's mask (e.g.
      `paste_window_mask`).
    mask_values: [T] the masks concatenated in order
      (`detection_mask_values`).
    mask_sides: [...] int, each mask's M, in the same order.
    window_boxes: [..., 4] each detection's window.
    image_sizes: [..., 2] int, (height, width) of each detection's image.
    fn_output_signature: as `tf.map_fn`'s.

  Returns:
    The results stacked over the detections, flattened to one axis.
  """
  values = tf.cast(tf.convert_to_tensor(mask_values), tf.float32)
  sides = tf.cast(tf.convert_to_tensor(mask_sides), tf.int32)
  starts = tf.reshape(mask_value_offsets(sides), [-1])
  boxes = tf.reshape(tf.cast(window_boxes, tf.float32), [-1, 4])
  sizes = tf.reshape(tf.cast(image_sizes, tf.int32), [-1, 2])

  def apply(args):
    side, start, box, size = args
    return function(tf.reshape(values[start:start + side * side],
                               [side, side]), box, size)

  return tf.map_fn(apply, (tf.reshape(sides, [-1]), starts, boxes, sizes),
                   parallel_iterations=1,
                   fn_output_signature=fn_output_signature)


def _pasted_masks(mask_values, mask_sides, window_boxes, image_size):
  """`_paste` over D detections whose masks are concatenated in
  `mask_values` (the `detection_mask_values` of one image): (changes
  [D, (K)] ragged int64, `_column_changes` of each region; its extent
  [D, 4] int32)."""

  def paste(mask, box, size):
    columns, extent = _paste(mask, box, size, 0.5)
    return _column_changes(columns), extent

  return map_window_masks(
      paste, mask_values, mask_sides, window_boxes,
      tf.tile(tf.cast(image_size, tf.int32)[None],
              [tf.size(mask_sides), 1]),
      (tf.RaggedTensorSpec([None], tf.int64, ragged_rank=0),
       tf.TensorSpec([4], tf.int32)))


_pasted_masks_function = tf.function(_pasted_masks, reduce_retracing=True)


def paste_cropped_masks(mask_values, mask_sides, window_boxes,
                        image_size) -> cropped_masks.CroppedMasks:
  """One image's binary masks pasted as the release does
  (`paste_window_mask`), each kept as the runs of its crop (cut to its
  pixels' bounding box).

  Args:
    mask_values: [T] float32, the detections' M x M masks concatenated
      (`detection_mask_values` of one image, or the first T of them).
    mask_sides: [D] int, each mask's M.
    window_boxes: [D, 4] windows [ymin, xmin, ymax, xmax] in the pixels
      of the image.
    image_size: (height, width).
  """
  sides = np.asarray(mask_sides, np.int32).reshape(-1)
  height, width = (int(v) for v in image_size)
  if sides.size == 0:
    return cropped_masks.CroppedMasks(np.zeros([0, 4]), (), (height, width))
  changes, extents = _pasted_masks_function(
      tf.constant(mask_values, tf.float32), tf.constant(sides),
      tf.constant(window_boxes, tf.float32),
      tf.constant([height, width], tf.int32))
  return cropped_masks.CroppedMasks.from_regions(
      extents.numpy(), tuple(np.split(changes.flat_values.numpy(),
                                      changes.row_splits.numpy()[1:-1])),
      (height, width))


def paste_window_masks(window_masks, mask_sides, window_boxes, image_size,
                       threshold: float | None = 0.5) -> tf.Tensor:
  """Full-image masks: `paste_window_mask` of every detection, placed in
  [D, height, width] (D x height x width values: for small images and
  tests; `paste_cropped_masks` keeps only the masks' reach).

  Args:
    window_masks: [D, R, R] mask probabilities over each window, detection
      d's M_d x M_d mask in the top-left corner.
    mask_sides: [D] int, the side M <= R of each mask.
    window_boxes: [D, 4] windows [ymin, xmin, ymax, xmax] in pixels.
    image_size: (height, width), ints or scalar int tensors.
    threshold: masks are `probability >= threshold`; None returns the
      probabilities.

  Returns:
    [D, height, width] bool, or float32 probabilities for threshold None.
  """
  masks = tf.cast(tf.convert_to_tensor(window_masks), tf.float32)
  sides = tf.cast(tf.convert_to_tensor(mask_sides), tf.int32)
  tf.debugging.assert_less_equal(
      sides, tf.shape(masks)[1], message="mask_sides exceed the masks' side R")
  size = tf.stack([tf.cast(image_size[0], tf.int32),
                   tf.cast(image_size[1], tf.int32)])

  def paste(args):
    mask, side, box = args
    crop, extent = paste_window_mask(mask[:side, :side], box, size,
                                     threshold)
    top, left, height, width = tf.unstack(extent)
    return tf.pad(crop, [[top, size[0] - top - height],
                         [left, size[1] - left - width]])

  return tf.map_fn(paste, (masks, sides, tf.cast(window_boxes, tf.float32)),
                   fn_output_signature=tf.TensorSpec(
                       [None, None],
                       tf.float32 if threshold is None else tf.bool))


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

  As the release's `_postprocess`: boxes scaled to the original image and
  clipped to it, windows scaled likewise (not clipped), masks pasted at the
  original size into the scaled windows. (Boxes without area were already
  dropped, in input pixels, by `generate_detections`.)

  Args:
    detections: numpy `generate_detections` outputs of one image (no batch
      dimension): num_detections, detection_boxes [D, 4], ...,
      detection_mask_values [T] (this image's: `unbatch_detections`) and
      detection_mask_sides [D] (only read with include_masks).
    image_info: [4, 2] Model Garden's (original size, scaled size, scale,
      offset) of the image.
    include_masks: whether to paste the masks.

  Returns:
    {"boxes": [n, 4] [ymin, xmin, ymax, xmax] original pixels, "classes":
     [n] int (0-based), "scores": [n], "masks": `CroppedMasks` of the
     n masks at the original size, or None} for the n = num_detections
     detections.
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
    masks = paste_cropped_masks(detections["detection_mask_values"],
                                detections["detection_mask_sides"][:count],
                                windows, (height, width))
  boxes = np.clip(boxes, 0, [height, width, height, width])
  return {"boxes": boxes,
          "classes": np.asarray(detections["detection_classes"][:count],
                                np.int64),
          "scores": np.asarray(detections["detection_scores"][:count]),
          "masks": masks}


def category_ids_of(classes, category_ids: Sequence[int] | None
                    ) -> np.ndarray:
  """[...] int64 category ids of 0-based classes: `category_ids[k]`
  (`tensormask_config.category_ids`), or k + 1 when it is None."""
  classes = np.asarray(classes, np.int64)
  if category_ids is None:
    return classes + 1
  return np.asarray(category_ids, np.int64)[classes]


def classes_of(ids, category_ids: Sequence[int] | None) -> np.ndarray:
  """The inverse of `category_ids_of`: [...] int64 0-based classes.

  Raises:
    ValueError: an id that is not one of category_ids.
  """
  ids = np.asarray(ids, np.int64)
  if category_ids is None:
    return ids - 1
  known = np.asarray(category_ids, np.int64)
  order = np.argsort(known)
  position = np.clip(np.searchsorted(known[order], ids), 0, len(known) - 1)
  found = known[order][position] == ids
  if not found.all():
    raise ValueError(f"category ids {np.unique(ids[~found]).tolist()} are "
                     f"not the model's ({known.tolist()})")
  return order[position]
