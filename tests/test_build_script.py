"""Tests of custom_ops/build.py's choices, without compiling anything: the
compiler calls are recorded and answered by a stand-in."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf

from tensormask_tf.ops import custom_op_library
from tests import test_custom_op

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def build_module(tmp_path, monkeypatch):
  """custom_ops/build.py as a module whose library and record live in
  tmp_path, with a stand-in for the compilers and an nvcc on PATH."""
  spec = importlib.util.spec_from_file_location(
      "tensormask_build", REPO / "custom_ops" / "build.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  monkeypatch.setattr(custom_op_library, "LIBRARY_PATH",
                      tmp_path / custom_op_library.LIBRARY_PATH.name)
  monkeypatch.setattr(custom_op_library, "MANIFEST_PATH",
                      tmp_path / custom_op_library.MANIFEST_PATH.name)
  monkeypatch.setattr(module.shutil, "which", lambda name: "/opt/cuda/nvcc")
  monkeypatch.setattr(module, "_cuda_home", lambda nvcc: tmp_path)
  calls = []

  def run(cmd):
    calls.append(cmd)
    if module.nvcc_fails and cmd[0].endswith("nvcc"):
      raise SystemExit(f"[build] FAILED: {cmd[0]} exited 1")
    if "-o" in cmd:  # The compiler's output.
      pathlib.Path(cmd[cmd.index("-o") + 1]).write_bytes(b"library")

  monkeypatch.setattr(module, "_run", run)
  module.nvcc_fails = False
  module.calls = calls
  return module


def _record():
  return json.loads(custom_op_library.MANIFEST_PATH.read_text())


def test_auto_builds_the_cpu_library_when_nvcc_fails(build_module):
  build_module.nvcc_fails = True
  build_module.build(cuda="auto")
  linked = build_module.calls[-1]
  assert linked[0] == "g++" and "-DGOOGLE_CUDA=1" not in linked
  assert _record()["cuda"] is False
  assert _record()["cuda_failed_with"] == "/opt/cuda/nvcc"
  # Up to date for auto with the same nvcc: not tried again on every run.
  build_module.calls.clear()
  build_module.build(cuda="auto")
  assert not build_module.calls
  # --cuda on makes the failure an error.
  with pytest.raises(SystemExit, match="FAILED"):
    build_module.build(cuda="on", force=True)


def test_auto_links_the_cuda_kernels_when_nvcc_works(build_module):
  build_module.build(cuda="auto")
  # One nvcc call per CUDA source (swap_align2nat, the fused projection,
  # up_align2nat), then the host compiler over the op files and objects.
  assert [c[0] for c in build_module.calls] == ["/opt/cuda/nvcc"] * 3 + ["g++"]
  assert [c[-3].rsplit("/", 1)[-1] for c in build_module.calls[:3]] == [
      "swap_align2nat_cuda.cu.cc", "project_swap_align2nat_cuda.cu.cc",
      "up_align2nat_cuda.cu.cc"]
  assert "-DGOOGLE_CUDA=1" in build_module.calls[-1]
  assert sum(arg.endswith("_ops.cc") for arg in build_module.calls[-1]) == 2
  assert _record()["cuda"] is True
  assert custom_op_library.LIBRARY_PATH.read_bytes() == b"library"


def test_an_unreadable_record_is_rebuilt(build_module):
  custom_op_library.LIBRARY_PATH.write_bytes(b"old")
  custom_op_library.MANIFEST_PATH.write_text("{")
  build_module.build(cuda="off")
  assert custom_op_library.LIBRARY_PATH.read_bytes() == b"library"
  assert _record()["cuda"] is False


def test_a_bad_cuda_setting_in_the_environment_is_refused():
  result = subprocess.run(
      [sys.executable, str(REPO / "custom_ops" / "build.py")],
      env={**os.environ, "TENSORMASK_BUILD_CUDA": "yes"}, capture_output=True,
      text=True, timeout=300, check=False)
  assert result.returncode == 2
  assert "TENSORMASK_BUILD_CUDA must be auto, on or off, got 'yes'" in (
      result.stderr)


def test_a_record_of_the_former_format_is_rebuilt(build_module):
  custom_op_library.LIBRARY_PATH.write_bytes(b"old")
  custom_op_library.MANIFEST_PATH.write_text(
      test_custom_op.former_format_record())
  build_module.build(cuda="off")
  assert custom_op_library.LIBRARY_PATH.read_bytes() == b"library"
  assert custom_op_library.staleness(_record()) is None


def test_up_to_date_through_another_path_rebuilt_for_another_abi(
    build_module, monkeypatch, tmp_path):
  site_packages = os.path.dirname(tf.sysconfig.get_lib())
  compile_flags = tf.sysconfig.get_compile_flags()
  link_flags = tf.sysconfig.get_link_flags()
  link = tmp_path / "venv-link"
  link.symlink_to(site_packages, target_is_directory=True)
  through_link = lambda flags: [f.replace(site_packages, str(link))
                                for f in flags]
  assert through_link(compile_flags) != compile_flags
  with monkeypatch.context() as elsewhere:  # Built through the symlink.
    elsewhere.setattr(tf.sysconfig, "get_compile_flags",
                      lambda: through_link(compile_flags))
    elsewhere.setattr(tf.sysconfig, "get_link_flags",
                      lambda: through_link(link_flags))
    build_module.build(cuda="off")
    assert f"-I{link}" in " ".join(build_module.calls[-1])
  # Up to date through the real path: the same environment.
  build_module.calls.clear()
  build_module.build(cuda="off")
  assert not build_module.calls
  # Not for another C++ ABI.
  other_abi = [f.replace("_GLIBCXX_USE_CXX11_ABI=1", "_GLIBCXX_USE_CXX11_ABI=0")
               for f in compile_flags]
  assert other_abi != compile_flags
  monkeypatch.setattr(tf.sysconfig, "get_compile_flags", lambda: other_abi)
  build_module.build(cuda="off")
  assert "-D_GLIBCXX_USE_CXX11_ABI=0" in build_module.calls[-1]
  assert custom_op_library.staleness(_record()) is None
