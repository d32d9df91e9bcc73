"""Prediction over many images: a journal to resume from, shards, progress.

`scripts/predict.py` writes one JSON line per finished image into a
journal, `<output_dir>/detections.jsonl` (shard i of N > 1:
`detections-0000i-of-0000N.jsonl`), appended and fsynced after the image's
picture is written. A killed run loses at most the image it was on: its
rerun reads the journal, drops a torn last line and skips the images in
it. The results file (`detections.json`, or the shard's `.json`) is then
written by streaming the journal in image order, and
`scripts/merge_predictions.py` joins the shards' journals.

The journal's first line is a header:
  {"journal": "tensormask_tf predictions", "num_images": T,
   "num_shards": N, "shard_index": i, "paths_sha256": ..., "min_score": s}
(T: the images of the whole sorted --image list, over all shards; the
digest of that list), and each further line one image:
  {"image_id": k, "path": ..., "picture": <file name in output_dir>,
   "entries": [COCO results entries]}
where k is the image's index in the whole list, so ids are the same in
every shard and every resumed run.
"""

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Any, BinaryIO, TypeVar

import numpy as np
from PIL import Image

JOURNAL_KIND = "tensormask_tf predictions"
_SHARD_JOURNAL = re.compile(r"detections-(\d{5,})-of-(\d{5,})\.jsonl")
# Header fields a resumed run, and every shard of one merge, must share.
_RUN_FIELDS = ("num_images", "paths_sha256", "min_score")

_T = TypeVar("_T")
_R = TypeVar("_R")


class JournalError(ValueError):
  """A journal is damaged, belongs to another run, or is incomplete."""


def check_shard(num_shards: int, shard_index: int) -> None:
  """Raises ValueError unless 0 <= shard_index < num_shards."""
  if num_shards < 1:
    raise ValueError(f"--num_shards={num_shards} must be at least 1")
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"--shard_index={shard_index} must be in 0.."
                     f"{num_shards - 1} (--num_shards={num_shards})")


def shard_ids(num_images: int, num_shards: int,
              shard_index: int) -> list[int]:
  """The indices in 0..num_images-1 shard `shard_index` of `num_shards`
  takes: those with index % num_shards == shard_index (round robin, so
  shards of a sorted list get alike images and alike sizes)."""
  check_shard(num_shards, shard_index)
  return list(range(shard_index, num_images, num_shards))


def file_stem(num_shards: int, shard_index: int) -> str:
  """"detections", or "detections-00002-of-00008" for shard 2 of 8 (so
  shards share an output folder)."""
  if num_shards == 1:
    return "detections"
  return f"detections-{shard_index:05d}-of-{num_shards:05d}"


def paths_digest(paths: Sequence[str]) -> str:
  """SHA-256 of the image list (the paths as given, in order): a journal
  resumed or merged with another list would give its ids other images."""
  digest = hashlib.sha256()
  for path in paths:
    digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
  return digest.hexdigest()


def header(paths: Sequence[str], num_shards: int, shard_index: int,
           min_score: float) -> dict[str, Any]:
  """The journal's first line for shard `shard_index` of the whole list
  `paths`."""
  return {"journal": JOURNAL_KIND, "num_images": len(paths),
          "num_shards": num_shards, "shard_index": shard_index,
          "paths_sha256": paths_digest(paths), "min_score": min_score}


@dataclasses.dataclass(frozen=True)
class Record:
  """An image in a journal: where its line starts (bytes), its path,
  picture file name and number of COCO entries."""
  offset: int
  path: str
  picture: str
  num_entries: int


@dataclasses.dataclass
class Contents:
  """What `read_journal` found.

  header: the first line (None for an empty file).
  records: {image id: Record}, the first line of each image.
  duplicates: {image id: lines} of images with more than one line.
  complete_bytes: the length of the file's complete lines (a torn last
    line, without its newline, starts there).
  """
  header: dict[str, Any] | None
  records: dict[int, Record]
  duplicates: dict[int, int]
  complete_bytes: int


def read_journal(path: str) -> Contents:
  """The journal's header and images, a torn last line left out (its
  writer was killed mid-line: that image is not done).

  Raises:
    JournalError: a complete line that is not a journal line (the file
      is damaged or not a journal), naming the file and line.
  """
  records, counts = {}, collections.Counter()
  head, complete = None, 0
  with open(path, "rb") as f:
    for number, line in enumerate(f, 1):
      if not line.endswith(b"\n"):
        break  # Torn: the last line, cut short.
      try:
        value = json.loads(line)
        if number == 1:
          if value.get("journal") != JOURNAL_KIND:
            raise ValueError(f"its header is not a {JOURNAL_KIND!r} one")
          head = value
        else:
          image_id = int(value["image_id"])
          counts[image_id] += 1
          if image_id not in records:
            records[image_id] = Record(complete, str(value["path"]),
                                       str(value["picture"]),
                                       len(value["entries"]))
      except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise JournalError(f"{path}: line {number} is not a journal line "
                           f"({e}); the file is damaged") from e
      complete += len(line)
  return Contents(head, records,
                  {k: n for k, n in counts.items() if n > 1}, complete)


def read_entries(f: BinaryIO, record: Record) -> list[dict]:
  """The COCO entries of `record` from its journal, open in "rb"."""
  f.seek(record.offset)
  return json.loads(f.readline())["entries"]


def write_results(path: str,
                  sources: Iterable[tuple[BinaryIO, Record]]) -> int:
  """Writes the COCO results list `[entry, ...]` of the records in the
  order given, each read from its journal file `f` (open in "rb") as the
  list is written, so only one image's entries are in memory; the same
  text `json.dump` writes of the whole list. Written to a temporary file
  renamed over `path`: a reader never sees it half written. Returns the
  number of entries."""
  count, temporary = 0, f"{path}.tmp"
  with open(temporary, "w") as out:
    out.write("[")
    for f, record in sources:
      for entry in read_entries(f, record):
        out.write((", " if count else "") + json.dumps(entry))
        count += 1
    out.write("]")
  os.replace(temporary, path)
  return count


class Journal:
  """The journal of one shard's run in output_dir, opened to resume.

  `done` ({image id: Record}) holds the images already predicted; `append`
  adds one, durably.
  """

  def __init__(self, output_dir: str, run_header: dict[str, Any]):
    """Opens (or starts) `<output_dir>/<file_stem>.jsonl` for the run that
    `run_header` (`header(...)`) describes, cutting off a torn last line.

    Raises:
      JournalError: the journal is damaged, or was written by a run with
        other images, shards or --min_score (its ids or entries would not
        be this run's).
    """
    self.path = os.path.join(output_dir, file_stem(
        run_header["num_shards"], run_header["shard_index"]) + ".jsonl")
    contents = (read_journal(self.path) if os.path.exists(self.path) else
                Contents(None, {}, {}, 0))
    if contents.header is not None:
      changed = [key for key in run_header
                 if contents.header.get(key) != run_header[key]]
      if changed:
        raise JournalError(
            f"{self.path} was written by another run (its "
            + ", ".join(f"{k}={contents.header.get(k)!r}" for k in changed)
            + "; this run's "
            + ", ".join(f"{k}={run_header[k]!r}" for k in changed)
            + "): give another --output_dir, or delete it to start over")
    self.done = contents.records
    self._file = open(self.path, "ab")
    # A torn line would glue onto the next one: cut it off first.
    self._file.truncate(contents.complete_bytes)
    self._file.seek(0, os.SEEK_END)
    if contents.header is None:
      self._write(run_header)

  def _write(self, value: dict) -> int:
    """Appends one line, on disk when it returns; its offset."""
    offset = self._file.seek(0, os.SEEK_END)
    self._file.write(json.dumps(value).encode("utf-8") + b"\n")
    self._file.flush()
    os.fsync(self._file.fileno())
    return offset

  def append(self, image_id: int, path: str, picture: str,
             entries: list[dict]) -> None:
    """Records image `image_id` as done: call after its picture is
    written, so a recorded image always has one."""
    offset = self._write({"image_id": image_id, "path": path,
                          "picture": picture, "entries": entries})
    self.done[image_id] = Record(offset, path, picture, len(entries))

  def write_results(self, path: str) -> int:
    """Writes the done images' COCO entries to `path` (`write_results`)
    in image id order; returns their number."""
    with open(self.path, "rb") as f:
      return write_results(path, ((f, self.done[k])
                                  for k in sorted(self.done)))

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> "Journal":
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self.close()


def merge(output_dir: str) -> tuple[int, int, int]:
  """Checks that the shards' journals in output_dir are complete and
  writes `<output_dir>/detections.json` with all their entries in image
  id order (as an unsharded run writes it). Returns (shards, images,
  entries).

  Raises:
    JournalError: no shard journals, journals of several runs, a missing
      shard, or a shard without all its images (or with one twice), each
      named.
  """
  if not os.path.isdir(output_dir):
    raise JournalError(f"{output_dir} is not a directory")
  counts = {int(m[2]) for m in map(_SHARD_JOURNAL.fullmatch,
                                   os.listdir(output_dir)) if m}
  if not counts:
    raise JournalError(f"{output_dir} has no shard journals "
                       "(detections-<shard>-of-<shards>.jsonl)")
  if len(counts) > 1:
    raise JournalError(
        f"{output_dir} has the journals of runs with different "
        f"--num_shards ({', '.join(map(str, sorted(counts)))}): merge "
        "each run's in its own folder")
  num_shards = counts.pop()
  paths = [os.path.join(output_dir, file_stem(num_shards, i) + ".jsonl")
           for i in range(num_shards)]
  missing = [i for i, p in enumerate(paths) if not os.path.exists(p)]
  if missing:
    raise JournalError(
        f"{output_dir}: shards {_ranges(missing)} of {num_shards} have no "
        f"journal ({os.path.basename(paths[missing[0]])}...): run them "
        "with --num_shards and --shard_index")
  problems, first, shards = [], None, []
  for index, path in enumerate(paths):
    contents = read_journal(path)
    head = contents.header
    if head is None:
      problems.append(f"{path} is empty (shard {index} never started)")
      continue
    first = first or head
    if (head.get("num_shards"), head.get("shard_index")) != (num_shards,
                                                             index):
      problems.append(f"{path}'s header says shard "
                      f"{head.get('shard_index')} of "
                      f"{head.get('num_shards')}, not {index} of "
                      f"{num_shards}")
      continue
    changed = [k for k in _RUN_FIELDS if head.get(k) != first.get(k)]
    if changed:
      problems.append(f"{path} is of another run than {paths[0]} (its "
                      f"{', '.join(changed)} differ)")
      continue
    expected = shard_ids(head["num_images"], num_shards, index)
    lacking = sorted(set(expected) - set(contents.records))
    stray = sorted(set(contents.records) - set(expected))
    if lacking:
      problems.append(
          f"{path} lacks {len(lacking)} of its {len(expected)} images "
          f"(image ids {_ranges(lacking)}; rerun shard {index} to finish "
          "them, or see its run's errors)")
    if stray:
      problems.append(f"{path} has images of other shards (ids "
                      f"{_ranges(stray)})")
    if contents.duplicates:
      problems.append(f"{path} has images more than once (ids "
                      f"{_ranges(sorted(contents.duplicates))}): was the "
                      "shard run twice at the same time?")
    shards.append(contents.records)
  if problems:
    raise JournalError("cannot merge:\n  " + "\n  ".join(problems))
  files = [open(p, "rb") for p in paths]
  try:
    total = first["num_images"]
    entries = write_results(
        os.path.join(output_dir, "detections.json"),
        ((files[k % num_shards], shards[k % num_shards][k])
         for k in range(total)))
  finally:
    for f in files:
      f.close()
  return num_shards, total, entries


def _ranges(ids: Sequence[int], limit: int = 20) -> str:
  """"3, 7, 11" (the first `limit`, then "... (N in all)")."""
  shown = ", ".join(str(i) for i in ids[:limit])
  return shown if len(ids) <= limit else f"{shown}, ... ({len(ids)} in all)"


class PictureFiles(Sequence):
  """Pictures ([H, W, 3] uint8) read from their files one at a time, as
  `visualization.tile_pictures` reaches them: a long run's pictures need
  not fit in memory together."""

  def __init__(self, paths: Sequence[str]):
    self._paths = list(paths)

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> np.ndarray:
    with Image.open(self._paths[index]) as picture:
      return np.asarray(picture.convert("RGB"))


class Progress:
  """Progress lines of a run over `total` images, `skipped` of them done
  by an earlier run: images/s over this run's images (finished or
  failed), and the ETA of the rest at that rate."""

  def __init__(self, total: int, skipped: int = 0,
               clock: Callable[[], float] = time.monotonic):
    self._total, self._count = total, skipped
    self._ran, self._clock = 0, clock
    self._start = clock()

  def step(self) -> tuple[int, float, float]:
    """Counts one image of this run; (its number in 1..total, images/s,
    seconds left)."""
    self._count += 1
    self._ran += 1
    rate = self._ran / max(self._clock() - self._start, 1e-9)
    return self._count, rate, (self._total - self._count) / rate

  def line(self, path: str, detections: int, picture: str) -> str:
    """`[i/N] path: k detections -> picture | x.x images/s | ETA 1m23s`,
    counting the image."""
    # Imported here: train.py loads TensorFlow, which merging shards (and
    # the rest of this module) does without.
    from tensormask_tf import train  # pylint: disable=g-import-not-at-top
    number, rate, left = self.step()
    # Two significant digits below one a second (a photo with the R50 on
    # a CPU: "0.034 images/s", not "0.0").
    shown = f"{rate:.1f}" if rate >= 1 else f"{rate:.2g}"
    return (f"[{number}/{self._total}] {path}: {detections} detections -> "
            f"{picture} | {shown} images/s | ETA {train.duration(left)}")


def prefetch(items: Iterable[_T], function: Callable[[_T], _R],
             ahead: int = 2
             ) -> Iterator[tuple[_T, concurrent.futures.Future]]:
  """Yields (item, future of function(item)) in order, computing function
  of the next `ahead` items in a background thread while the caller works
  on the current one (decoding images while the model runs; at most
  `ahead` + 1 results held). `future.result()` returns the value or
  raises what function raised. Leaving the loop early cancels the rest.
  """
  if ahead < 1:
    raise ValueError(f"prefetch needs ahead >= 1, got {ahead}")
  iterator = iter(items)
  pending = collections.deque()
  pool = concurrent.futures.ThreadPoolExecutor(1, "prefetch")
  try:
    for item in iterator:
      pending.append((item, pool.submit(function, item)))
      if len(pending) > ahead:
        yield pending.popleft()
    while pending:
      yield pending.popleft()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
