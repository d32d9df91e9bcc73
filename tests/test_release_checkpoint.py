"""The project's generator of the release reference checkpoint reproduces
the checkpoint behind tests/data/detectron2_reference/ bit for bit."""

import json
import pathlib
import pickle

import numpy as np

from tests import release_checkpoint

CHECKSUMS = (pathlib.Path(__file__).parent / "data" / "detectron2_reference" /
             "checkpoint_checksums.json")


def test_seed38_reproduces_the_recorded_checksums(release_checkpoint_seed38):
  params = release_checkpoint_seed38
  recorded = json.loads(CHECKSUMS.read_text())
  assert recorded["seed"] == 38
  arrays = recorded["arrays_in_generation_order"]
  # Same keys in the same (draw) order, then every array's bytes.
  assert list(params) == [a["key"] for a in arrays]
  assert len(params) == recorded["num_arrays"] == 319
  assert sum(v.size for v in params.values()) == recorded["num_values"]
  for entry in arrays:
    value = params[entry["key"]]
    assert value.dtype == np.float32, entry["key"]
    assert list(value.shape) == entry["shape"], entry["key"]
    assert release_checkpoint.array_sha256(value) == entry["sha256_f32le"], (
        entry["key"])
  assert (release_checkpoint.params_digest(params) ==
          recorded["params_sha256"])


def test_params_digest_follows_its_definition():
  # Hand-built bytes: sorted keys, key + str(shape) + float32 LE bytes.
  import hashlib  # pylint: disable=g-import-not-at-top
  params = {"b": np.array([1.5, -2.0], np.float64),
            "a": np.arange(6, dtype=np.float32).reshape(2, 3)}
  want = hashlib.sha256(
      b"a(2, 3)" + np.arange(6, dtype="<f4").tobytes() +
      b"b(2,)" + np.array([1.5, -2.0], "<f4").tobytes()).hexdigest()
  assert release_checkpoint.params_digest(params) == want


def test_write_pkl_writes_a_model_zoo_pickle(tmp_path):
  params = {"head.cls_score.bias": np.full((4,), -7.0, np.float32)}
  path = tmp_path / "ckpt.pkl"
  release_checkpoint.write_pkl(params, str(path))
  raw = path.read_bytes()
  assert raw[:2] == b"\x80\x04"  # pickle protocol 4
  loaded = pickle.loads(raw)
  assert set(loaded) == {"model", "__author__"}
  np.testing.assert_array_equal(loaded["model"]["head.cls_score.bias"],
                                params["head.cls_score.bias"])
