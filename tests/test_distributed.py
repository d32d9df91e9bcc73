"""Training under tf.distribute equals training on one device (issue 5).

Each check runs in fresh processes: logical CPU devices and TF_CONFIG are
fixed when TensorFlow starts.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.join(os.path.dirname(__file__), "..")


def _worker(mode: str, records: dict, out: str, env=None):
  return subprocess.Popen(
      [sys.executable, "-m", "tests.distributed_worker", f"--mode={mode}",
       f"--records={json.dumps(records)}", f"--out={out}"],
      cwd=REPO, env={**os.environ, "PYTHONPATH": REPO, **(env or {})},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(process, timeout=600):
  _, stderr = process.communicate(timeout=timeout)
  assert process.returncode == 0, stderr[-4000:]


def test_mirrored_step_equals_the_single_device_step(shapes_records, tmp_path):
  out = str(tmp_path / "mirrored.npz")
  _wait(_worker("mirrored", shapes_records, out))
  result = np.load(out)
  assert int(result["single_replicas"]) == 1
  assert int(result["mirrored_replicas"]) == 2
  for name in ("total_loss", "class_loss", "box_loss", "mask_loss"):
    np.testing.assert_allclose(result[f"mirrored_{name}"],
                               result[f"single_{name}"], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  weights = sorted(k[len("single_"):] for k in result.files
                   if k.startswith("single_w:"))
  assert len(weights) > 50
  moved = 0
  for key in weights:
    single, mirrored = result[f"single_{key}"], result[f"mirrored_{key}"]
    initial = result[f"initial_{key}"]
    # The two runs sum the same float32 terms in different orders (two
    # replicas' gradients all-reduced vs one batch), and synchronized batch
    # norm's backward subtracts means, so single elements of an update can
    # differ by a few percent of the tensor's largest update (seen up to
    # 3.4%, ~1.7e-5 here); a replica-scaling or all-reduce bug moves them
    # by 50-100%.
    scale = float(np.abs(single - initial).max())
    np.testing.assert_allclose(mirrored, single, rtol=1e-5,
                               atol=1e-5 + 0.1 * scale, err_msg=key)
    moved += not np.array_equal(single, initial)
  assert moved > len(weights) // 2


def _free_ports(count: int) -> list[int]:
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.mark.slow
def test_multi_worker_mirrored_workers_end_with_identical_weights(
    shapes_records, tmp_path):
  workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
  processes = []
  for index in range(2):
    config = {"cluster": {"worker": workers},
              "task": {"type": "worker", "index": index}}
    processes.append(_worker("multi_worker", shapes_records,
                             str(tmp_path / f"worker{index}.npz"),
                             env={"TF_CONFIG": json.dumps(config)}))
  for process in processes:
    _wait(process, timeout=900)
  first, second = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
  assert int(first["replicas"]) == int(second["replicas"]) == 2
  weights = [k for k in first.files if k.startswith("w:")]
  assert len(weights) > 50
  for key in weights:
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)
