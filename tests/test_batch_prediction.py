"""Prediction over many images (issue 29): the journal and its resume,
shards and their merge, progress lines, background decoding; and
scripts/predict.py killed mid-run, resumed, and sharded."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tensormask_tf.serving import batch_prediction
from tests import tiny_experiment

REPO = os.path.join(os.path.dirname(__file__), "..")


def _entries(image_id: int) -> list[dict]:
  """Made-up COCO entries of an image: image_id % 3 of them."""
  return [{"image_id": image_id, "category_id": n + 1, "score": 0.5 + n / 8,
           "bbox": [1.0, 2.0, 3.0, 4.5], "file_name": f"{image_id}.png"}
          for n in range(image_id % 3)]


def _header(num_images=6, num_shards=1, shard_index=0, min_score=0.5):
  paths = [f"images/{k}.png" for k in range(num_images)]
  return batch_prediction.header(paths, num_shards, shard_index, min_score)


def _journal_lines(path) -> list[dict]:
  """The file's complete lines, parsed (a last line without its newline
  is left out: a writer killed mid-line)."""
  with open(path, "rb") as f:
    return [json.loads(line) for line in f.read().split(b"\n")[:-1]]


# --- Shards ---------------------------------------------------------------


@pytest.mark.parametrize("num_images", [0, 1, 7, 12, 13])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 5, 16])
def test_shards_are_disjoint_cover_every_image_and_are_balanced(
    num_images, num_shards):
  shards = [batch_prediction.shard_ids(num_images, num_shards, i)
            for i in range(num_shards)]
  taken = [k for shard in shards for k in shard]
  assert sorted(taken) == list(range(num_images))  # All, each once.
  sizes = [len(shard) for shard in shards]
  assert max(sizes) - min(sizes) <= 1
  for i, shard in enumerate(shards):
    assert shard == sorted(shard)  # In the list's order.
    assert all(k % num_shards == i for k in shard)


@pytest.mark.parametrize("num_shards,shard_index,message", [
    (2, 2, "--shard_index=2 must be in 0..1"),
    (2, -1, "--shard_index=-1 must be in 0..1"),
    (0, 0, "--num_shards=0 must be at least 1"),
])
def test_bad_shards_are_clear_errors(num_shards, shard_index, message):
  with pytest.raises(ValueError, match=message):
    batch_prediction.check_shard(num_shards, shard_index)


def test_file_names_of_shards():
  assert batch_prediction.file_stem(1, 0) == "detections"
  assert batch_prediction.file_stem(8, 2) == "detections-00002-of-00008"


# --- The journal ----------------------------------------------------------


def test_journal_records_images_and_a_rerun_skips_them(tmp_path):
  with batch_prediction.Journal(str(tmp_path), _header()) as journal:
    assert journal.done == {}
    for k in (3, 0, 4):  # In the order they finished.
      journal.append(k, f"images/{k}.png", f"{k}.png", _entries(k))
  with batch_prediction.Journal(str(tmp_path), _header()) as journal:
    assert sorted(journal.done) == [0, 3, 4]
    assert journal.done[4].path == "images/4.png"
    assert journal.done[4].picture == "4.png"
    assert journal.done[4].num_entries == 1
  lines = _journal_lines(tmp_path / "detections.jsonl")
  assert lines[0]["journal"] == batch_prediction.JOURNAL_KIND
  assert lines[0]["num_images"] == 6 and lines[0]["num_shards"] == 1
  assert [line["image_id"] for line in lines[1:]] == [3, 0, 4]
  assert lines[1]["entries"] == _entries(3)


def test_a_torn_last_line_is_dropped_and_cut_off_on_resume(tmp_path):
  with batch_prediction.Journal(str(tmp_path), _header()) as journal:
    journal.append(0, "images/0.png", "0.png", _entries(0))
    journal.append(1, "images/1.png", "1.png", _entries(1))
  path = tmp_path / "detections.jsonl"
  whole = path.read_bytes()
  # Killed while writing image 2's line: part of it, no newline.
  line = json.dumps({"image_id": 2, "path": "images/2.png",
                     "picture": "2.png", "entries": _entries(2)})
  path.write_bytes(whole + line[:len(line) // 2].encode())
  contents = batch_prediction.read_journal(str(path))
  assert sorted(contents.records) == [0, 1]
  assert contents.complete_bytes == len(whole)
  with batch_prediction.Journal(str(tmp_path), _header()) as journal:
    assert sorted(journal.done) == [0, 1]
    journal.append(2, "images/2.png", "2.png", _entries(2))
  # The torn part is gone and image 2 is there once, whole.
  assert path.read_bytes() == whole + line.encode() + b"\n"
  assert [x.get("image_id") for x in _journal_lines(path)] == [None, 0, 1, 2]


def test_a_torn_header_starts_the_journal_over(tmp_path):
  path = tmp_path / "detections.jsonl"
  path.write_bytes(json.dumps(_header()).encode()[:20])
  with batch_prediction.Journal(str(tmp_path), _header()) as journal:
    assert journal.done == {}
    journal.append(1, "images/1.png", "1.png", _entries(1))
  assert _journal_lines(path)[0] == _header()


def test_a_damaged_line_and_another_runs_journal_are_refused(tmp_path):
  with batch_prediction.Journal(str(tmp_path), _header()) as journal:
    journal.append(0, "images/0.png", "0.png", [])
  path = tmp_path / "detections.jsonl"
  # Another image list or --min_score: its ids or entries are not this
  # run's.
  with pytest.raises(batch_prediction.JournalError,
                     match=r"another run .*num_images=6.*num_images=7"):
    batch_prediction.Journal(str(tmp_path), _header(num_images=7))
  with pytest.raises(batch_prediction.JournalError, match="min_score=0.5"):
    batch_prediction.Journal(str(tmp_path), _header(min_score=0.3))
  # Refusing left the file as it was.
  assert len(_journal_lines(path)) == 2
  with open(path, "a") as f:
    f.write("{not json\n" + json.dumps({"image_id": 1}) + "\n")
  with pytest.raises(batch_prediction.JournalError,
                     match=r"detections.jsonl: line 3 is not a journal line"):
    batch_prediction.Journal(str(tmp_path), _header())
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "detections.jsonl").write_text('{"a": 1}\n')
  with pytest.raises(batch_prediction.JournalError, match="line 1"):
    batch_prediction.read_journal(str(tmp_path / "other" /
                                      "detections.jsonl"))


def test_results_are_streamed_in_image_order_as_json_dump_writes_them(
    tmp_path):
  with batch_prediction.Journal(str(tmp_path), _header()) as journal:
    for k in (4, 1, 5, 2):
      journal.append(k, f"images/{k}.png", f"{k}.png", _entries(k))
    count = journal.write_results(str(tmp_path / "detections.json"))
  want = [e for k in (1, 2, 4, 5) for e in _entries(k)]
  assert count == len(want) == 1 + 2 + 1 + 2
  with open(tmp_path / "detections.json") as f:
    assert f.read() == json.dumps(want)
  assert not os.path.exists(tmp_path / "detections.json.tmp")


# --- Merging shards -------------------------------------------------------


def _write_shards(folder, num_images, num_shards, skip=()):
  for i in range(num_shards):
    with batch_prediction.Journal(str(folder), _header(
        num_images, num_shards, i)) as journal:
      for k in reversed(range(i, num_images, num_shards)):
        if k not in skip and k not in journal.done:
          journal.append(k, f"images/{k}.png", f"{k}.png", _entries(k))


def test_merge_joins_the_shards_in_image_order(tmp_path):
  _write_shards(tmp_path, 11, 3)
  assert batch_prediction.merge(str(tmp_path)) == (
      3, 11, sum(k % 3 for k in range(11)))
  with open(tmp_path / "detections.json") as f:
    assert json.load(f) == [e for k in range(11) for e in _entries(k)]


def test_merge_names_missing_shards_and_images(tmp_path):
  with pytest.raises(batch_prediction.JournalError,
                     match="no shard journals"):
    batch_prediction.merge(str(tmp_path))
  _write_shards(tmp_path, 11, 3, skip={4, 7})
  os.remove(tmp_path / "detections-00002-of-00003.jsonl")
  with pytest.raises(batch_prediction.JournalError) as info:
    batch_prediction.merge(str(tmp_path))
  assert "shards 2 of 3 have no journal" in str(info.value)
  _write_shards(tmp_path, 11, 3, skip={4, 7})  # Shard 2 run; 4, 7 failed.
  with pytest.raises(batch_prediction.JournalError) as info:
    batch_prediction.merge(str(tmp_path))
  message = str(info.value)
  assert "detections-00001-of-00003.jsonl lacks 2 of its 4 images" in message
  assert "image ids 4, 7" in message and "rerun shard 1" in message
  assert "00000-of" not in message and "00002-of" not in message
  assert not os.path.exists(tmp_path / "detections.json")


def test_merge_refuses_shards_of_different_runs_and_duplicates(tmp_path):
  _write_shards(tmp_path, 6, 2)
  # Shard 1 of a run over another list, in the same folder.
  os.remove(tmp_path / "detections-00001-of-00002.jsonl")
  with batch_prediction.Journal(str(tmp_path), _header(7, 2, 1)) as journal:
    journal.append(1, "images/1.png", "1.png", [])
  with pytest.raises(batch_prediction.JournalError,
                     match="of another run .*num_images"):
    batch_prediction.merge(str(tmp_path))
  # A shard's image twice (the shard run twice at once).
  os.remove(tmp_path / "detections-00001-of-00002.jsonl")
  _write_shards(tmp_path, 6, 2)
  with open(tmp_path / "detections-00001-of-00002.jsonl", "a") as f:
    f.write(json.dumps({"image_id": 3, "path": "images/3.png",
                        "picture": "3.png", "entries": []}) + "\n")
  with pytest.raises(batch_prediction.JournalError,
                     match="more than once \\(ids 3\\)"):
    batch_prediction.merge(str(tmp_path))
  # Journals of a 3-shard run beside them.
  _write_shards(tmp_path, 6, 3)
  with pytest.raises(batch_prediction.JournalError,
                     match="different --num_shards \\(2, 3\\)"):
    batch_prediction.merge(str(tmp_path))


# --- Progress and prefetching ---------------------------------------------


class _Clock:

  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


def test_progress_lines_count_resumed_images_and_rate_this_runs():
  clock = _Clock()
  # 100 images, 40 done by an earlier run.
  progress = batch_prediction.Progress(100, skipped=40, clock=clock)
  clock.now += 5.0  # The first image of this run took 5 s.
  assert progress.line("a/x.jpg", 3, "out/x.png") == (
      "[41/100] a/x.jpg: 3 detections -> out/x.png | 0.2 images/s | "
      "ETA 4m55s")  # 59 images at 5 s.
  clock.now += 1.0
  progress.step()  # A failed image counts too.
  clock.now += 4.0  # 3 images in 10 s; 57 left at 0.3 images/s.
  assert progress.line("b.png", 0, "out/b.png") == (
      "[43/100] b.png: 0 detections -> out/b.png | 0.3 images/s | "
      "ETA 3m10s")
  progress = batch_prediction.Progress(10_000, clock=clock)
  clock.now += 2.0
  assert progress.line("c.png", 1, "c.png").endswith(
      "[1/10000] c.png: 1 detections -> c.png | 0.5 images/s | "
      "ETA 5h33m18s")  # 9999 images at 2 s.
  clock.now += 0.25
  progress = batch_prediction.Progress(2, skipped=1, clock=clock)
  clock.now += 0.125
  assert progress.line("d.png", 1, "d.png") == (
      "[2/2] d.png: 1 detections -> d.png | 8.0 images/s | ETA 0m00s")


def test_prefetch_keeps_order_passes_errors_and_stays_two_ahead():
  started, lock = [], threading.Lock()

  def load(k):
    with lock:
      started.append(k)
    if k == 3:
      raise ValueError("image 3 is bad")
    return k * 10

  seen = []
  for k, future in batch_prediction.prefetch(range(8), load, ahead=2):
    if k == 0:  # The next two are decoded while item 0 is worked on...
      deadline = time.monotonic() + 10
      while len(started) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
      time.sleep(0.05)
    with lock:  # ... and never more than two.
      assert max(started) <= k + 2, (k, started)
    if k == 3:
      with pytest.raises(ValueError, match="image 3 is bad"):
        future.result()
    else:
      seen.append(future.result())
    if k == 0:
      assert sorted(started) == [0, 1, 2]
  assert seen == [0, 10, 20, 40, 50, 60, 70]
  assert sorted(started) == list(range(8))


def test_prefetch_stops_when_the_loop_is_left():
  started = []
  for k, _ in batch_prediction.prefetch(range(100), started.append):
    if k == 1:
      break
  assert len(started) <= 4  # Items 0, 1 and up to two ahead.


# --- scripts/predict.py end to end ----------------------------------------

NUM_IMAGES = 12


@pytest.fixture(scope="module")
def tiny_model(shapes_records, tmp_path_factory):
  """A random tiny shapes model's checkpoint and predict.py's flags for it
  (every window a detection: 3 per image), over 12 images and an
  unreadable file, the last of the list."""
  root = tmp_path_factory.mktemp("batch_prediction")
  params = tiny_experiment.tiny_shapes_experiment(shapes_records)
  tf.random.set_seed(3)
  model = tiny_experiment.build_model(params)
  checkpoint = tf.train.Checkpoint(model=model).save(str(root / "ckpt"))
  images = root / "images"
  images.mkdir()
  rng = np.random.RandomState(0)
  for k in range(NUM_IMAGES):
    pixels = rng.randint(0, 256, (96, 128, 3)).astype(np.uint8)
    pixels[20:60, 30:90] = rng.randint(0, 256, 3)
    if k == 5:  # Turned a quarter by its EXIF: predicted 128 x 96.
      exif = Image.Exif()
      exif[0x0112] = 6
      Image.fromarray(pixels).save(images / f"img{k:02d}.jpg", exif=exif)
    else:
      Image.fromarray(pixels).save(images / f"img{k:02d}.png")
  (images / "zz_unreadable.jpg").write_bytes(b"")
  override = tiny_experiment.params_override_string(
      shapes_records, "task.model.detection_generator.score_threshold=0.0,"
      "task.model.detection_generator.max_detections=3")
  model_flags = [f"--checkpoint={checkpoint}",
                 "--experiment=tensormask_shapes",
                 f"--params_override={override}", "--min_score=0"]
  paths = sorted(str(p) for p in images.glob("*.png")) + sorted(
      str(p) for p in images.glob("*.jpg"))
  assert paths[-1].endswith("zz_unreadable.jpg")
  return {"flags": model_flags + [f"--image={images}/*.png",
                                  f"--image={images}/*.jpg"],
          # The same images without the unreadable one.
          "good_flags": model_flags + [f"--image={images}/*.png",
                                       f"--image={images}/img*.jpg"],
          "paths": paths}


def _predict(flags, output_dir, *extra) -> list[str]:
  return [sys.executable, os.path.join(REPO, "scripts", "predict.py"),
          *flags, f"--output_dir={output_dir}", *extra]


def _merge(output_dir) -> list[str]:
  return [sys.executable, os.path.join(REPO, "scripts",
                                       "merge_predictions.py"),
          f"--output_dir={output_dir}"]


def _run(command, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run(command, capture_output=True, text=True,
                        timeout=timeout, check=False)


def _records(path) -> list[dict]:
  return _journal_lines(path)[1:]


def _load(path):
  with open(path) as f:
    return json.load(f)


def test_predict_script_killed_and_resumed_equals_one_run_and_shards_merge(
    tiny_model, tmp_path):
  paths = tiny_model["paths"]
  bad = len(paths) - 1
  # The references, side by side: one uninterrupted run, and two shards
  # of the good images.
  reference = subprocess.Popen(
      _predict(tiny_model["flags"], tmp_path / "whole"), text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  shards = [subprocess.Popen(
      _predict(tiny_model["good_flags"], tmp_path / "shards",
               "--num_shards=2", f"--shard_index={i}"), text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]

  # Killed once a few images are done.
  out = tmp_path / "resumed"
  journal = out / "detections.jsonl"
  killed = subprocess.Popen(_predict(tiny_model["flags"], out),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and killed.poll() is None:
    if journal.exists() and journal.read_bytes().count(b"\n") >= 4:
      break  # The header and 3 images.
    time.sleep(0.005)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  done_before = {r["image_id"] for r in _records(journal)}
  assert 3 <= len(done_before) < NUM_IMAGES, (
      f"{len(done_before)} images were done when the run was killed")
  # As if it was killed mid-line as well.
  with open(journal, "ab") as f:
    f.write(b'{"image_id": 11, "path": "' + paths[11].encode())

  rerun = _run(_predict(tiny_model["flags"], out))
  assert rerun.returncode == 1, rerun.stderr[-3000:]
  # It went on with the rest, and tried the unreadable file again.
  assert (f"resuming: {len(done_before)} of {len(paths)} images are done"
          in rerun.stdout)
  lines = [x for x in rerun.stdout.splitlines() if x.startswith("[")]
  assert len(lines) == NUM_IMAGES - len(done_before), rerun.stdout
  assert lines[-1].startswith(f"[{len(paths) - 1}/{len(paths)}] ")
  assert "images/s | ETA " in lines[0]
  assert "zz_unreadable.jpg: the file is empty" in rerun.stderr
  assert (f"1 of {len(paths) - len(done_before)} images could not be read "
          "or run" in rerun.stderr)

  # Every image in the journal and in the pictures once; none of the
  # unreadable one.
  ids = [r["image_id"] for r in _records(journal)]
  assert sorted(ids) == list(range(NUM_IMAGES))
  assert [r["path"] for r in _records(journal)] == [paths[k] for k in ids]
  pictures = sorted(p for p in os.listdir(out) if p.endswith(".png"))
  assert pictures == sorted(r["picture"] for r in _records(journal))
  assert len(pictures) == NUM_IMAGES

  _, stderr = reference.communicate(timeout=300)
  assert reference.returncode == 1, stderr[-3000:]
  assert "zz_unreadable.jpg: the file is empty" in stderr
  whole = _load(tmp_path / "whole" / "detections.json")
  assert _load(out / "detections.json") == whole
  # 3 entries of every good image, in image order; the turned one as
  # shown.
  assert [e["image_id"] for e in whole] == [
      k for k in range(NUM_IMAGES) for _ in range(3)]
  turned = [e for e in whole if e["file_name"] == "img05.jpg"]
  assert turned and all(e["segmentation"]["size"] == [128, 96]
                        for e in turned)

  for shard in shards:
    _, stderr = shard.communicate(timeout=300)
    assert shard.returncode == 0, stderr[-3000:]
  for i in range(2):
    assert os.path.exists(tmp_path / "shards" /
                          f"detections-0000{i}-of-00002.json")
  result = _run(_merge(tmp_path / "shards"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert _load(tmp_path / "shards" / "detections.json") == whole
  assert f"2 shards, {NUM_IMAGES} images, {3 * NUM_IMAGES} detections" in (
      result.stdout)


def test_predict_script_refuses_bad_shards_and_another_runs_folder(
    tiny_model, tmp_path):
  result = _run(_predict(tiny_model["flags"], tmp_path, "--num_shards=2",
                         "--shard_index=2"))
  assert result.returncode == 1
  assert "predict.py: error: --shard_index=2 must be in 0..1" in (
      result.stderr)
  with batch_prediction.Journal(str(tmp_path), _header()) as journal:
    journal.append(0, "images/0.png", "0.png", [])
  result = _run(_predict(tiny_model["flags"], tmp_path))
  assert result.returncode == 1
  assert "detections.jsonl was written by another run" in result.stderr


def test_merge_script_names_what_is_missing(tmp_path):
  result = _run(_merge(tmp_path))
  assert result.returncode == 1
  assert "has no shard journals" in result.stderr
  _write_shards(tmp_path, 5, 2, skip={3})
  result = _run(_merge(tmp_path))
  assert result.returncode == 1
  assert ("detections-00001-of-00002.jsonl lacks 1 of its 2 images "
          "(image ids 3;") in result.stderr
  assert not os.path.exists(tmp_path / "detections.json")
