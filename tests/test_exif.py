"""EXIF orientation (issue 29): load_image returns the image as displayed,
and the serving client sends a server that ignores EXIF the displayed
pixels."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tensormask_tf.serving import predictor

# The EXIF 2.32 Orientation table, as numpy turns of the stored pixels
# (rows, columns) into the displayed image; written from the spec's "0th row
# / 0th column" wording, independently of PIL's ImageOps.
#   1: row 0 top, column 0 left       2: top, right (mirrored left-right)
#   3: bottom, right (half turn)      4: bottom, left (mirrored top-bottom)
#   5: left, top (transposed)         6: right, top (a quarter turn clockwise)
#   7: right, bottom (transverse)     8: left, bottom (a quarter turn counter-)
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
    8: lambda a: np.rot90(a, k=1),
}


def _pattern(height: int = 6, width: int = 9) -> np.ndarray:
  """RGB with no symmetry: every pixel different, so any wrong turn or
  flip shows."""
  values = np.arange(height * width * 3, dtype=np.int64).reshape(
      height, width, 3)
  return (values * 7 % 256).astype(np.uint8)


def _save(path, array: np.ndarray, orientation: int | None,
          **kwargs) -> str:
  image = Image.fromarray(array)
  if orientation is None:
    image.save(path, **kwargs)
  else:
    exif = Image.Exif()
    exif[predictor.EXIF_ORIENTATION] = orientation
    image.save(path, exif=exif, **kwargs)
  return str(path)


def _stored_pixels(path: str) -> np.ndarray:
  """The file's pixels as stored, decoded by PIL without any turn."""
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def test_the_table_turns_a_corner_where_the_spec_says():
  # Orientation 6 (camera turned clockwise): the stored top-left pixel is
  # shown at the top right; 8: at the bottom left; 5: top left; 7: bottom
  # right.
  stored = np.zeros((2, 3), np.uint8)
  stored[0, 0] = 1
  corners = {6: (0, 1), 8: (2, 0), 5: (0, 0), 7: (2, 1), 3: (1, 2),
             2: (0, 2), 4: (1, 0)}
  for orientation, corner in corners.items():
    shown = DISPLAYED[orientation](stored)
    assert shown.shape == ((3, 2) if orientation >= 5 else (2, 3))
    assert tuple(np.argwhere(shown == 1)[0]) == corner, orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_loads_as_displayed(tmp_path, orientation):
  stored = _pattern()
  path = _save(tmp_path / f"o{orientation}.png", stored, orientation)
  np.testing.assert_array_equal(predictor.load_image(path),
                                DISPLAYED[orientation](stored))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_loads_as_displayed(tmp_path, orientation):
  path = _save(tmp_path / f"o{orientation}.jpg", _pattern(16, 24),
               orientation, quality=95)
  # JPEG is lossy: the reference is the decoded stored pixels, turned.
  np.testing.assert_array_equal(
      predictor.load_image(path),
      DISPLAYED[orientation](_stored_pixels(path)))


def test_turned_grayscale_and_16_bit_images_are_converted_after_turning(
    tmp_path):
  gray = (np.arange(20, dtype=np.uint8).reshape(4, 5) * 12)
  path = _save(tmp_path / "g.png", gray, 6)
  np.testing.assert_array_equal(
      predictor.load_image(path),
      np.repeat(DISPLAYED[6](gray)[..., None], 3, -1))
  deep = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
  path = _save(tmp_path / "d.png", deep, 8)
  np.testing.assert_array_equal(
      predictor.load_image(path)[..., 0],
      np.round(DISPLAYED[8](deep) / 257.0).astype(np.uint8))


def test_no_exif_and_out_of_range_orientations_load_as_stored(tmp_path):
  stored = _pattern()
  for name, orientation in (("none.png", None), ("zero.png", 0),
                            ("nine.jpg", 9)):
    path = _save(tmp_path / name, stored, orientation)
    np.testing.assert_array_equal(predictor.load_image(path),
                                  _stored_pixels(path))


def test_the_pixel_limit_names_the_displayed_size(tmp_path, monkeypatch):
  # Stored 50 wide, 40 high; shown a quarter turned: 40 wide, 50 high.
  path = _save(tmp_path / "big.png", np.zeros((40, 50, 3), np.uint8), 6)
  monkeypatch.setattr(predictor, "MAX_IMAGE_PIXELS", 1999)
  with pytest.raises(predictor.ImageError, match="40x50 is larger than 1999"):
    predictor.load_image(path)


def test_request_bytes_are_the_file_itself_without_a_turn(tmp_path):
  for name, orientation in (("plain.jpg", None), ("one.jpg", 1),
                            ("one.png", 1)):
    path = _save(tmp_path / name, _pattern(), orientation)
    with open(path, "rb") as f:
      assert predictor.request_bytes(path) == f.read()


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_request_bytes_of_a_turned_file_decode_to_the_displayed_image(
    tmp_path, orientation, suffix):
  path = _save(tmp_path / f"o{orientation}{suffix}", _pattern(16, 24),
               orientation)
  want = DISPLAYED[orientation](_stored_pixels(path))
  sent = predictor.request_bytes(path)
  # What the server does: TensorFlow's decoder, which ignores EXIF.
  served = tf.io.decode_image(sent, channels=3).numpy()
  np.testing.assert_array_equal(served, want)
  with Image.open(io.BytesIO(sent)) as image:
    assert image.format == "PNG"  # Lossless: the pixels exactly.
  # The pixels load_image already decoded are sent as they are.
  given = np.full_like(want, 3)
  np.testing.assert_array_equal(
      tf.io.decode_image(predictor.request_bytes(path, given)).numpy(),
      given)


def test_request_bytes_of_a_bad_file_is_an_image_error(tmp_path):
  path = tmp_path / "bad.jpg"
  path.write_bytes(b"not an image")
  with pytest.raises(predictor.ImageError, match="bad.jpg: not a readable"):
    predictor.request_bytes(str(path))
