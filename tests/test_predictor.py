"""Image loading for prediction: conversions and clear errors (issue 6)."""

import numpy as np
from PIL import Image
import pytest

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
