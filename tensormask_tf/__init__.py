"""tensormask-tf: TensorMask (Chen, Girshick, He, Dollar, ICCV 2019) in TensorFlow 2.

Importing the package sets, before TensorFlow is first imported, the two
process-wide environment defaults the project relies on (an explicit setting
in the environment wins):

- `TF_CPP_MIN_LOG_LEVEL`: TensorFlow's C++ start-up INFO/WARNING lines stay
  out of users' faces (level 2). On a machine without an NVIDIA device the GPU
  build of TensorFlow also logs a spurious "failed call to cuInit" ERROR, so
  there the default is 3 (C++ errors reach users as Python exceptions anyway).
- `TF_USE_LEGACY_KERAS=1`: `tf.keras` resolves to Keras 2 (`tf_keras`), the
  Keras that Model Garden is built on. Project code imports `tf_keras` directly.

This is the one place the log level is set.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL",
                      "2" if os.path.exists("/dev/nvidiactl") else "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
