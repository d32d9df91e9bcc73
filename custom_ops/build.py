"""Builds the swap_align2nat custom-op library for the installed TensorFlow.

    python custom_ops/build.py [--cuda auto|on|off] [--force] [--record_only]

Compiles `custom_ops/kernels/` with g++ and TensorFlow's own flags
(`tf.sysconfig`), plus the CUDA kernels with nvcc when nvcc is found (or
`--cuda on`; the environment variable TENSORMASK_BUILD_CUDA=auto|on|off sets
the default), into `tensormask_tf/ops/_swap_align2nat_ops.so`. A JSON record
beside it (TF version, ABI flags and linked libraries without their
directories, machine, CPU features, source digest) lets the loader refuse a
stale or mismatched library, and keeps one built in the same environment
reached through another path (a symlinked or moved venv). An up-to-date
library (by the loader's own check) is not rebuilt unless `--force`.
`--record_only` writes the record for a library built some other way (Bazel,
see BUILD) without compiling. Exits non-zero, with the compiler's message,
on failure.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tensormask_tf  # noqa: E402,F401  (TF log level before TF loads)
import tensorflow as tf  # noqa: E402

from tensormask_tf.ops import custom_op_library  # noqa: E402

KERNELS = ROOT / "custom_ops" / "kernels"
# Compiled by nvcc, one object each, linked into the op library.
CUDA_SOURCES = ("swap_align2nat_cuda.cu.cc",
                "project_swap_align2nat_cuda.cu.cc",
                "up_align2nat_cuda.cu.cc")
# The op definitions and CPU kernels, compiled by the host compiler.
CXX_SOURCES = ("swap_align2nat_ops.cc", "up_align2nat_ops.cc")
# x86-64-v3 (AVX2 + FMA) when the building CPU has it; recorded, and checked
# by the loader, so the library never runs on a CPU without them.
_ISA = {"avx2": "-mavx2", "fma": "-mfma"}
CUDA_ARCHS = ("-gencode", "arch=compute_80,code=sm_80",
              "-gencode", "arch=compute_90,code=sm_90",
              "-gencode", "arch=compute_90,code=compute_90")


def _run(cmd: list[str]) -> None:
  print("[build] " + " ".join(cmd), flush=True)
  result = subprocess.run(cmd, capture_output=True, text=True)
  if result.returncode != 0:
    sys.stderr.write(result.stdout + result.stderr)
    raise SystemExit(f"[build] FAILED: {cmd[0]} exited {result.returncode}")


def _cuda_home(nvcc: str) -> pathlib.Path:
  """The CUDA toolkit's root: CUDA_HOME / CUDA_PATH, nvcc's, /usr/local/cuda."""
  candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                pathlib.Path(os.path.realpath(nvcc)).parents[1],
                "/usr/local/cuda"]
  for home in candidates:
    if home and (pathlib.Path(home) / "include" / "cuda_runtime.h").exists():
      return pathlib.Path(home)
  raise SystemExit(
      f"[build] nvcc is {nvcc}, but no CUDA toolkit with "
      "include/cuda_runtime.h was found; set CUDA_HOME, or build without the "
      "CUDA kernels with --cuda off")


def build(cuda: str = "auto", force: bool = False) -> pathlib.Path:
  """Builds the library if missing or stale; returns its path."""
  out = custom_op_library.LIBRARY_PATH
  manifest_path = custom_op_library.MANIFEST_PATH
  nvcc = shutil.which("nvcc")
  if cuda == "on" and nvcc is None:
    raise SystemExit("[build] --cuda on, but nvcc is not on PATH")
  with_cuda = cuda == "on" or (cuda == "auto" and nvcc is not None)

  if not force and out.exists() and manifest_path.exists():
    try:
      manifest = json.loads(manifest_path.read_text())
    except ValueError:  # An interrupted build's record: build again.
      manifest = {}
    # (auto: a CPU-only library that this nvcc already failed to improve on.)
    cuda_as_wanted = manifest.get("cuda") == with_cuda or (
        cuda == "auto" and manifest.get("cuda_failed_with") == nvcc)
    if (manifest and custom_op_library.staleness(manifest) is None and
        cuda_as_wanted):
      print(f"[build] {out} is up to date", flush=True)
      return out

  if with_cuda and cuda == "auto":
    try:
      return _compile(out, nvcc)
    except SystemExit as e:  # nvcc's message is above.
      print(f"[build] the CUDA kernels did not compile ({e}); building the "
            "CPU-only library instead (--cuda on makes this an error)",
            flush=True)
      return _compile(out, None, {"cuda_failed_with": nvcc})
  return _compile(out, nvcc if with_cuda else None)


def _compile(out: pathlib.Path, nvcc: str | None,
             record: dict | None = None) -> pathlib.Path:
  """Compiles the library (with the CUDA kernels when nvcc is given)."""
  with_cuda = nvcc is not None
  cpu_flags = [f for f in _ISA if custom_op_library.cpu_supports([f])]
  cxx = os.environ.get("CXX", "g++")
  cxx_flags = ["-std=c++17", "-shared", "-fPIC", "-O3",
               *[_ISA[f] for f in cpu_flags],
               *tf.sysconfig.get_compile_flags(), f"-I{KERNELS}"]
  link_flags = list(tf.sysconfig.get_link_flags())
  objects = []
  with tempfile.TemporaryDirectory() as tmp:
    if with_cuda:
      cuda_home = _cuda_home(nvcc)
      for source in CUDA_SOURCES:
        cuda_object = pathlib.Path(tmp) / (source.split(".")[0] + ".o")
        _run([nvcc, "-std=c++17", "-O3", "-Xcompiler", "-fPIC",
              "--expt-relaxed-constexpr", *CUDA_ARCHS, f"-I{KERNELS}", "-x",
              "cu", "-c", str(KERNELS / source), "-o", str(cuda_object)])
        objects.append(str(cuda_object))
      cxx_flags += ["-DGOOGLE_CUDA=1", f"-I{cuda_home / 'include'}"]
      # Static cudart: the library needs no libcudart at load time, so the
      # same build also loads on machines without CUDA.
      link_flags += [f"-L{cuda_home / 'lib64'}", "-lcudart_static",
                     "-ldl", "-lrt", "-lpthread"]
    tmp_library = pathlib.Path(tmp) / out.name
    _run([cxx, *cxx_flags, *(str(KERNELS / source) for source in CXX_SOURCES),
          *objects,
          "-o", str(tmp_library), *link_flags])
    # Replaced, not rewritten: a process that has the old one loaded keeps
    # its copy.
    shutil.copyfile(tmp_library, out.with_suffix(".so.tmp"))
    os.replace(out.with_suffix(".so.tmp"), out)

  write_record(with_cuda, cpu_flags, {"compiler": cxx, "cxx_flags": cxx_flags,
                                      **(record or {})})
  print(f"[build] wrote {out} (cuda={'on' if with_cuda else 'off'})",
        flush=True)
  return out


def write_record(with_cuda: bool, cpu_flags: list[str], extra: dict) -> None:
  """Writes the record the loader checks before loading the library."""
  # The compared part is custom_op_library.build_record(), the one the loader
  # (and build()'s up-to-date check, through staleness) compares it with.
  manifest = {**custom_op_library.build_record(),
              "cpu_flags": cpu_flags, "cuda": with_cuda, **extra}
  path = custom_op_library.MANIFEST_PATH
  # Written whole or not at all (the loader refuses an unreadable record).
  path.with_suffix(".json.tmp").write_text(json.dumps(manifest, indent=1))
  os.replace(path.with_suffix(".json.tmp"), path)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--cuda", choices=("auto", "on", "off"),
      default=os.environ.get("TENSORMASK_BUILD_CUDA", "auto"),
      help="build the CUDA kernels: auto = when nvcc is on PATH")
  parser.add_argument("--force", action="store_true",
                      help="rebuild even if the library is up to date")
  parser.add_argument(
      "--record_only", action="store_true",
      help="only record an existing library (built with Bazel) as built for "
           "this TensorFlow and these sources; --cuda on if it has CUDA")
  args = parser.parse_args()
  if args.cuda not in ("auto", "on", "off"):  # A default is not checked.
    parser.error(f"TENSORMASK_BUILD_CUDA must be auto, on or off, got "
                 f"{args.cuda!r}")
  if args.record_only:
    if not custom_op_library.LIBRARY_PATH.exists():
      raise SystemExit(f"[build] no library at {custom_op_library.LIBRARY_PATH}")
    write_record(args.cuda == "on", [], {"compiler": "external"})
    print(f"[build] recorded {custom_op_library.LIBRARY_PATH}", flush=True)
    return
  build(cuda=args.cuda, force=args.force)


if __name__ == "__main__":
  main()
