"""project_swap_align2nat_gather: the bipyramid's conv1x1 fused into the
gather, on both backends, against the numpy float64 reference of docs/ops.md
applied to a numpy projection."""

import numpy as np
import pytest
import tensorflow as tf

from tensormask_tf import ops
from tensormask_tf.ops import custom_op_library
from tests import reference

BACKENDS = ["tf", "custom"]
# (S, lam, H, W, C): odd and even T = lam*S, windows hanging over every
# border, grids smaller than a window, C below, at and off multiples of 8.
CASES = [(1, 1, 3, 4, 2), (3, 1, 5, 6, 8), (3, 2, 7, 6, 5), (2, 2, 5, 5, 17),
         (5, 3, 9, 8, 3), (4, 3, 7, 7, 9), (3, 4, 9, 10, 16), (5, 1, 2, 3, 4)]


def _problem(s, lam, h, w, c, k=9, batch=2, seed=0):
  rng = np.random.RandomState(seed)
  features = rng.uniform(-1, 1, (batch, h, w, c))
  kernel = rng.uniform(-1, 1, (c, s * s))
  bias = rng.uniform(-1, 1, (s * s,))
  out_h, out_w = -(-h // lam), -(-w // lam)
  indices = np.stack([rng.randint(0, batch, k), rng.randint(0, out_h, k),
                      rng.randint(0, out_w, k)], axis=1).astype(np.int32)
  return features, kernel, bias, indices


def _reference(features, kernel, bias, indices, lam, pad):
  projected = np.einsum("nhwc,cd->nhwd", features, kernel) + bias
  dense = reference.swap_align2nat(projected, lam, pad=pad)
  side = lam * int(round(np.sqrt(kernel.shape[1])))
  return dense[indices[:, 0], indices[:, 1], indices[:, 2]].reshape(
      -1, side, side)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,atol", [(tf.float64, 1e-10),
                                        (tf.float32, 1e-5)])
@pytest.mark.parametrize("s,lam,h,w,c", CASES)
def test_matches_the_reference(backend, dtype, atol, s, lam, h, w, c):
  features, kernel, bias, indices = _problem(s, lam, h, w, c)
  for pad in (-6.0, 0.0, 2.5):
    out = ops.project_swap_align2nat_gather(
        tf.constant(features, dtype), tf.constant(kernel, dtype),
        tf.constant(bias, dtype), indices, lam, pad=pad, backend=backend)
    assert out.dtype == dtype
    np.testing.assert_allclose(
        out, _reference(features, kernel, bias, indices, lam, pad),
        rtol=0, atol=atol * max(1.0, c / 4))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("s,lam,h,w,c", CASES)
def test_gradients_are_the_adjoints(backend, s, lam, h, w, c):
  """The output is affine in each of features, kernel and bias, so for any
  dy: <y(z) - y(0), dy> = <z, dL/dz> with L = <y, dy> (float64)."""
  features, kernel, bias, indices = _problem(s, lam, h, w, c, seed=1)
  dy = np.random.RandomState(2).uniform(-1, 1, (len(indices), lam * s,
                                                lam * s))
  args = [tf.constant(a) for a in (features, kernel, bias)]
  fn = lambda f, k, b: ops.project_swap_align2nat_gather(
      f, k, b, indices, lam, pad=-1.5, backend=backend)
  with tf.GradientTape() as tape:
    tape.watch(args)
    loss = tf.reduce_sum(fn(*args) * dy)
  grads = tape.gradient(loss, args)
  full = fn(*args).numpy()
  for i, (arg, grad) in enumerate(zip(args, grads)):
    zeroed = list(args)
    zeroed[i] = tf.zeros_like(arg)
    np.testing.assert_allclose(np.sum((full - fn(*zeroed).numpy()) * dy),
                               np.sum(arg.numpy() * grad.numpy()),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("s,lam,h,w,c", CASES)
def test_backends_give_the_same_gradients(s, lam, h, w, c):
  features, kernel, bias, indices = _problem(s, lam, h, w, c, seed=3)
  dy = np.random.RandomState(4).uniform(-1, 1, (len(indices), lam * s,
                                                lam * s))
  grads = {}
  for backend in BACKENDS:
    args = [tf.constant(a) for a in (features, kernel, bias)]
    with tf.GradientTape() as tape:
      tape.watch(args)
      loss = tf.reduce_sum(ops.project_swap_align2nat_gather(
          *args, indices, lam, backend=backend) * dy)
    grads[backend] = tape.gradient(loss, args)
  for custom, pure in zip(grads["custom"], grads["tf"]):
    np.testing.assert_allclose(custom, pure, rtol=0, atol=1e-10)


def test_every_output_element_is_written():
  library = custom_op_library.load()
  # Few windows on a large grid: most of dfeatures is read by none of them.
  features, kernel, bias, indices = _problem(3, 2, 12, 14, 10, k=3)
  weights = np.ascontiguousarray(kernel.T)
  masks = library.project_swap_align2_nat_gather(
      features, weights, bias, indices, lam=2, pad=-6.0, poison_output=True)
  grads = library.project_swap_align2_nat_gather_grad(
      np.ones(masks.shape), features, weights, indices, [], lam=2,
      poison_output=True)
  for name, value in zip(["masks", "dfeatures", "dweights", "dbias"],
                         [masks, *grads]):
    assert not np.isnan(value.numpy()).any(), f"{name} left elements unwritten"
  assert np.count_nonzero(grads[0]) < grads[0].numpy().size / 2


def test_gradients_are_deterministic():
  library = custom_op_library.load()
  features, kernel, bias, indices = _problem(5, 4, 30, 26, 32, k=20)
  del bias
  indices = np.concatenate([indices] * 4)  # Duplicate windows.
  dy = np.random.RandomState(5).uniform(-1, 1, (80, 20, 20)).astype(np.float32)
  args = (dy, features.astype(np.float32),
          np.ascontiguousarray(kernel.T).astype(np.float32), indices)
  runs = [[g.numpy() for g in library.project_swap_align2_nat_gather_grad(
      *args, [], lam=4)] for _ in range(3)]
  for run in runs[1:]:
    for got, want in zip(run, runs[0]):
      np.testing.assert_array_equal(got, want)


def test_zero_rows_of_dy_are_skipped_exactly():
  # Padding rows of the mask caps carry dy = 0; skipping them must not change
  # the gradient of the others.
  library = custom_op_library.load()
  features, kernel, _, indices = _problem(3, 2, 9, 9, 6, k=6, seed=6)
  weights = np.ascontiguousarray(kernel.T)
  dy = np.random.RandomState(7).uniform(-1, 1, (6, 6, 6))
  dy[::2] = 0.0
  dy[1, 3] = 0.0
  full = library.project_swap_align2_nat_gather_grad(dy, features, weights,
                                                     indices, [], lam=2)
  kept = [1, 3, 5]
  part = library.project_swap_align2_nat_gather_grad(
      dy[kept], features, weights, indices[kept], [], lam=2)
  for got, want in zip(full, part):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_precision_features(backend):
  features, kernel, bias, indices = _problem(3, 2, 8, 8, 16)
  out = ops.project_swap_align2nat_gather(
      tf.constant(features, tf.bfloat16), kernel.astype(np.float32),
      bias.astype(np.float32), indices, 2, backend=backend)
  assert out.dtype == tf.bfloat16
  want = _reference(features, kernel, bias, indices, 2, -6.0)
  np.testing.assert_allclose(tf.cast(out, tf.float64), want, rtol=0.05,
                             atol=0.15)


def test_keras_conv_kernel_is_accepted():
  features, kernel, bias, indices = _problem(3, 1, 6, 6, 4)
  out = ops.project_swap_align2nat_gather(features, kernel[None, None], bias,
                                          indices, 1, backend="custom")
  np.testing.assert_allclose(
      out, _reference(features, kernel, bias, indices, 1, -6.0), atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change,error,message", [
    (dict(kernel=np.zeros((5, 9))), ValueError, "C = 4"),
    (dict(kernel=np.zeros((4, 8))), ValueError, "not a non-zero square"),
    (dict(bias=np.zeros((4,))), ValueError, r"bias must have shape \[S\*S\]"),
    (dict(features=np.zeros((6, 6, 4))), ValueError, "rank 4"),
    (dict(features=np.zeros((2, 6, 6, 4), np.int32)), ValueError,
     "float16, bfloat16"),
    (dict(indices=np.array([[0, 3, 0]], np.int32)),
     tf.errors.InvalidArgumentError, "row y outside"),
    (dict(indices=np.array([[2, 0, 0]], np.int32)),
     tf.errors.InvalidArgumentError, "outside the batch"),
    (dict(lam=0), ValueError, "lam must be >= 1"),
])
def test_bad_input_raises_clear_errors(backend, change, error, message):
  args = dict(features=np.zeros((2, 6, 6, 4)), kernel=np.zeros((4, 9)),
              bias=np.zeros((9,)), indices=np.array([[0, 1, 1]], np.int32),
              lam=2)
  args.update(change)
  with pytest.raises(error, match=message):
    ops.project_swap_align2nat_gather(backend=backend, **args)


@pytest.mark.parametrize("call,message", [
    (lambda lib: lib.project_swap_align2_nat_gather(
        np.zeros((1, 4, 4, 3)), np.zeros((9, 2)), np.zeros(9),
        np.zeros((1, 3), np.int32), lam=1), "C = 3"),
    (lambda lib: lib.project_swap_align2_nat_gather(
        np.zeros((1, 4, 4, 3)), np.zeros((9, 3)), np.zeros(4),
        np.zeros((1, 3), np.int32), lam=1), "bias must have shape"),
    (lambda lib: lib.project_swap_align2_nat_gather(
        np.zeros((1, 4, 4, 3)), np.zeros((9, 3)), np.zeros(9),
        np.array([[0, 0, 4]], np.int32), lam=1), "column x outside"),
    (lambda lib: lib.project_swap_align2_nat_gather_grad(
        np.zeros((1, 2, 2)), np.zeros((1, 4, 4, 3)), np.zeros((9, 3)),
        np.zeros((1, 3), np.int32), [], lam=1), "dy has shape"),
    (lambda lib: lib.project_swap_align2_nat_gather_grad(
        np.zeros((1, 3, 3)), np.zeros((1, 4, 4, 3)), np.zeros((9, 3)),
        np.zeros((1, 3), np.int32), [np.zeros((1, 4, 5, 3))], lam=1),
     "accumulate has shape"),
])
def test_raw_ops_reject_bad_input(call, message):
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError),
                     match=message):
    call(custom_op_library.load())


def _tf_gradients(features, kernel, bias, indices, lam, dy):
  """Gradients of <masks, dy> through the pure-TF backend (the reference)."""
  args = [tf.constant(a) for a in (features, kernel, bias)]
  with tf.GradientTape() as tape:
    tape.watch(args)
    loss = tf.reduce_sum(ops.project_swap_align2nat_gather(
        *args, indices, lam, backend="tf") * dy)
  return [g.numpy() for g in tape.gradient(loss, args)]


@pytest.mark.parametrize("poison", [False, True])
def test_grad_op_accumulates_into_the_given_tensor(poison):
  library = custom_op_library.load()
  features, kernel, bias, indices = _problem(3, 2, 9, 10, 6, k=5, seed=8)
  dy = np.random.RandomState(9).uniform(-1, 1, (5, 6, 6))
  start = np.random.RandomState(10).uniform(-1, 1, features.shape)
  want = _tf_gradients(features, kernel, bias, indices, 2, dy)
  weights = np.ascontiguousarray(kernel.T)
  # Eagerly the caller still holds `accumulate`: it is copied, not
  # overwritten.
  accumulate = tf.constant(start)
  got = library.project_swap_align2_nat_gather_grad(
      dy, features, weights, indices, [accumulate], lam=2,
      poison_output=poison)
  np.testing.assert_array_equal(accumulate, start)
  # In a graph an intermediate is forwarded and summed into in place.
  in_place = tf.function(lambda: library.project_swap_align2_nat_gather_grad(
      dy, features, weights, indices, [tf.constant(start) * 1.0], lam=2,
      poison_output=poison))()
  for grads in (got, in_place):
    np.testing.assert_allclose(grads[0], start + want[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads[1], want[1].T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads[2], want[2], rtol=0, atol=1e-12)


def _many_problem(seed=0):
  """Two features tensors, two kernels (S = 2, 3), requests mixing them."""
  rng = np.random.RandomState(seed)
  features = [rng.uniform(-1, 1, (2, 9, 11, 5)) for _ in range(3)]
  kernels = [rng.uniform(-1, 1, (5, s * s)) for s in (2, 3)]
  biases = [rng.uniform(-1, 1, (s * s,)) for s in (2, 3)]
  requests = []
  # Features 1 is used by none, kernel 1 twice on features 2.
  for f, k, lam in ((0, 0, 1), (2, 1, 3), (0, 1, 1), (2, 0, 3), (2, 1, 3)):
    out_h, out_w = -(-9 // lam), -(-11 // lam)
    indices = np.stack([rng.randint(0, 2, 4), rng.randint(0, out_h, 4),
                        rng.randint(0, out_w, 4)], 1).astype(np.int32)
    requests.append(ops.GatherRequest(f, k, indices, lam))
  dys = [rng.uniform(-1, 1, (4, r.lam * int(np.sqrt(kernels[r.kernel].shape[1])),
                             r.lam * int(np.sqrt(kernels[r.kernel].shape[1]))))
         for r in requests]
  return features, kernels, biases, requests, dys


def _many_masks_and_gradients(backend, graph=False, skip_dy=None):
  features, kernels, biases, requests, dys = _many_problem()
  tensors = [tf.constant(a) for a in features + kernels + biases]

  def run():
    with tf.GradientTape() as tape:
      tape.watch(tensors)
      masks = ops.project_swap_align2nat_gather_many(
          tensors[:3], tensors[3:5], tensors[5:], requests, pad=-2.0,
          backend=backend)
      loss = tf.add_n([tf.reduce_sum(m * dy) for i, (m, dy) in
                       enumerate(zip(masks, dys)) if i != skip_dy])
    return masks, tape.gradient(loss, tensors)

  masks, grads = tf.function(run)() if graph else run()
  return ([m.numpy() for m in masks],
          [None if g is None else g.numpy() for g in grads])


@pytest.mark.parametrize("backend,graph", [("tf", False), ("custom", False),
                                           ("custom", True)])
@pytest.mark.parametrize("skip_dy", [None, 3])
def test_many_matches_separate_calls(backend, graph, skip_dy):
  features, kernels, biases, requests, dys = _many_problem()
  masks, grads = _many_masks_and_gradients(backend, graph, skip_dy)
  for r, got in zip(requests, masks):
    np.testing.assert_allclose(
        got, _reference(features[r.features], kernels[r.kernel],
                        biases[r.kernel], r.indices, r.lam, -2.0),
        rtol=0, atol=1e-10)
  # Reference gradients: each request through the pure-TF backend, summed.
  want = [np.zeros_like(a) for a in features + kernels + biases]
  for i, (r, dy) in enumerate(zip(requests, dys)):
    if i == skip_dy:
      continue
    df, dk, db = _tf_gradients(features[r.features], kernels[r.kernel],
                               biases[r.kernel], r.indices, r.lam, dy)
    want[r.features] += df
    want[3 + r.kernel] += dk
    want[5 + r.kernel] += db
  assert grads[1] is None  # Features 1 is read by no request.
  for i, (got, ref) in enumerate(zip(grads, want)):
    if i != 1:
      np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)


def test_many_gradients_are_deterministic():
  runs = [_many_masks_and_gradients("custom", graph=True)[1]
          for _ in range(3)]
  for run in runs[1:]:
    for got, want in zip(run, runs[0]):
      if want is not None:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("change,message", [
    (dict(dtypes=(np.float32, np.float64)), "one dtype"),
    (dict(channels=(5, 6)), "input channels"),
])
def test_many_rejects_inconsistent_inputs(change, message):
  dtypes = change.get("dtypes", (np.float32, np.float32))
  channels = change.get("channels", (5, 5))
  features = [np.zeros((1, 4, 4, c), d) for c, d in zip(channels, dtypes)]
  kernels = [np.zeros((5, 4), np.float32)]
  requests = [ops.GatherRequest(i, 0, np.zeros((1, 3), np.int32), 1)
              for i in range(2)]
  with pytest.raises(ValueError, match=message):
    ops.project_swap_align2nat_gather_many(features, kernels, [None],
                                           requests, backend="custom")


# ---------------------------------------------------------------------------
# Features whose H and W are known only at run time.
# ---------------------------------------------------------------------------
def _bits(a):
  a = np.asarray(a)
  return a.view(np.uint64 if a.dtype == np.float64 else np.uint32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("s,lam,h,w,c", [CASES[0], CASES[3], CASES[6],
                                         CASES[7]])
def test_traced_for_any_size_equals_the_static_trace(backend, s, lam, h, w,
                                                     c):
  features, kernel, bias, indices = _problem(s, lam, h, w, c, seed=11)
  dy = np.random.RandomState(12).uniform(-1, 1, (len(indices), lam * s,
                                                 lam * s))
  weights = [tf.constant(kernel), tf.constant(bias)]

  def masks_and_gradients(f):
    with tf.GradientTape() as tape:
      tape.watch([f] + weights)
      masks = ops.project_swap_align2nat_gather(
          f, *weights, indices, lam, pad=-6.0, backend=backend)
    return [masks] + tape.gradient(masks, [f] + weights, output_gradients=dy)

  runs = {}
  for name, shape in (("static", [2, h, w, c]),
                      ("any size", [None, None, None, c]),
                      ("batch of two", [2, None, None, c])):
    fn = tf.function(masks_and_gradients,
                     input_signature=[tf.TensorSpec(shape, tf.float64)])
    runs[name] = [r.numpy() for r in fn(features)]
  np.testing.assert_allclose(
      runs["any size"][0], _reference(features, kernel, bias, indices, lam,
                                      -6.0), rtol=0, atol=1e-10)
  for name in ("static", "batch of two"):
    for got, want in zip(runs[name], runs["any size"]):
      np.testing.assert_array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("backend", ["tf", "custom"])
def test_many_traced_for_any_size_equals_the_static_trace(backend):
  features, kernels, biases, requests, dys = _many_problem(seed=1)

  def masks_and_gradients(f0, f1, f2):
    with tf.GradientTape() as tape:
      tape.watch([f0, f2])
      masks = ops.project_swap_align2nat_gather_many(
          [f0, f1, f2], kernels, biases, requests, pad=-2.0, backend=backend)
      loss = tf.add_n([tf.reduce_sum(m * dy) for m, dy in zip(masks, dys)])
    return masks + tape.gradient(loss, [f0, f2])

  runs = {}
  for name, shape in (("static", [2, 9, 11, 5]),
                      ("any size", [None, None, None, 5])):
    fn = tf.function(masks_and_gradients, input_signature=[
        tf.TensorSpec(shape, tf.float64)] * 3)
    runs[name] = [r.numpy() for r in fn(*features)]
  for r, got in zip(requests, runs["any size"]):
    np.testing.assert_allclose(
        got, _reference(features[r.features], kernels[r.kernel],
                        biases[r.kernel], r.indices, r.lam, -2.0),
        rtol=0, atol=1e-10)
  for got, want in zip(runs["static"], runs["any size"]):
    np.testing.assert_array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index,message", [([0, 3, 0], "row y outside"),
                                           ([0, 0, 3], "column x outside"),
                                           ([2, 0, 0], "outside the batch")])
def test_indices_outside_a_run_time_grid_raise(backend, index, message):
  fn = tf.function(
      lambda f, i: ops.project_swap_align2nat_gather(
          f, np.zeros((4, 9)), None, i, 2, backend=backend),
      input_signature=[tf.TensorSpec([None, None, None, 4], tf.float64),
                       tf.TensorSpec([None, 3], tf.int32)])
  features = np.zeros((2, 6, 5, 4))  # A 3 x 3 output grid.
  assert fn(features, [[1, 2, 2]]).shape == (1, 6, 6)
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    fn(features, np.array([index], np.int32))
