"""Loading the compiled custom ops (swap_align2nat, up_align2nat and the
fused projection) and registering their gradients.

The library `_swap_align2nat_ops.so` is built next to this file by
`custom_ops/build.py` (run by `pip install`, `scripts/venv.sh`, or by hand)
for the installed TensorFlow. Beside it, `_swap_align2nat_ops.json` records
what it was built for; a library whose record does not match the running
TensorFlow (its version, its ABI flags, the libraries it links), the machine,
the CPU, or (in a source checkout) the kernel sources is refused with a
message that says why and how to rebuild, never loaded. Directories (`-I`,
`-L`) are not compared: the same environment reached through another path (a
symlinked or moved venv) keeps its library.
"""

import functools
import hashlib
import json
import pathlib
import platform

import tensorflow as tf

LIBRARY_PATH = pathlib.Path(__file__).with_name("_swap_align2nat_ops.so")
MANIFEST_PATH = LIBRARY_PATH.with_suffix(".json")
KERNEL_DIR = pathlib.Path(__file__).resolve().parents[2] / "custom_ops" / "kernels"
# In a source checkout build.py writes the library beside this file; an
# installed copy gets its library from the install.
REBUILD_HINT = (
    "rebuild it with `python custom_ops/build.py`" if KERNEL_DIR.is_dir() else
    "reinstall tensormask-tf from its source checkout with `pip install "
    "--no-build-isolation .` once TensorFlow is installed (or install it "
    "with `pip install -e .` and run `python custom_ops/build.py`)")


class CustomOpUnavailable(RuntimeError):
  """The compiled library is missing, stale, or failed to load."""


def sources_digest(kernel_dir: pathlib.Path = KERNEL_DIR) -> str | None:
  """sha256 over the kernel sources, or None outside a source checkout."""
  files = sorted(p for p in kernel_dir.glob("*") if p.suffix in (".h", ".cc"))
  if not files:
    return None
  digest = hashlib.sha256()
  for path in files:
    digest.update(path.name.encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()


def cpu_supports(isa_flags: list[str]) -> bool:
  """Whether this CPU has every instruction set the library was built for."""
  if not isa_flags:
    return True
  try:
    cpuinfo = pathlib.Path("/proc/cpuinfo").read_text().split()
  except OSError:
    return False
  return all(flag in cpuinfo for flag in isa_flags)


# Bumped when the record's keys change: a record of another format is refused
# (with the rebuild hint), never half-compared.
RECORD_FORMAT = 2
# Flags that name a directory, attached (-I/x) or as the next argument (-I /x).
_COMPILE_PATH_FLAGS = ("-I", "-isystem", "-iquote", "-idirafter")
_LINK_PATH_FLAGS = ("-L", "-Wl,-rpath")


def _without_paths(flags: list[str], path_flags: tuple[str, ...]) -> list[str]:
  """`flags` without those that only name a directory."""
  kept, skip_next = [], False
  for flag in flags:
    if skip_next:
      skip_next = False
    elif flag in path_flags:
      skip_next = True  # The directory is the next argument.
    elif not flag.startswith(path_flags):
      kept.append(flag)
  return kept


def abi_flags(compile_flags: list[str]) -> list[str]:
  """The compile flags that decide binary compatibility: all but the include
  directories (e.g. -D_GLIBCXX_USE_CXX11_ABI=1, --std=c++17,
  -DEIGEN_MAX_ALIGN_BYTES=64)."""
  return _without_paths(compile_flags, _COMPILE_PATH_FLAGS)


def linked_libraries(link_flags: list[str]) -> list[str]:
  """The link flags without their directories: the libraries linked (e.g.
  -l:libtensorflow_framework.so.2)."""
  return _without_paths(link_flags, _LINK_PATH_FLAGS)


def build_record() -> dict:
  """What a library built now, here, is recorded with; the loader and
  build.py's up-to-date check compare a record with this (see staleness).

  No absolute path is part of it, so the same environment reached through
  another path (a symlinked or moved venv) gives the same record.
  """
  return {
      "record_format": RECORD_FORMAT,
      "tensorflow": tf.__version__,
      "abi_flags": abi_flags(tf.sysconfig.get_compile_flags()),
      "linked_libraries": linked_libraries(tf.sysconfig.get_link_flags()),
      "machine": platform.machine(),
      "sources": sources_digest(),
  }


def _differs(what: str, built: list[str], here: list[str]) -> str:
  only_built = [f for f in built if f not in here]
  only_here = [f for f in here if f not in built]
  if not only_built and not only_here:  # Same flags, another order.
    only_built, only_here = built, here
  return (f"it was built with {what} {only_built} where this environment has "
          f"{only_here}")


def staleness(manifest: dict) -> str | None:
  """Why a built library must not be loaded here, or None if it may be."""
  if not isinstance(manifest, dict) or "record_format" not in manifest:
    return (f"its build record {MANIFEST_PATH.name} is in an older format "
            "(written by an earlier build.py, with absolute include and "
            "library paths) and the library must be rebuilt")
  if manifest["record_format"] != RECORD_FORMAT:
    return (f"its build record {MANIFEST_PATH.name} has format "
            f"{manifest['record_format']!r}, this loader reads format "
            f"{RECORD_FORMAT}, and the library must be rebuilt")
  want = build_record()
  if manifest.get("tensorflow") != want["tensorflow"]:
    return (f"it was built for TensorFlow {manifest.get('tensorflow')}, but "
            f"this environment has TensorFlow {want['tensorflow']}")
  for key, what in (("abi_flags", "the ABI compile flags"),
                    ("linked_libraries", "the linked libraries")):
    if manifest.get(key) != want[key]:
      return _differs(what, list(manifest.get(key) or []), want[key])
  if manifest.get("machine") != want["machine"]:
    return (f"it was built for a {manifest.get('machine')} machine, but this "
            f"one is {want['machine']}")
  if not cpu_supports(manifest.get("cpu_flags", [])):
    return (f"it was built for CPU features {manifest.get('cpu_flags')} that "
            "this CPU lacks")
  # Outside a source checkout there are no sources to compare with.
  if want["sources"] is not None and manifest.get("sources") != want["sources"]:
    return "the kernel sources in custom_ops/kernels changed since it was built"
  return None


@functools.cache
def load():
  """Loads the library once (its gradients are registered at import).

  Returns:
    The module of generated op wrappers (`swap_align2_nat`, ...).

  Raises:
    CustomOpUnavailable: missing, stale or unloadable library; the message
      says which and how to rebuild.
  """
  if not LIBRARY_PATH.exists() or not MANIFEST_PATH.exists():
    raise CustomOpUnavailable(
        f"the custom-op library {LIBRARY_PATH.name} is not built; "
        f"{REBUILD_HINT}")
  try:
    manifest = json.loads(MANIFEST_PATH.read_text())
  except (OSError, ValueError) as e:  # e.g. a build interrupted mid-write
    raise CustomOpUnavailable(
        f"refusing to load {LIBRARY_PATH}: its build record {MANIFEST_PATH} "
        f"is unreadable ({e}); {REBUILD_HINT}") from e
  reason = staleness(manifest)
  if reason is not None:
    raise CustomOpUnavailable(
        f"refusing to load {LIBRARY_PATH}: {reason}; {REBUILD_HINT}")
  try:
    library = tf.load_op_library(str(LIBRARY_PATH))
  except (tf.errors.NotFoundError, OSError) as e:
    raise CustomOpUnavailable(
        f"loading {LIBRARY_PATH} failed ({e}); {REBUILD_HINT}") from e
  return library


# Gradients w.r.t. x (pad is an attribute, indices are integers). Registered
# once, at import; they reach the grad ops through load(), which has already
# succeeded whenever a forward op exists to differentiate.
@tf.RegisterGradient("SwapAlign2Nat")
def _swap_align2nat_grad(op, dy):
  return load().swap_align2_nat_grad(
      dy, tf.shape(op.inputs[0], out_type=tf.int64), lam=op.get_attr("lam"))


@tf.RegisterGradient("SwapAlign2NatGather")
def _swap_align2nat_gather_grad(op, dy):
  dx = load().swap_align2_nat_gather_grad(
      dy, op.inputs[1], tf.shape(op.inputs[0], out_type=tf.int64),
      lam=op.get_attr("lam"))
  return dx, None


@tf.RegisterGradient("ProjectSwapAlign2NatGather")
def _project_swap_align2nat_gather_grad(op, dy):
  dfeatures, dweights, dbias = load().project_swap_align2_nat_gather_grad(
      dy, op.inputs[0], op.inputs[1], op.inputs[3], [],
      lam=op.get_attr("lam"))
  return dfeatures, dweights, dbias, None


# The grad ops are linear in dy: their gradients are the forward ops without
# the pad term (for second derivatives, as the pure-TF backend has them).
@tf.RegisterGradient("SwapAlign2NatGrad")
def _swap_align2nat_grad_grad(op, ddx):
  return load().swap_align2_nat(ddx, lam=op.get_attr("lam"), pad=0.0), None


@tf.RegisterGradient("SwapAlign2NatGatherGrad")
def _swap_align2nat_gather_grad_grad(op, ddx):
  return load().swap_align2_nat_gather(
      ddx, op.inputs[1], lam=op.get_attr("lam"), pad=0.0), None, None


def _up_attrs(op) -> dict:
  return {name: op.get_attr(name)
          for name in ("lam_num", "lam_den", "interpolation")}


@tf.RegisterGradient("UpAlign2Nat")
def _up_align2nat_grad(op, dy):
  return load().up_align2_nat_grad(
      dy, tf.shape(op.inputs[0], out_type=tf.int64), **_up_attrs(op))


@tf.RegisterGradient("UpAlign2NatGather")
def _up_align2nat_gather_grad(op, dy):
  dx = load().up_align2_nat_gather_grad(
      dy, op.inputs[1], tf.shape(op.inputs[0], out_type=tf.int64),
      **_up_attrs(op))
  return dx, None


@tf.RegisterGradient("UpAlign2NatGrad")
def _up_align2nat_grad_grad(op, ddx):
  return load().up_align2_nat(ddx, pad=0.0, **_up_attrs(op)), None


@tf.RegisterGradient("UpAlign2NatGatherGrad")
def _up_align2nat_gather_grad_grad(op, ddx):
  return load().up_align2_nat_gather(ddx, op.inputs[1], pad=0.0,
                                     **_up_attrs(op)), None, None
