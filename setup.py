"""Install tensormask-tf: `pip install -e .[test]` (scripts/venv.sh does it).

The custom-op library is compiled for the TensorFlow of the environment being
installed into, so it is built here only when TensorFlow is importable at
build time (`pip install --no-build-isolation ...` after TensorFlow is
installed); otherwise build it with `python custom_ops/build.py`, which
scripts/venv.sh runs. Without it the pure-TF ops are used, with a warning.
"""

import pathlib
import shutil
import subprocess
import sys

import setuptools
from setuptools.command import build_ext

ROOT = pathlib.Path(__file__).resolve().parent
LIBRARY = pathlib.Path("tensormask_tf", "ops", "_swap_align2nat_ops")

# The one list of runtime dependencies (README.md, "Dependencies", says why).
INSTALL_REQUIRES = [
    "tensorflow==2.20.*",          # not tensorflow-cpu: Model Garden needs this one
    "tf-models-official==2.20.0",  # ResNet, FPN, ops, COCO tools; pins TF 2.20
    "tf-keras==2.20.*",            # Keras 2, which Model Garden is built on
    "tensorflow-serving-api==2.20.*",  # the gRPC client of TF Serving
    "pycocotools>=2.0.7",
    "absl-py>=1.0",
    "numpy>=1.26",
    # ONNX export (scripts/export_onnx.py) and onnxruntime inference
    # (predict.py --onnx), pinned: tf2onnx's op conversions and
    # onnxruntime's kernels are what the ONNX tests check.
    "tf2onnx==1.17.0",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
]

class BuildCustomOps(build_ext.build_ext):
  """Runs custom_ops/build.py with the target environment's TensorFlow."""

  def run(self):
    super().run()
    try:
      import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      print("tensormask-tf: TensorFlow is not importable while building, so "
            "the custom op is not compiled now (the pure-TF ops are used); "
            "once TensorFlow is installed, reinstall with `pip install "
            "--no-build-isolation .`, or for an editable install run `python "
            "custom_ops/build.py`.")
      # Nor is an earlier build's library, left in build/, shipped: it was
      # built from other sources or for another TensorFlow.
      for suffix in (".so", ".json"):
        (pathlib.Path(self.build_lib) / LIBRARY.with_suffix(suffix)).unlink(
            missing_ok=True)
      return
    subprocess.check_call([sys.executable, str(ROOT / "custom_ops" / "build.py")])
    if not self.inplace and not getattr(self, "editable_mode", False):
      for suffix in (".so", ".json"):
        target = pathlib.Path(self.build_lib) / LIBRARY.with_suffix(suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / LIBRARY.with_suffix(suffix), target)


class BinaryDistribution(setuptools.Distribution):
  """The package carries a compiled library: platform-specific, with build_ext."""

  def has_ext_modules(self):
    return True


setuptools.setup(
    name="tensormask-tf",
    version="0.1.0",
    description="TensorMask dense sliding-window instance segmentation in "
                "TensorFlow 2 / Keras on Model Garden.",
    packages=setuptools.find_packages(include=["tensormask_tf",
                                               "tensormask_tf.*"]),
    python_requires=">=3.10,<3.14",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest>=7"]},
    cmdclass={"build_ext": BuildCustomOps},
    distclass=BinaryDistribution,
)
