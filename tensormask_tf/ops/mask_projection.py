"""Natural masks of selected windows straight from the mask features.

The bipyramid's masks at level k are
`swap_align2nat_gather(conv1x1(fused_k), indices, lam=2**k)` (SPEC.md 3). The
projection conv1x1 lives on the P2 grid for every level, so computed densely
it is as large as the dense swap output, gradient included (SPEC.md 2, memory
note). `project_swap_align2nat_gather` computes the same masks, and with the
custom-op backend holds no projection between the forward and backward
passes: memory O(K (lam S)^2) besides the features' gradient (and op-local
scratch on a GPU). The CPU kernel evaluates the projection only at the taps
the selected windows read, time O(K (lam S)^2 C) instead of O(N H W S^2 C).
"""

import math

import tensorflow as tf

from tensormask_tf.ops import backend as backend_lib
from tensormask_tf.ops import custom_op_library
from tensormask_tf.ops import mask_representation

_OP_NAME = "project_swap_align2nat_gather"


def _check_features(features) -> tf.Tensor:
  features = tf.convert_to_tensor(features)
  if features.dtype not in mask_representation.FLOAT_DTYPES:
    raise ValueError(
        f"{_OP_NAME}: features must be float16, bfloat16, float32 or float64, "
        f"got {features.dtype.name}.")
  if features.shape.rank != 4 or None in features.shape.as_list()[1:]:
    raise ValueError(
        f"{_OP_NAME}: features must have rank 4 [N, H, W, C] with static H, "
        f"W and C, got shape {features.shape}.")
  if min(features.shape[1:3]) < 1:
    raise ValueError(
        f"{_OP_NAME}: H and W must be >= 1, got shape {features.shape}.")
  return features


def _check_kernel(kernel, bias, channels: int) -> tuple[tf.Tensor, tf.Tensor,
                                                        int]:
  """Returns kernel [C, S*S], bias [S*S] (zeros if None) and S."""
  kernel = tf.convert_to_tensor(kernel)
  if kernel.shape.rank == 4 and kernel.shape[:2] == (1, 1):
    kernel = tf.reshape(kernel, kernel.shape[2:])  # A Keras conv1x1 kernel.
  if kernel.shape.rank != 2 or kernel.shape[0] != channels:
    raise ValueError(
        f"{_OP_NAME}: kernel must have shape [C, S*S] (or [1, 1, C, S*S]) "
        f"with C = {channels} (the features' channels), got shape "
        f"{kernel.shape}.")
  window = math.isqrt(kernel.shape[1] or 0)
  if window < 1 or window * window != kernel.shape[1]:
    raise ValueError(
        f"{_OP_NAME}: the kernel must have S*S outputs for a window side "
        f"S >= 1, got {kernel.shape[1]}, which is not a non-zero square.")
  if bias is None:
    bias = tf.zeros([window * window], kernel.dtype)
  bias = tf.convert_to_tensor(bias)
  if bias.shape != (window * window,):
    raise ValueError(
        f"{_OP_NAME}: bias must have shape [S*S] = [{window * window}], got "
        f"shape {bias.shape}.")
  return kernel, bias, window


def project_swap_align2nat_gather(features, kernel, bias, indices, lam: int,
                                  pad: float = mask_representation.DEFAULT_PAD,
                                  backend: str = "auto",
                                  name: str | None = None) -> tf.Tensor:
  """`swap_align2nat_gather(conv1x1(features) + bias, indices, lam, pad)`.

  Args:
    features: [N, H, W, C] features (the bipyramid's fused P2-grid feature of
      one level).
    kernel: [C, S*S] conv1x1 kernel to the aligned channels `c*S + d`, or the
      Keras Conv2D kernel [1, 1, C, S*S].
    bias: [S*S] bias of the projection, or None for none.
    indices: [K, 3] int32 (or int64) rows `(n, y, x)` on the output grid
      `[ceil(H/lam), ceil(W/lam)]`, checked as by `swap_align2nat_gather`.
    lam: Python int >= 1, the window upscale factor.
    pad: value read for taps outside the projected tensor.
    backend: "auto", "tf" or "custom" (see `backend.py`). "tf" projects the
      whole grid with a matmul and gathers (XLA-compatible; memory
      O(N H W S^2)); "custom" runs the fused kernel (C++ on the CPU, CUDA
      on a GPU), whose output and saved inputs hold no projection: the CPU
      kernel never forms it, the CUDA kernels form it (or its gradient)
      only as scratch inside the op where that is faster.
    name: optional name scope.

  Returns:
    [K, lam*S, lam*S] natural mask logits in the features' dtype; float16
    and bfloat16 features are computed in float32 by the fused kernel and in
    their own dtype (like a Keras conv under a mixed policy) by "tf".
  """
  lam = mask_representation.check_lam(lam, _OP_NAME)
  pad = mask_representation.check_pad(pad, _OP_NAME)
  with tf.name_scope(name or _OP_NAME):
    features = _check_features(features)
    kernel, bias, window = _check_kernel(kernel, bias, features.shape[-1])
    resolved = backend_lib.resolve(backend)
    if resolved == "custom":
      dtype = mask_representation.compute_dtype(features.dtype)
      _, height, width, _ = features.shape.as_list()
      indices = mask_representation.check_gather_indices(
          indices, tf.shape(features)[0], -(-height // lam),
          -(-width // lam))
      masks = custom_op_library.load().project_swap_align2_nat_gather(
          tf.cast(features, dtype), tf.transpose(tf.cast(kernel, dtype)),
          tf.cast(bias, dtype), indices, lam=lam, pad=pad)
      return tf.cast(masks, features.dtype)
    projected = (tf.tensordot(features, tf.cast(kernel, features.dtype), 1) +
                 tf.cast(bias, features.dtype))
    return mask_representation.swap_align2nat_gather(
        projected, indices, lam, pad=pad, backend=resolved)
