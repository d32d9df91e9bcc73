"""Regression and mask targets of positive windows (docs/model.md).

Box deltas are Model Garden's box coding (`official.vision.ops.box_ops`)
relative to the window box with weights (1.5, 1.5, 0.75, 0.75). The mask
target of a positive window is its ground-truth instance mask cropped to the
window box and resampled to the window's mask side M by averaging the covered
pixels (ROIAlign with half-pixel-aligned sample points, `samples_per_cell`
per cell and axis), then thresholded at 0.5. Outside the image the release's
ROIAlign (torchvision's bilinear_interpolate) reads the edge pixel for a
sample one pixel beyond the border and 0 further out: window parts outside
the image are background except for that replicated one-pixel ring.
"""

import tensorflow as tf

from official.vision.ops import box_ops

BOX_WEIGHTS = (1.5, 1.5, 0.75, 0.75)


def encode_window_boxes(gt_boxes: tf.Tensor, windows: tf.Tensor) -> tf.Tensor:
  """[..., 4] boxes -> [..., 4] deltas (dy, dx, dh, dw) w.r.t. windows."""
  return box_ops.encode_boxes(gt_boxes, windows, weights=BOX_WEIGHTS)


def decode_window_boxes(deltas: tf.Tensor, windows: tf.Tensor) -> tf.Tensor:
  """The inverse of encode_window_boxes (log sizes clipped as Model Garden)."""
  return box_ops.decode_boxes(deltas, windows, weights=BOX_WEIGHTS)


def window_mask_targets(instance_masks, instance_indices, window_boxes,
                        mask_side: int, samples_per_cell: int,
                        image_extent=None) -> tf.Tensor:
  """Binary mask targets of windows from full-image instance masks.

  A window's corners are whole pixels and its side is mask_side *
  samples_per_cell pixels (TensorMask's windows: side [44, 60] * 2**k, M = S
  * 2**k, 4 px per mask pixel), so ROIAlign's half-pixel-aligned sample
  points, samples_per_cell per cell and axis, fall on the centres of each
  cell's samples_per_cell x samples_per_cell pixels, and a cell's value is
  their mean, computed here from the pixels themselves.

  Samples outside the image follow the release (torchvision's ROIAlign on
  the gt bit mask): one at row -1 or row h reads row 0 or h - 1 (likewise
  columns), one further out reads 0. So the mask is read as if it had a
  replicated one-pixel ring around the image's extent (h, w) and zeros
  beyond; rows and columns of `instance_masks` past the extent (the padding
  of the model input) are never read.

  Args:
    instance_masks: [G, H, W] masks of the image's instances (0/1 or soft),
      aligned with the input image (pixel (i, j) covers [i, i+1) x [j, j+1)).
    instance_indices: [P] int32, which instance each window is assigned to.
    window_boxes: [P, 4] windows [ymin, xmin, ymax, xmax] in pixels.
    mask_side: M, the natural mask side of these windows
      (`WindowSpec.mask_side`: S * 2**k for the bipyramid, S for the
      feature-pyramid heads).
    samples_per_cell: pixels per mask cell and axis (side / M,
      `WindowSpec.mask_cell`).
    image_extent: optional [2] int (h, w), the image's own size inside the
      masks (the resized image before padding), 1 <= h <= H, 1 <= w <= W;
      default (H, W).

  Returns:
    [P, M, M] float32 in {0, 1}: 1 where the cell's mean is >= 0.5.

  Raises:
    ValueError: masks that are not [G, H, W].
    tf.errors.InvalidArgumentError: windows whose corners are not whole
      pixels or whose side is not mask_side * samples_per_cell; an
      image_extent outside [1, H] x [1, W].
  """
  masks = tf.cast(tf.convert_to_tensor(instance_masks), tf.float32)
  if masks.shape.rank != 3:
    raise ValueError("window_mask_targets: instance_masks must be [G, H, W], "
                     f"got shape {masks.shape}.")
  mask_size = tf.shape(masks)[1:3]
  if image_extent is None:
    image_extent = mask_size
  image_extent = tf.cast(tf.convert_to_tensor(image_extent), tf.int32)
  if image_extent.shape.rank is not None and image_extent.shape != [2]:
    raise ValueError("window_mask_targets: image_extent must be (height, "
                     f"width), got shape {image_extent.shape}.")
  boxes = tf.cast(tf.convert_to_tensor(window_boxes), tf.float32)
  cell = samples_per_cell
  side = mask_side * cell
  first = tf.round(boxes[:, :2])  # [P, 2] first pixel row and column
  checks = [
      tf.debugging.assert_equal(
          first, boxes[:, :2],
          message="window_mask_targets: window corners must be whole pixels"),
      tf.debugging.assert_equal(
          boxes[:, 2:] - boxes[:, :2], float(side),
          message="window_mask_targets: window sides must be mask_side * "
                  f"samples_per_cell = {side} pixels"),
      tf.debugging.assert_greater_equal(
          image_extent, 1,
          message="window_mask_targets: image_extent must be at least 1 x 1 "
                  "pixels"),
      tf.debugging.assert_less_equal(
          image_extent, mask_size,
          message="window_mask_targets: image_extent must not exceed the "
                  "masks' [H, W]"),
  ]
  with tf.control_dependencies(checks):
    first = tf.identity(first)
  # The image with its replicated ring: SYMMETRIC padding by one repeats the
  # edge row/column (and the corner pixel at the corners), so pixel (i, j)
  # of the image is pixel (i + 1, j + 1) here and everything outside reads
  # crop_and_resize's extrapolation value 0. Only the instances the windows
  # use are copied (often none or a few of the image's).
  used, local_indices = tf.unique(tf.cast(instance_indices, tf.int32))
  ringed = tf.pad(
      tf.gather(masks, used)[:, :image_extent[0], :image_extent[1]],
      [[0, 0], [1, 1], [1, 1]], mode="SYMMETRIC")
  first += 1.0
  extent = tf.cast(image_extent + 1, tf.float32)  # last index: (h+1, w+1)
  # One nearest-pixel sample per pixel, then the cells' sums.
  # crop_and_resize maps normalised box ends back to pixel indices in
  # float32, off by ~1e-3 px at these sizes: enough for bilinear samples to
  # mix in a neighbour (a cell of exactly 0.5 fell to 0.49999) and for the
  # last row (799.0001) to count as outside the image. Pulling every sample
  # towards the image centre by an affine map, a quarter pixel at the
  # borders, keeps each one nearest its own pixel and on its side of them
  # (the ringed image is at least 3 x 3, so the centre is >= 1 px inside).
  centre = extent / 2.0
  def normalized(pixel):
    return (centre + (pixel - centre) * (1.0 - 0.25 / centre)) / extent
  crops = tf.image.crop_and_resize(
      ringed[..., None],
      tf.concat([normalized(first), normalized(first + (side - 1))], axis=-1),
      local_indices, [side, side], method="nearest",
      extrapolation_value=0.0)
  total = tf.reduce_sum(tf.reshape(
      crops, [-1, mask_side, cell, mask_side, cell]), axis=[2, 4])
  # mean >= 0.5 as sum >= cell**2 / 2: exact for 0/1 masks.
  return tf.cast(total >= 0.5 * cell * cell, tf.float32)
