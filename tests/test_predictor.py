"""Image loading for prediction: conversions and clear errors (issue 6);
the written detections' category ids; the overview picture."""

import os

import numpy as np
from PIL import Image
import pytest

from tensormask_tf.evaluation import visualization
from tensormask_tf.serving import predictor


def _save(tmp_path, name, array, mode=None):
  path = tmp_path / name
  Image.fromarray(array, mode=mode).save(path)
  return str(path)


def test_rgb_png_and_jpeg_load_unchanged_shape(tmp_path):
  rgb = np.random.RandomState(0).randint(0, 256, (7, 9, 3)).astype(np.uint8)
  np.testing.assert_array_equal(
      predictor.load_image(_save(tmp_path, "a.png", rgb)), rgb)
  jpeg = predictor.load_image(_save(tmp_path, "a.jpg", rgb))
  assert jpeg.shape == (7, 9, 3) and jpeg.dtype == np.uint8


def test_grayscale_rgba_palette_and_16_bit_become_rgb(tmp_path):
  gray = np.arange(63, dtype=np.uint8).reshape(7, 9) * 4
  got = predictor.load_image(_save(tmp_path, "g.png", gray))
  np.testing.assert_array_equal(got, np.repeat(gray[..., None], 3, -1))

  rgba = np.zeros((4, 5, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 17
  got = predictor.load_image(_save(tmp_path, "rgba.png", rgba))
  np.testing.assert_array_equal(got, np.broadcast_to([200, 0, 0], (4, 5, 3)))

  palette = Image.fromarray(gray).convert("P")
  palette.save(tmp_path / "p.png")
  got = predictor.load_image(str(tmp_path / "p.png"))
  np.testing.assert_array_equal(got, np.asarray(palette.convert("RGB")))

  deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
  Image.fromarray(deep).save(tmp_path / "d.png")  # 16-bit grayscale
  got = predictor.load_image(str(tmp_path / "d.png"))
  np.testing.assert_array_equal(
      got[..., 0], np.round(deep / 257.0).astype(np.uint8))


@pytest.mark.parametrize("content,message", [
    (b"", "the file is empty"),
    (b"this is not an image at all", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),
])
def test_bad_files_raise_image_error_with_the_reason(tmp_path, content,
                                                     message):
  path = tmp_path / "bad.png"
  path.write_bytes(content)
  with pytest.raises(predictor.ImageError, match=message) as info:
    predictor.load_image(str(path))
  assert str(path) in str(info.value)


def test_missing_and_huge_images_are_refused(tmp_path, monkeypatch):
  with pytest.raises(predictor.ImageError, match="no such file"):
    predictor.load_image(str(tmp_path / "none.png"))
  path = _save(tmp_path, "big.png", np.zeros((40, 50, 3), np.uint8))
  monkeypatch.setattr(predictor, "MAX_IMAGE_PIXELS", 1999)
  with pytest.raises(predictor.ImageError, match="50x40 is larger than 1999"):
    predictor.load_image(path)


def test_picture_names_never_collide():
  paths = ["a/x.jpg", "a/x.png", "b/x.jpg", "a/y.jpg", "z"]
  names = predictor.picture_names(paths)
  assert names == ["x_0.png", "x_1.png", "x_2.png", "y.png", "z.png"]
  # A name another path's picture would take gets a further suffix.
  assert predictor.picture_names(["d/a.jpg", "d/a.png", "d/a_1.png"]) == [
      "a_0.png", "a_1.png", "a_1_1.png"]


def test_pictures_written_beside_their_images_do_not_replace_them(tmp_path):
  paths = [_save(tmp_path, "a.png", np.zeros((8, 8, 3), np.uint8)),
           _save(tmp_path, "b.jpg", np.zeros((8, 8, 3), np.uint8)),
           _save(tmp_path, "a_1.png", np.zeros((8, 8, 3), np.uint8))]
  # a.png and a_1.png are the images; b.png is free.
  assert predictor.picture_names(paths, str(tmp_path)) == [
      "a_2.png", "b.png", "a_1_1.png"]
  assert predictor.picture_names(paths, str(tmp_path / "out")) == [
      "a.png", "b.png", "a_1.png"]


def test_save_prediction_writes_the_models_category_ids(tmp_path):
  # Classes 0 and 2 of a model whose category ids are [7, 3, 12]: the
  # entries carry ids 7 and 12, and the picture is drawn.
  image = np.zeros((32, 40, 3), np.uint8)
  masks = np.zeros((2, 32, 40), bool)
  masks[0, 4:10, 5:12] = masks[1, 20:30, 30:38] = True
  detections = {"boxes": np.array([[4, 5, 10, 12], [20, 30, 30, 38]],
                                  np.float32),
                "classes": np.array([0, 2]), "scores": np.array([0.9, 0.8]),
                "masks": masks}
  path = _save(tmp_path, "a.png", image)
  entries, picture = predictor.save_prediction(
      path, image, detections, 5, {7: "seven", 3: "three", 12: "twelve"},
      str(tmp_path), 0.5, "out.png", category_ids=[7, 3, 12])
  assert [e["category_id"] for e in entries] == [7, 12]
  assert entries[0]["bbox"] == [5.0, 4.0, 7.0, 6.0]
  assert os.path.isfile(picture)
  # Without a list, class k is id k + 1.
  entries, _ = predictor.save_prediction(path, image, detections, 5, {},
                                         str(tmp_path), 0.5, "plain.png")
  assert [e["category_id"] for e in entries] == [1, 3]


def test_tile_pictures_puts_each_picture_scaled_in_its_cell():
  red = np.zeros((10, 20, 3), np.uint8)
  red[..., 0] = 255
  blue = np.zeros((20, 10, 3), np.uint8)
  blue[..., 2] = 255
  sheet = visualization.tile_pictures([red, blue, red], side=8, columns=2)
  assert sheet.shape == (16, 16, 3)
  # Row 0: red scaled to 4 x 8 at the top left of cell 0, blue to 8 x 4
  # in cell 1; row 1: red again; white everywhere else.
  want = np.full((16, 16, 3), 255, np.uint8)
  want[0:4, 0:8] = [255, 0, 0]
  want[0:8, 8:12] = [0, 0, 255]
  want[8:12, 0:8] = [255, 0, 0]
  np.testing.assert_array_equal(sheet, want)
  with pytest.raises(ValueError, match="at least one picture"):
    visualization.tile_pictures([])
