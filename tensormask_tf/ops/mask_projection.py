"""Natural masks of selected windows straight from the mask features.

The bipyramid's masks at level k are
`swap_align2nat_gather(conv1x1(fused_k), indices, lam=2**k)` (docs/model.md). The
projection conv1x1 lives on the P2 grid for every level, so computed densely
it is as large as the dense swap output, gradient included (docs/ops.md, fused ops
note). `project_swap_align2nat_gather` computes the same masks, and with the
custom-op backend holds no projection between the forward and backward
passes: memory O(K (lam S)^2) besides the features' gradient (and op-local
scratch on a GPU). The CPU kernel evaluates the projection only at the taps
the selected windows read, time O(K (lam S)^2 C) instead of O(N H W S^2 C).
"""

import math
from typing import NamedTuple, Sequence

import tensorflow as tf

from tensormask_tf.ops import backend as backend_lib
from tensormask_tf.ops import custom_op_library
from tensormask_tf.ops import mask_representation

_OP_NAME = "project_swap_align2nat_gather"


def _check_features(features) -> tf.Tensor:
  """[N, H, W, C] features with a static C (N, H and W may be dynamic)."""
  features = tf.convert_to_tensor(features)
  if features.dtype not in mask_representation.FLOAT_DTYPES:
    raise ValueError(
        f"{_OP_NAME}: features must be float16, bfloat16, float32 or float64, "
        f"got {features.dtype.name}.")
  if features.shape.rank != 4 or features.shape[-1] is None:
    raise ValueError(
        f"{_OP_NAME}: features must have rank 4 [N, H, W, C] with static C, "
        f"got shape {features.shape}.")
  if min(features.shape[1] or 1, features.shape[2] or 1) < 1:
    raise ValueError(
        f"{_OP_NAME}: H and W must be >= 1, got shape {features.shape}.")
  return features


def _check_indices(indices, features: tf.Tensor, lam: int) -> tf.Tensor:
  """int32 [K, 3] rows checked against the batch and the output grid (of
  the run-time size where H or W is not static)."""
  return mask_representation.check_gather_indices(indices, features, lam)


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
      one level); C must be static, N, H and W may be known only at run
      time.
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
      masks = custom_op_library.load().project_swap_align2_nat_gather(
          tf.cast(features, dtype), tf.transpose(tf.cast(kernel, dtype)),
          tf.cast(bias, dtype), _check_indices(indices, features, lam),
          lam=lam, pad=pad)
      return tf.cast(masks, features.dtype)
    projected = (tf.tensordot(features, tf.cast(kernel, features.dtype), 1) +
                 tf.cast(bias, features.dtype))
    return mask_representation.swap_align2nat_gather(
        projected, indices, lam, pad=pad, backend=resolved)


class GatherRequest(NamedTuple):
  """One `project_swap_align2nat_gather` call of
  `project_swap_align2nat_gather_many`: `features` and `kernel` index its
  lists (kernel also indexes the biases), `indices` is [K, 3], `lam` the
  window upscale factor."""
  features: int
  kernel: int
  indices: tf.Tensor
  lam: int


def project_swap_align2nat_gather_many(
    features: Sequence[tf.Tensor], kernels: Sequence[tf.Tensor],
    biases: Sequence[tf.Tensor | None], requests: Sequence[GatherRequest],
    pad: float = mask_representation.DEFAULT_PAD, backend: str = "auto",
    name: str | None = None) -> list[tf.Tensor]:
  """Several `project_swap_align2nat_gather` calls whose backward builds one
  gradient per features tensor, not one per call.

  Returns `[project_swap_align2nat_gather(features[r.features],
  kernels[r.kernel], biases[r.kernel], r.indices, r.lam, pad) for r in
  requests]` (the bipyramid's masks: one features tensor per level, one
  kernel per window size), with the same values and gradients.

  Why: each call's gradient w.r.t. its features is a dense [N, H, W, C]
  tensor (38.5 MB per level and window size on the P2 grid of an 896x1408
  image), and TensorFlow runs the gradient ops of a level's window sizes
  before it adds their results. With the "custom" backend the gradient here
  chains the calls that read one features tensor: each adds its gradient
  into the previous one's buffer (the grad op's `accumulate` input,
  forwarded in place), so a level holds one such tensor. Levels are not
  ordered against each other: that would hold every level's saved
  activations until the last level's masks exist, which costs a training
  step more than it saves. Other backends ("tf": XLA, export) make the calls
  as they are.

  Args:
    features: [N, H, W, C] tensors of one dtype, C matching the kernels they
      are used with.
    kernels: [C, S*S] (or [1, 1, C, S*S]) projection kernels.
    biases: [S*S] biases (or None), one per kernel.
    requests: `GatherRequest`s.
    pad, backend, name: as `project_swap_align2nat_gather`.

  Returns:
    One [K, lam*S, lam*S] tensor of mask logits per request, in the features'
    dtype.
  """
  resolved = backend_lib.resolve(backend)
  if resolved != "custom":
    return [project_swap_align2nat_gather(
        features[r.features], kernels[r.kernel], biases[r.kernel], r.indices,
        r.lam, pad=pad, backend=resolved, name=name) for r in requests]
  with tf.name_scope(name or _OP_NAME + "_many"):
    features = [_check_features(f) for f in features]
    pad = mask_representation.check_pad(pad, _OP_NAME)
    checked = {}  # kernel index -> (kernel [C, S*S], bias [S*S])
    calls = []
    for r in requests:
      f = features[r.features]
      lam = mask_representation.check_lam(r.lam, _OP_NAME)
      if r.kernel not in checked:
        checked[r.kernel] = _check_kernel(kernels[r.kernel], biases[r.kernel],
                                          f.shape[-1])[:2]
      elif checked[r.kernel][0].shape[0] != f.shape[-1]:
        raise ValueError(
            f"{_OP_NAME}: kernel {r.kernel} has {checked[r.kernel][0].shape[0]}"
            f" input channels but features {r.features} have {f.shape[-1]}.")
      calls.append(GatherRequest(r.features, r.kernel,
                                 _check_indices(r.indices, f, lam), lam))
    dtypes = {features[r.features].dtype for r in calls}
    if len(dtypes) > 1:
      raise ValueError(
          f"{_OP_NAME}: all features must have one dtype, got "
          f"{sorted(d.name for d in dtypes)}.")
    if not calls:
      return []
    out_dtype = dtypes.pop()
    dtype = mask_representation.compute_dtype(out_dtype)
    weights = {i: tf.transpose(tf.cast(kernel, dtype))
               for i, (kernel, _) in checked.items()}
    bias_values = {i: tf.cast(bias, dtype) for i, (_, bias) in checked.items()}
    masks = [None] * len(calls)
    for f in sorted({r.features for r in calls}):
      mine = [i for i, r in enumerate(calls) if r.features == f]
      for i, m in zip(mine, _masks_of_one_features(
          tf.cast(features[f], dtype), weights, bias_values,
          [calls[i] for i in mine], pad)):
        masks[i] = tf.cast(m, out_dtype)
    return masks


def _masks_of_one_features(features: tf.Tensor, weights: dict[int, tf.Tensor],
                           biases: dict[int, tf.Tensor],
                           requests: list[GatherRequest],
                           pad: float) -> list[tf.Tensor]:
  """The custom op's masks of requests that read one features tensor, with
  the chained gradient of `project_swap_align2nat_gather_many`; weights
  are [S*S, C], keyed by request.kernel."""
  library = custom_op_library.load()
  keys = sorted({r.kernel for r in requests})

  @tf.custom_gradient
  def masks_fn(features, *tensors):
    ws = dict(zip(keys, tensors[:len(keys)]))
    bs = dict(zip(keys, tensors[len(keys):]))
    masks = [library.project_swap_align2_nat_gather(
        features, ws[r.kernel], bs[r.kernel], r.indices, lam=r.lam, pad=pad)
             for r in requests]

    def grad(*dmasks):
      dfeatures = None
      dws = {k: [] for k in keys}
      dbs = {k: [] for k in keys}
      for r, dy in zip(requests, dmasks):
        if dy is None:
          continue
        dfeatures, dw, db = library.project_swap_align2_nat_gather_grad(
            dy, features, ws[r.kernel], r.indices,
            [] if dfeatures is None else [dfeatures], lam=r.lam)
        dws[r.kernel].append(dw)
        dbs[r.kernel].append(db)
      if dfeatures is None:
        dfeatures = tf.zeros_like(features)
      return ([dfeatures]
              + [tf.add_n(dws[k]) if dws[k] else tf.zeros_like(ws[k])
                 for k in keys]
              + [tf.add_n(dbs[k]) if dbs[k] else tf.zeros_like(bs[k])
                 for k in keys])

    return masks, grad

  return masks_fn(features, *[weights[k] for k in keys],
                  *[biases[k] for k in keys])
