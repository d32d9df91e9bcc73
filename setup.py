"""Install tensormask-tf: `pip install -e .[test]` (scripts/venv.sh does it)."""

import setuptools

# The one list of runtime dependencies (README.md, "Dependencies", says why).
INSTALL_REQUIRES = [
    "tensorflow==2.20.*",          # not tensorflow-cpu: Model Garden needs this one
    "tf-models-official==2.20.0",  # ResNet, FPN, ops, COCO tools; pins TF 2.20
    "tf-keras==2.20.*",            # Keras 2, which Model Garden is built on
    "pycocotools>=2.0.7",
    "absl-py>=1.0",
    "numpy>=1.26",
]

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
)
