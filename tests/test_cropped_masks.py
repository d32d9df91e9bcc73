"""Masks pasted only where they reach (issue 29): the cropped paste against
the float64 statement of the release's rule (the release's own pasted masks:
test_release_postprocess.py); COCO RLE from crops against pycocotools' encoding of the dense mask;
PNG crops as the export serves them; drawing from crops."""

import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_api
import pytest

from tensormask_tf.evaluation import visualization
from tensormask_tf.modeling import detection_generator
from tensormask_tf.ops import cropped_masks
from tests import test_release_postprocess as release


def _flat(masks, sides):
  """Each [R, R] mask's top-left M x M, concatenated (the
  `detection_mask_values` layout)."""
  return np.concatenate([m[:s, :s].ravel() for m, s in zip(masks, sides)]
                        + [np.zeros(0, np.float32)]).astype(np.float32)


def test_cropped_paste_equals_the_reference_cut_to_its_pixels():
  rng = np.random.RandomState(3)
  height, width = 57, 83
  sides = [3, 10, 5, 7, 0, 10, 4]
  masks = rng.uniform(size=(7, 10, 10)).astype(np.float32)
  boxes = np.array([[-6.0, -6.0, 6.0, 6.0],  # over the top-left corner
                    [10.0, 20.0, 50.0, 95.0],  # past the right edge
                    [3.5, 2.25, 23.75, 17.0],  # fractional
                    [-20.0, 30.0, 90.0, 110.0],  # larger than the image
                    [1.0, 1.0, 9.0, 9.0],  # side 0: nothing
                    [60.0, 10.0, 80.0, 30.0],  # below the image: nothing
                    [20.0, 20.0, 20.0, 40.0]], np.float32)  # no height
  got = detection_generator.paste_cropped_masks(
      _flat(masks, sides), sides, boxes, (height, width))
  assert len(got) == 7 and got.image_size == (height, width)
  for d, side in enumerate(sides):
    crop, (top, left) = got.crop(d), got.offsets[d]
    if side == 0 or d >= 5:
      assert crop.size == 0
      continue
    soft = release._paste_reference(masks[d, :side, :side].astype(np.float64),
                                    boxes[d].astype(np.float64), height,
                                    width)
    np.testing.assert_array_equal(got.mask(d), soft >= 0.5)
    # The crop is the bounding box of the mask's pixels.
    rows = np.flatnonzero((soft >= 0.5).any(axis=1))
    cols = np.flatnonzero((soft >= 0.5).any(axis=0))
    assert (top, top + crop.shape[0]) == (rows[0], rows[-1] + 1)
    assert (left, left + crop.shape[1]) == (cols[0], cols[-1] + 1)
  np.testing.assert_array_equal(
      got.dense(), detection_generator.paste_window_masks(
          masks, sides, boxes, (height, width)).numpy())


def test_small_windows_on_a_24_mp_photo_cost_their_area_only():
  # 100 windows of 40 px on 6000 x 4000: the crops hold about 100 * 40^2
  # values, not 100 * 24M. (Masks of ones: they fill their windows.)
  rng = np.random.RandomState(0)
  corners = rng.uniform(0, [5960, 3960], size=(100, 2)).astype(np.float32)
  boxes = np.concatenate([corners, corners + 40.0], axis=1)
  sides = np.full(100, 15, np.int32)
  values = np.ones(100 * 15 * 15, np.float32)
  got = detection_generator.paste_cropped_masks(values, sides, boxes,
                                                (6000, 4000))
  cell = 40.0 / 15
  limit = (40 + 2 * cell + 2) ** 2  # The window and half a cell around.
  sizes = got.boxes[:, 2] * got.boxes[:, 3]
  assert sizes.max() <= limit
  assert got.areas().sum() > 100 * 40 * 40 * 0.9


def test_a_small_mask_in_a_window_larger_than_the_photo_costs_its_area():
  # A P7-like window of 9600 px over a 6000 x 4000 photo whose 15 x 15 mask
  # has one cell on (640 px per cell): only the pixels near that cell are
  # computed, and they are the reference's.
  mask = np.full((15, 15), 0.2, np.float32)
  mask[7, 9] = 0.9
  box = np.array([-1800.0, -2800.0, 7800.0, 6800.0], np.float32)
  got = detection_generator.paste_cropped_masks(mask.ravel(), [15], box[None],
                                                (6000, 4000))
  crop, (top, left) = got.crop(0), got.offsets[0]
  assert 0 < crop.size <= (2 * 640) ** 2
  # The reference along the crop's rows and columns and one pixel past.
  rows = np.arange(top - 1, top + crop.shape[0] + 1)
  cols = np.arange(left - 1, left + crop.shape[1] + 1)
  cell = lambda px, lo, hi: (px + 0.5 - lo) / (hi - lo) * 15 - 0.5
  u, v = cell(rows, box[0], box[2]), cell(cols, box[1], box[3])
  padded = np.pad(mask.astype(np.float64), 2)
  u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
  fu, fv = (u - u0)[:, None], (v - v0)[None, :]
  at = lambda du, dv: padded[np.clip(u0 + du + 2, 0, 18)[:, None],
                             np.clip(v0 + dv + 2, 0, 18)[None, :]]
  soft = ((1 - fu) * (1 - fv) * at(0, 0) + (1 - fu) * fv * at(0, 1)
          + fu * (1 - fv) * at(1, 0) + fu * fv * at(1, 1))
  got = np.zeros_like(soft, bool)
  got[1:-1, 1:-1] = crop
  differ = got != (soft >= 0.5)
  # (Pixels within float32 noise of the threshold may go either way.)
  assert differ.sum() <= 2 and np.all(np.abs(soft[differ] - 0.5) < 1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (12, 5), (30, 30)])
def test_rle_of_crops_is_pycocotools_encoding_of_the_dense_mask(shape):
  rng = np.random.RandomState(sum(shape))
  dense = rng.uniform(size=(40, *shape)) < rng.uniform(size=(40, 1, 1))
  dense[0] = True  # the whole image: one run through every column
  dense[1] = False  # empty
  dense[2, -1, -1] = True  # ends on the last pixel
  if shape[0] > 2:
    dense[3, :, 1:] = True  # full columns from the second on
  masks = cropped_masks.CroppedMasks.from_dense(dense)
  for d, rle in enumerate(masks.to_rle()):
    want = mask_api.encode(np.asfortranarray(dense[d].astype(np.uint8)))
    assert rle == {"size": list(shape), "counts": want["counts"].decode()}
  np.testing.assert_array_equal(masks.dense(), dense)
  np.testing.assert_array_equal(masks.areas(), dense.sum(axis=(1, 2)))
  # Sampled rows and columns (repeated, skipped) of each crop.
  for d in range(len(masks)):
    h, w = masks.boxes[d, 2:]
    rows = np.sort(rng.randint(0, max(h, 1), size=7)) if h else []
    cols = np.sort(rng.randint(0, max(w, 1), size=5)) if w else []
    np.testing.assert_array_equal(
        masks.sample(d, rows, cols),
        masks.crop(d)[np.asarray(rows, int)][:, np.asarray(cols, int)])


def test_a_photo_is_drawn_at_the_pictures_longest_side():
  # 3000 x 2400 -> 2048 x 1638: a mask's pixels come out blended where the
  # picture's pixel centres fall on it, and nowhere else.
  image = np.zeros((3000, 2400, 3), np.uint8)
  dense = np.zeros((1, 3000, 2400), bool)
  dense[0, 1000:1600, 300:1500] = True
  picture = visualization.draw_detections(
      image, {"boxes": np.zeros((1, 4), np.float32),
              "classes": np.array([0]), "scores": np.array([0.9]),
              "masks": cropped_masks.CroppedMasks.from_dense(dense)},
      {1: "one"}, min_score=0.5)
  assert picture.shape == (2048, 1638, 3)
  scale = 2048 / 3000
  centres = lambda n: ((np.arange(n) + 0.5) / scale).astype(int)
  want = dense[0][centres(2048)][:, centres(1638)]
  coloured = picture.any(axis=2)
  coloured[:40, :200] = want[:40, :200]  # (The label at the box's corner.)
  np.testing.assert_array_equal(coloured, want)


def test_png_crops_decode_to_the_same_masks_and_select_by_index():
  rng = np.random.RandomState(1)
  crops = [rng.uniform(size=(5, 8)) < 0.5, np.zeros((0, 0), bool),
           rng.uniform(size=(3, 2)) < 0.5]
  offsets = [[2, 3], [0, 0], [9, 10]]
  pngs = []
  for crop in crops:
    if not crop.size:
      pngs.append(b"")
      continue
    buffer = io.BytesIO()
    Image.fromarray(crop.astype(np.uint8) * 255).save(buffer, "PNG")
    pngs.append(buffer.getvalue())
  masks = cropped_masks.CroppedMasks.from_png(pngs, offsets, (12, 12))
  want = np.zeros((3, 12, 12), bool)
  want[0, 2:7, 3:11] = crops[0]
  want[2, 9:12, 10:12] = crops[2]
  np.testing.assert_array_equal(masks.dense(), want)
  np.testing.assert_array_equal(
      masks[np.array([True, False, True])].dense(), want[[0, 2]])
  with pytest.raises(ValueError, match="not inside the 12x12 image"):
    cropped_masks.CroppedMasks.from_crops(crops[:1], [[8, 8]], (12, 12))
  for d in (0, 2):
    np.testing.assert_array_equal(masks.crop(d), crops[d])


def test_drawing_from_crops_equals_drawing_the_dense_masks():
  # Model Garden draws full-image masks; drawn crop by crop the picture is
  # the same, masks of low-scoring detections left out alike. (Apart, as
  # Model Garden draws each box after its own mask, and here every mask
  # comes first.)
  rng = np.random.RandomState(2)
  image = rng.randint(0, 256, (60, 70, 3)).astype(np.uint8)
  dense = np.zeros((3, 60, 70), bool)
  dense[0, 5:25, 5:30] = True
  dense[1, 35:58, 40:69] = rng.uniform(size=(23, 29)) < 0.7
  dense[2, 0:10, 60:70] = True
  detections = {"boxes": np.array([[5, 5, 25, 30], [35, 40, 58, 69],
                                   [0, 60, 10, 70]], np.float32),
                "classes": np.array([0, 4, 2]),
                "scores": np.array([0.9, 0.8, 0.2], np.float32)}
  names = {k: f"c{k}" for k in range(1, 6)}
  from_crops = visualization.draw_detections(
      image, dict(detections,
                  masks=cropped_masks.CroppedMasks.from_dense(dense)),
      names, min_score=0.5)
  from official.vision.utils.object_detection import visualization_utils  # pylint: disable=g-import-not-at-top
  factor = from_crops.shape[0] // 60
  big = lambda a, axes: np.repeat(np.repeat(a, factor, axes[0]), factor,
                                  axes[1])
  want = big(image, (0, 1))
  visualization_utils.visualize_boxes_and_labels_on_image_array(
      want, detections["boxes"] * factor, detections["classes"] + 1,
      detections["scores"], {k: {"id": k, "name": v} for k, v in
                             names.items()},
      instance_masks=big(dense, (1, 2)).astype(np.uint8),
      min_score_thresh=0.5, line_thickness=max(1, min(want.shape[:2]) // 200))
  assert factor > 1
  np.testing.assert_array_equal(from_crops, want)
