"""Tests of the TensorMask head and model on Model Garden's ResNet + FPN."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tensormask_tf import losses
from tensormask_tf.configs import tensormask_config
from tensormask_tf.modeling import factory
from tensormask_tf.modeling.heads import tensormask_head
from tests import conv_reference
from tests import training_helpers

IMAGE = 128


def _small_config(head_type="bipyramid", **head_overrides):
  config = tensormask_config.TensorMaskModel(
      num_classes=3, input_size=[IMAGE, IMAGE, 3], min_level=2, max_level=5)
  config.backbone.resnet.model_id = 18
  config.decoder.fpn.num_filters = 32
  config.windows.base_sides = [12, 20]  # S = 3 and 5 mask pixels at P2.
  config.head.override({"head_type": head_type, "num_convs": 2,
                        "class_filters": 32, "box_filters": 16,
                        "mask_filters": 16, **head_overrides})
  return config


def _build(config, batch=2):
  return factory.build_tensormask_model(
      tf_keras.layers.InputSpec(shape=[batch, IMAGE, IMAGE, 3]), config)


HEADS = {
    "bipyramid": {},
    "simple_natural": {},
    "simple_aligned": {},
    "upscale_natural": {"base_sides": [24, 40], "upscale_factor": 2},
    "upscale_aligned": {"base_sides": [24, 40], "upscale_factor": 2,
                        "upscale_interpolation": "nearest"},
}


def _labels(spec):
  """Window labels of a fixed batch of two images (one object each), as the
  task's input pipeline makes them."""
  from tensormask_tf.ops import window_labeler  # pylint: disable=g-import-not-at-top
  masks = np.zeros((2, IMAGE, IMAGE), np.float32)
  masks[0, 20:40, 20:44] = 1
  masks[1, 60:110, 50:100] = 1
  boxes = np.array([[20, 20, 40, 44], [60, 50, 110, 100]], np.float32)
  one = window_labeler.label_windows(spec, (IMAGE, IMAGE), boxes, [1, 2],
                                     masks, {2: 8, 3: 8, 4: 4, 5: 4}, seed=0)
  return {k: tf.stack([v, v]) for k, v in one.items()}


TRAIN_STEPS = 6


@pytest.mark.parametrize("head_type", sorted(HEADS))
def test_every_head_type_builds_runs_and_trains(head_type):
  overrides = dict(HEADS[head_type])
  config = _small_config(head_type, **{k: v for k, v in overrides.items()
                                       if k != "base_sides"})
  if "base_sides" in overrides:
    config.windows.base_sides = overrides["base_sides"]
  tf_keras.utils.set_random_seed(7)
  model = _build(config)
  built_variables = {v.name for v in model.variables}
  assert len(built_variables) == len(model.variables)  # Unique names.
  head = model.head
  images = tf.random.normal([2, IMAGE, IMAGE, 3], seed=1)
  indices = tf.constant([[0, 1, 2], [1, 0, 3], [1, 3, 3]], tf.int32)
  with tf.GradientTape() as tape:
    outputs = model(images, training=True)
    total = 0.0
    for level in range(2, 6):
      stride = 2**level
      assert outputs["class_outputs"][str(level)].shape == (
          2, IMAGE // stride, IMAGE // stride, 2 * 3)
      assert outputs["box_outputs"][str(level)].shape == (
          2, IMAGE // stride, IMAGE // stride, 2 * 4)
      for size_index in range(2):
        side = head.mask_side(level, size_index)
        dense = head.mask_logits(outputs["mask_features"], level, size_index)
        assert dense.shape == (2, IMAGE // stride, IMAGE // stride, side * side)
        gathered = head.mask_logits(outputs["mask_features"], level,
                                    size_index, indices)
        assert gathered.shape == (3, side, side)
        np.testing.assert_allclose(
            gathered, tf.reshape(tf.gather_nd(dense, indices), [3, side, side]),
            atol=1e-5)
        total += losses.mask_loss(gathered, tf.ones_like(gathered), [1, 1, 1])
      total += tf.reduce_sum(losses.focal_loss_star(
          outputs["class_outputs"][str(level)], 0.0))
      box = outputs["box_outputs"][str(level)]
      total += losses.box_l1_loss(tf.reshape(box, [-1, 4]),
                                  tf.zeros_like(tf.reshape(box, [-1, 4])), 1.0)
  grads = tape.gradient(total, model.trainable_variables)
  # Every variable exists once the model is built (none made lazily by
  # mask_logits): initialization, restoring and mirroring see them all.
  assert {v.name for v in model.variables} == built_variables
  assert np.isfinite(float(total))
  assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
  if head_type == "bipyramid":
    assert head.mask_side(5, 1) == 5 * 8  # S * 2**k
  else:
    assert head.mask_side(5, 1) == config.windows.base_sides[1] // 4

  # Trains: optimizer steps on one fixed batch lower the task's loss
  # (losses.tensormask_losses through the model, masks at the labelled
  # windows by mask_logits_at), every step, and its mask part with it.
  spec = factory.window_spec(config)
  step = training_helpers.make_train_step(
      model, spec, config.num_classes, tf_keras.optimizers.Adam(1e-3))
  labels = _labels(spec)
  history = [step(images, labels) for _ in range(TRAIN_STEPS)]
  assert float(history[0]["num_positives"]) > 0
  for key in ("total_loss", "mask_loss"):
    values = [float(result[key]) for result in history]
    assert np.all(np.isfinite(values)), (key, values)
    assert np.all(np.diff(values) < 0), (key, values)
  total = [float(result["total_loss"]) for result in history]
  assert total[-1] < 0.95 * total[0], total


def test_class_logits_start_at_the_prior():
  model = _build(_small_config())
  outputs = model(tf.random.normal([2, IMAGE, IMAGE, 3], seed=2))
  scores = tf.sigmoid(outputs["class_outputs"]["3"])
  np.testing.assert_allclose(float(tf.reduce_mean(scores)), 0.01, rtol=0.2)


@pytest.mark.parametrize("backend", ["tf", "custom"])
def test_gathered_mask_loss_equals_dense_bipyramid_loss_float64(backend):
  config = _small_config()
  config.ops_backend = backend
  tf_keras.backend.set_floatx("float64")
  try:
    model = _build(config, batch=2)
    outputs = model(tf.random.normal([2, IMAGE, IMAGE, 3], seed=3,
                                     dtype=tf.float64))
  finally:
    tf_keras.backend.set_floatx("float32")
  rng = np.random.RandomState(4)
  for level in range(2, 6):
    grid = IMAGE // 2**level
    indices = np.stack([rng.randint(0, 2, 6), rng.randint(0, grid, 6),
                        rng.randint(0, grid, 6)], axis=1).astype(np.int32)
    side = model.head.mask_side(level, 0)
    targets = (rng.uniform(size=(6, side, side)) < 0.5).astype(np.float64)
    dense = model.head.mask_logits(outputs["mask_features"], level, 0).numpy()
    from_dense = dense[indices[:, 0], indices[:, 1], indices[:, 2]].reshape(
        6, side, side)
    gathered = model.head.mask_logits(outputs["mask_features"], level, 0,
                                      indices)
    assert gathered.dtype == tf.float64
    np.testing.assert_allclose(
        losses.mask_loss(gathered, targets, np.ones(6)),
        losses.mask_loss(from_dense, targets, np.ones(6)), rtol=1e-12)


@pytest.mark.parametrize("head_type", ["bipyramid", "simple_aligned"])
def test_mask_logits_at_equals_mask_logits_per_pair(head_type):
  """The loss's one-call masks: values and gradients (features, projection
  variables) as `mask_logits` per (level, size) on the pure-TF backend."""
  config = _small_config(head_type)
  config.ops_backend = "custom"
  tf_keras.backend.set_floatx("float64")
  try:
    model = _build(config, batch=2)
    features = {k: tf.constant(v) for k, v in model(tf.random.normal(
        [2, IMAGE, IMAGE, 3], seed=5, dtype=tf.float64))[
            "mask_features"].items()}
  finally:
    tf_keras.backend.set_floatx("float32")
  head = model.head
  rng = np.random.RandomState(6)
  windows, dys = [], []
  for level in (2, 3, 5):
    for size_index in (1, 0):
      grid = IMAGE // 2**level
      indices = np.stack([rng.randint(0, 2, 4), rng.randint(0, grid, 4),
                          rng.randint(0, grid, 4)], 1).astype(np.int32)
      windows.append((level, size_index, indices))
      side = head.mask_side(level, size_index)
      dys.append(rng.uniform(-1, 1, (4, side, side)))
  variables = [v for v in model.trainable_variables
               if "mask_projection" in v.name]
  sources = [features, variables]

  def masks_and_grads(masks_fn):
    with tf.GradientTape() as tape:
      tape.watch(features)
      masks = masks_fn()
      loss = tf.add_n([tf.reduce_sum(m * dy) for m, dy in zip(masks, dys)])
    return masks, tf.nest.flatten(tape.gradient(loss, sources))

  got = masks_and_grads(lambda: head.mask_logits_at(features, windows))
  head._config_dict["ops_backend"] = "tf"  # The reference: pure TF per pair.
  want = masks_and_grads(lambda: [head.mask_logits(features, *window)
                                  for window in windows])
  for got_part, want_part in zip(got, want):
    for g, w in zip(got_part, want_part):
      if w is None:  # Level 4's features: no window reads them.
        assert g is None
      else:
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-10)


def test_head_config_round_trip():
  head = tensormask_head.TensorMaskHead(
      min_level=2, max_level=4, num_classes=5, mask_sides=(4, 6),
      head_type="upscale_aligned", upscale_factor=2,
      upscale_interpolation="nearest", ops_backend="tf")
  config = head.get_config()
  clone = tensormask_head.TensorMaskHead.from_config(config)
  assert clone.get_config() == config


@pytest.mark.parametrize("kwargs,message", [
    ({"head_type": "dense"}, "head_type must be one of"),
    ({"head_type": "upscale_natural", "upscale_factor": 2},
     "upscale_factor >= 1 that divides every mask side"),
    ({"min_level": 4, "max_level": 3}, "min_level 4 > max_level 3"),
])
def test_head_rejects_bad_config(kwargs, message):
  args = {"min_level": 2, "max_level": 4, "num_classes": 2,
          "mask_sides": (11, 15), **kwargs}
  with pytest.raises(ValueError, match=message):
    tensormask_head.TensorMaskHead(**args)


def test_input_size_must_fit_the_coarsest_level():
  with pytest.raises(ValueError,
                     match="must be a multiple of 32 for decoder 'fpn'"):
    factory.build_tensormask_model(
        tf_keras.layers.InputSpec(shape=[1, 100, 128, 3]), _small_config())


def test_training_step_compiles_with_xla_on_the_pure_tf_backend():
  config = _small_config()
  config.windows.base_sides = [16, 24]
  config.ops_backend = "tf"  # XLA cannot compile the custom op.
  model = _build(config)
  spec = factory.window_spec(config)
  labels = _labels(spec)
  images = tf.random.normal([2, IMAGE, IMAGE, 3], seed=5)
  optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)

  step = training_helpers.make_train_step(model, spec, config.num_classes,
                                          optimizer, static_mask_shapes=True)
  compiled = tf.function(step, jit_compile=True)
  hlo = compiled.experimental_get_compiler_ir(images, labels)(stage="hlo")
  assert "gather" in hlo
  first = compiled(images, labels)
  second = compiled(images, labels)
  assert float(first["num_positives"]) > 0
  for result in (first, second):
    assert all(np.isfinite(float(v)) for v in result.values())
  assert float(second["total_loss"]) < float(first["total_loss"])


def test_detections_traced_for_any_input_size_equal_the_static_run():
  # The gathered masks take run-time H and W, so inference (model and
  # post-processing) traces with the image size unknown, as an export for
  # any size does. (This model's backbone then runs at its built size only:
  # factory.runs_at_any_size.)
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from tests import tiny_experiment  # pylint: disable=g-import-not-at-top
  params = exp_factory.get_exp_config("tensormask_shapes")
  params.override(tiny_experiment.TINY_OVERRIDES, is_strict=True)
  config = params.task.model
  config.ops_backend = "tf"  # What exported graphs use.
  # Random weights: every window is a candidate. Natural masks (mask_size
  # 0) are the gathered op's output as it is.
  config.detection_generator.override({"score_threshold": 0.0,
                                       "max_detections": 20,
                                       "mask_size": 0})
  tf_keras.utils.set_random_seed(6)
  model = tiny_experiment.build_model(params)
  images = tf.random.stateless_uniform([1, *config.input_size[:2], 3],
                                       [6, 7], -1.0, 1.0)
  any_size = tf.function(
      lambda images: factory.detect(model, images, config),
      input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
  got = any_size(images)
  want = factory.detect(model, images, config)  # Static shapes, eagerly.
  assert set(got) == set(want)
  assert int(want["num_detections"][0]) == 20
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-5,
                               err_msg=key)

  # Random weights' detections may all be on one level (here level 2): the
  # masks of two windows (one at the grid's far corner) of every level and
  # size as well.
  features = model(images, training=False)["mask_features"]  # P2 grid.
  windows = [(level, a, tf.constant([[0, 1, 2], [0, grid - 1, grid - 1]]))
             for level, grid in ((int(k), config.input_size[0] // 2**int(k))
                                 for k in features)
             for a in range(2)]
  masks = lambda features: [model.head.mask_logits(features, *w)
                            for w in windows]
  any_size = tf.function(masks, input_signature=[{
      k: tf.TensorSpec([1, None, None, f.shape[-1]]) for k, f in
      features.items()}])
  for got, want in zip(any_size(features), masks(features)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_default_input_size_fits_the_coarsest_level():
  config = tensormask_config.TensorMaskModel()
  stride = 2**config.max_level
  assert all(v % stride == 0 for v in config.input_size[:2])
  assert config.input_size[0] >= 800 and config.input_size[1] >= 1333


# ---------------------------------------------------------------------------
# The head's numbers against a numpy float64 reference of docs/model.md.
# ---------------------------------------------------------------------------
# (head widths, P2 grid side): the small head, and one wide enough, on a
# grid large enough, for its 3x3 convolutions to run as Winograd at
# inference (ops.winograd_pays_off) on P2.
REFERENCE_HEADS = {"small": (32, 16, 32), "winograd": (128, 128, 40)}


@pytest.mark.parametrize("variant", sorted(REFERENCE_HEADS))
def test_head_matches_a_numpy_reference_of_the_spec(variant):
  """Class and box towers (conv3x3 + ReLU, then logits / deltas), and the
  bipyramid: each level's mask-tower feature upsampled by 2**k to the P2 grid
  (half-pixel bilinear), cropped, added to P2's, through the shared fuse
  conv3x3 + ReLU. `call` returns the same three parts."""
  width, mask_width, side = REFERENCE_HEADS[variant]
  config = _small_config(class_filters=width, box_filters=mask_width,
                         mask_filters=mask_width)
  config.decoder.fpn.num_filters = width
  model = _build(config)
  # Non-trivial weights: the init's std of 0.01 would make every term tiny;
  # wider than 32 input channels, scaled down so values stay O(1).
  rng = np.random.RandomState(0)
  for variable in model.head.trainable_variables:
    fan_in = variable.shape[-2] if variable.shape.rank == 4 else 1
    bound = 0.3 * min(1.0, (32 / fan_in)**0.5)
    variable.assign(rng.uniform(-bound, bound, variable.shape))
  features = {str(k): tf.random.normal([2, side // 2**(k - 2),
                                        side // 2**(k - 2), width], seed=k)
              for k in range(2, 6)}
  head = model.head
  graph = tf.function(head).get_concrete_function(features).graph
  uses_winograd = any(op.type == "GatherNd" for op in graph.get_operations())
  assert uses_winograd == (variant == "winograd")
  class_outputs, box_outputs, mask_features = head(features)
  towers = {"class": head._class_tower, "box": head._box_tower,  # pylint: disable=protected-access
            "mask": head._mask_tower}  # pylint: disable=protected-access
  relu = lambda v: np.maximum(v, 0.0)
  tower_out = {}
  for name, layers in towers.items():
    for k in range(2, 6):
      y = np.asarray(features[str(k)], np.float64)
      for layer in layers:
        y = relu(conv_reference.layer_conv3x3(y, layer))
      tower_out[name, k] = y
  def assert_close(got, want):
    # Winograd's float32 rounding is ~1e-5 of the largest value.
    np.testing.assert_allclose(got, want, rtol=1e-4,
                               atol=max(1e-4, 2e-5 * np.abs(want).max()))

  for k in range(2, 6):
    assert_close(class_outputs[str(k)],
                 conv_reference.layer_conv3x3(tower_out["class", k], head._class_logits))  # pylint: disable=protected-access
    assert_close(box_outputs[str(k)],
                 conv_reference.layer_conv3x3(tower_out["box", k], head._box_deltas))  # pylint: disable=protected-access
    base = tower_out["mask", 2]
    up = conv_reference.upsample_bilinear(tower_out["mask", k], 2**(k - 2))
    up = up[:, :base.shape[1], :base.shape[2]]
    assert_close(mask_features[str(k)],
                 relu(conv_reference.layer_conv3x3(up + base, head._fuse)))  # pylint: disable=protected-access
  # The public parts are what `call` is made of.
  for part, whole in ((head.class_outputs, class_outputs),
                      (head.box_outputs, box_outputs),
                      (head.mask_features, mask_features)):
    tf.nest.map_structure(np.testing.assert_array_equal, part(features),
                          whole)
