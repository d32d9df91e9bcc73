"""The CUDA kernels of swap_align2nat, project_swap_align2nat_gather and
up_align2nat, without TensorFlow.

(a) The kernels, and the standalone harness's sources (its extern "C" shim
    and the original-style baseline it times against), compile with nvcc for
    Ampere and Hopper (skipped, with the reason, only where nvcc is absent).
(b) On a GPU (marker `gpu`): custom_ops/cuda_test/run_cuda_kernels.py checks
    all four swap_align2nat launchers against the numpy reference on the
    foundation cases, and run_projection_kernels.py both launchers of the
    fused op (both forward paths) against a numpy projection and the
    reference (NaN-poisoned outputs, bit-reproducible gradients), and
    run_up_align2nat_kernels.py the four up_align2nat launchers (integer and
    fractional lam) against the reference and its Jacobian; each must exit 0.
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "custom_ops", "kernels")
CUDA_TEST = os.path.join(ROOT, "custom_ops", "cuda_test")
RUNNERS = ["run_cuda_kernels.py", "run_projection_kernels.py",
           "run_up_align2nat_kernels.py"]
# *.cu.cc is CUDA only with -x cu (nvcc would hand a .cc to the host compiler).
NVCC_FLAGS = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC",
              "--expt-relaxed-constexpr",
              "-gencode", "arch=compute_80,code=sm_80",
              "-gencode", "arch=compute_90,code=sm_90",
              "-gencode", "arch=compute_90,code=compute_90", "-x", "cu"]


@pytest.mark.parametrize("source", [
    os.path.join(KERNELS, "swap_align2nat_cuda.cu.cc"),
    os.path.join(KERNELS, "project_swap_align2nat_cuda.cu.cc"),
    os.path.join(KERNELS, "up_align2nat_cuda.cu.cc"),
    os.path.join(CUDA_TEST, "standalone.cu"),
    os.path.join(CUDA_TEST, "up_standalone.cu"),
    os.path.join(CUDA_TEST, "naive_baseline.cu"),
], ids=["kernels", "projection_kernels", "up_kernels", "standalone_shim",
        "up_standalone_shim", "original_style_baseline"])
def test_cuda_sources_compile(tmp_path, source):
  nvcc = shutil.which("nvcc")
  if nvcc is None:
    pytest.skip("nvcc is not on PATH: the CUDA kernels cannot be compiled")
  out = tmp_path / "out.o"
  result = subprocess.run([nvcc, *NVCC_FLAGS, "-c", source, "-o", str(out)],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  assert out.stat().st_size > 0
  assert "warning" not in result.stderr.lower(), result.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("runner", RUNNERS)
def test_cuda_kernels_match_reference(tmp_path, runner):
  result = subprocess.run(
      [sys.executable, os.path.join(CUDA_TEST, runner), "--build_dir",
       str(tmp_path), "--skip_timing"],
      capture_output=True, text=True, check=False, cwd=ROOT)
  assert result.returncode == 0, (result.stdout[-6000:] +
                                  result.stderr[-6000:])
