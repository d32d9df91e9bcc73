"""The one place that chooses how swap_align2nat is computed.

Two backends give the same numbers:
- "tf": standard TensorFlow ops (mask_representation.py). XLA/TPU
  compatible, and what exported serving graphs use.
- "custom": the compiled C++/CUDA kernels (custom_op_library.py); faster, but
  not XLA-compilable. Code that builds an XLA-compiled step (Model Garden's
  `runtime.enable_xla`, TPU) must pass backend="tf" where it builds the step.

`backend="auto"` uses the environment variable TENSORMASK_OPS_BACKEND=tf|custom
when it is set, else the custom op when its library loads, else pure TF with
one warning that says why. An explicit "tf" or "custom" argument wins over the
environment; "custom" raises CustomOpUnavailable if the library cannot load.
"""

import os
import warnings

from tensormask_tf.ops import custom_op_library

BACKENDS = ("auto", "tf", "custom")
ENV_VAR = "TENSORMASK_OPS_BACKEND"


def resolve(backend: str = "auto") -> str:
  """Returns "tf" or "custom" for a requested backend (see module doc)."""
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
  if backend == "auto":
    forced = os.environ.get(ENV_VAR, "").strip()
    if forced:
      if forced not in ("tf", "custom"):
        raise ValueError(f"{ENV_VAR} must be 'tf' or 'custom', got {forced!r}.")
      backend = forced
  if backend == "tf":
    return "tf"
  if backend == "custom":
    custom_op_library.load()
    return "custom"
  try:
    custom_op_library.load()
    return "custom"
  except custom_op_library.CustomOpUnavailable as e:
    # Same text and place every time, so Python's default warning filter
    # shows it once per process (a caller's place would show it once per
    # call site).
    warnings.warn(f"tensormask_tf: using the pure-TF ops because {e}",
                  RuntimeWarning, stacklevel=1)
    return "tf"
