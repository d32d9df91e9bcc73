"""Orientation buckets (parser.orientation_buckets): landscape and portrait
images padded to their own bucket, batched by orientation, and the step
run in each batch's own orientation. The reference everywhere is the
pipeline without buckets at the image's own bucket size (each image alone),
whose parser and model are tested against the release elsewhere."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official.core import exp_factory
from official.core import task_factory
from official.vision.dataloaders import tf_example_decoder
from official.vision.ops import preprocess_ops
from tensormask_tf.configs import experiments  # noqa: F401  (registers)
from tensormask_tf.data import coco_tfrecord
from tensormask_tf.data import shapes_dataset
from tensormask_tf.dataloaders import tensormask_input
from tensormask_tf.serving import export_module
from tensormask_tf.tasks import tensormask  # noqa: F401  (registers the task)
from tests import training_helpers

REPO = os.path.join(os.path.dirname(__file__), "..")
LANDSCAPE, PORTRAIT = (96, 160), (160, 96)  # (height, width), exact sizes


@pytest.fixture(scope="module")
def mixed_records(tmp_path_factory):
  """3 landscape and 2 portrait shapes images, written in that order:
  {"landscape", "portrait", "both"} TFRecord patterns and their JSON."""
  root = tmp_path_factory.mktemp("orientations")
  out = {}
  for name, (height, width), count in (("landscape", LANDSCAPE, 3),
                                       ("portrait", PORTRAIT, 2)):
    json_path = shapes_dataset.write_shapes_dataset(
        str(root), name, count, height=height, width=width, max_objects=3,
        seed=count)
    coco_tfrecord.write_coco_tfrecords(
        json_path, str(root / name), str(root / "tfrecords" / name), 1)
    out[name] = str(root / "tfrecords" / f"{name}*")
  out["both"] = out["landscape"] + "," + out["portrait"]
  return out


def _params(input_path: str, batch: int = 2):
  """The COCO recipe (buckets, the release's backbone and FPN) shrunk to
  run in seconds: 4 classes, P2..P5, small heads, images at their size."""
  params = exp_factory.get_exp_config("tensormask_r50_fpn_coco_1x")
  parser = {"short_side": min(LANDSCAPE), "long_side": max(LANDSCAPE),
            "orientation_buckets": True,
            # Caps that never bind: no random subset of the positives.
            "mask_caps": [400],
            "aug_rand_hflip": False}
  data = {"input_path": input_path, "global_batch_size": batch,
          "parser": parser}
  params.override({"task": {
      "model": {"num_classes": 4, "category_ids": [], "max_level": 5,
                "input_size": [*LANDSCAPE, 3],
                "windows": {"base_sides": [24, 40]},
                "decoder": {"detectron2_fpn": {"num_filters": 32}},
                "head": {"num_convs": 1, "class_filters": 16,
                         "box_filters": 8, "mask_filters": 8},
                "detection_generator": {"score_threshold": 0.0,
                                        "max_detections": 20}},
      "init_checkpoint": "", "annotation_file": None,
      "train_data": dict(data, shuffle_buffer_size=1),
      "validation_data": data}}, is_strict=True)
  return params


def _model(params):
  tf_keras.utils.set_random_seed(5)
  task, model, _ = training_helpers.build_task(params)
  return task, model


def _task(params):
  return task_factory.get_task(params.task)


def _batches(params, training: bool = False):
  """Every batch of the validation split, or the training split's first
  (training repeats the records forever)."""
  data = params.task.train_data if training else params.task.validation_data
  dataset = _task(params).build_inputs(data)
  return list(dataset.take(1) if training else dataset)


def _parser(params, training: bool = False, size=None):
  """The task's parser, or without buckets at input `size` (its check that
  both orientations fit one input set aside: the records it is given have
  one orientation)."""
  if size is not None:
    params = params.replace()  # A copy.
    params.task.model.input_size = [max(size), max(size), 3]
    for data in (params.task.train_data, params.task.validation_data):
      data.parser.orientation_buckets = False
  data = params.task.train_data if training else params.task.validation_data
  parser = _task(params).build_parser(data)
  if size is not None:
    parser._output_size = parser._padded_size = size  # pylint: disable=protected-access
  return parser


def _records(params, training: bool = False) -> tf.data.Dataset:
  """Decoded examples of the split's records, in file order."""
  data = params.task.train_data if training else params.task.validation_data
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
  files = sorted(tf.io.gfile.glob(data.input_path))
  return tf.data.TFRecordDataset(files).map(decoder.decode)


def _alone_batches(params, size, training: bool = False):
  """The records through the parser without buckets at input `size`, in
  one batch."""
  return list(_records(params, training).map(
      _parser(params, training, size).parse_fn(training)).batch(8))


def _mask_rows(labels: dict, pair: str, image: int):
  """One image's valid mask rows of a (level, size) pair, sorted by grid
  position: (indices, weights, targets)."""
  valid = labels[f"mask_valid_{pair}"][image].numpy()
  rows = np.nonzero(valid)[0]
  indices = labels[f"mask_indices_{pair}"][image].numpy()[rows]
  order = np.lexsort(indices.T[::-1])
  rows = rows[order]
  return (indices[order], valid[rows],
          labels[f"mask_targets_{pair}"][image].numpy()[rows])


def test_coco_experiments_use_buckets_of_the_release_padding():
  for name in ("tensormask_r50_fpn_coco_1x", "tensormask_r50_fpn_coco_6x",
               "tensormask_r101_fpn_coco_6x"):
    task = exp_factory.get_exp_config(name).task
    assert task.train_data.parser.orientation_buckets, name
    assert task.validation_data.parser.orientation_buckets, name
    # 800 x 1333 rounded up to multiples of 32 (the release's padding).
    assert task.model.input_size[:2] == [800, 1344], name


def test_every_batch_has_one_orientation_and_every_image_comes_once(
    mixed_records):
  # Landscape images first in the files: batches of 2 are L L, then the
  # partial last ones (L alone, P P), each image exactly once.
  params = _params(mixed_records["both"])
  batches = _batches(params)
  shapes, ids = [], []
  for images, labels in batches:
    portrait = labels["portrait"].numpy()
    assert portrait.all() or not portrait.any()
    # Every example is stored at the landscape bucket.
    assert images.shape[1:] == (*LANDSCAPE, 3)
    shapes.append((len(portrait), bool(portrait[0])))
    ids.extend((bool(p), i) for p, i in zip(
        portrait, labels["source_id"].numpy().tolist()))
  assert sorted(shapes) == [(1, False), (2, False), (2, True)]
  assert sorted(ids) == [(False, b"1"), (False, b"2"), (False, b"3"),
                         (True, b"1"), (True, b"2")]


def test_stored_portrait_examples_are_the_portrait_examples_transposed(
    mixed_records):
  bucketed = _batches(_params(mixed_records["portrait"]))
  alone = _alone_batches(_params(mixed_records["portrait"]), PORTRAIT)
  assert len(bucketed) == len(alone) == 1
  (images, labels), (want_images, want_labels) = bucketed[0], alone[0]
  assert labels["portrait"].numpy().all()
  assert images.shape == (2, *LANDSCAPE, 3)
  np.testing.assert_array_equal(np.transpose(images, [0, 2, 1, 3]),
                                want_images)
  seen = tensormask_input.run_in_orientation(
      lambda images, labels: (images, labels), images, labels)
  np.testing.assert_array_equal(seen[0], want_images)
  for key, want in want_labels.items():
    if key.startswith("mask_"):
      continue  # Rows in random order: compared as sets below.
    np.testing.assert_array_equal(seen[1][key], want, err_msg=key)
  for key in want_labels:
    if key.startswith("mask_indices_"):
      pair = key[len("mask_indices_"):]
      for n in range(2):
        got, expected = _mask_rows(seen[1], pair, n), _mask_rows(
            want_labels, pair, n)
        for g, e in zip(got, expected):
          np.testing.assert_array_equal(g, e, err_msg=f"{pair} image {n}")
  assert float(tf.reduce_sum(want_labels["num_positives"])) > 0
  assert float(tf.reduce_sum(want_labels["num_mask_positives_dropped"])) == 0


def test_static_image_sides_pick_the_bucket_without_a_branch(mixed_records):
  # Eager decoded examples have static sides: the other orientation's
  # padding cannot trace, so the parser picks the bucket in Python.
  params = _params(mixed_records["portrait"])
  parse = _parser(params).parse_fn(False)
  decoded = next(iter(_records(params)))
  image, labels = parse(decoded)
  want_image, want_labels = next(iter(_records(params).map(parse)))
  assert bool(labels["portrait"]) and image.shape == (*LANDSCAPE, 3)
  np.testing.assert_array_equal(image, want_image)
  for k in range(2, 6):
    np.testing.assert_array_equal(labels[f"class_targets_{k}"],
                                  want_labels[f"class_targets_{k}"])


def test_landscape_and_portrait_images_give_the_same_detections_as_alone(
    mixed_records):
  # Evaluation through the bucketed pipeline (one batch of each
  # orientation) against each orientation's images through the pipeline
  # without buckets at their own size: the same model weights, the same
  # detections and losses.
  params = _params(mixed_records["both"], batch=4)
  task, model = _model(params)
  found = {}
  for images, labels in _batches(params):
    logs = task.validation_step((images, labels), model)
    portrait = bool(labels["portrait"][0])
    found[portrait] = logs
  assert sorted(found) == [False, True]
  for portrait, size in ((False, LANDSCAPE), (True, PORTRAIT)):
    name = "portrait" if portrait else "landscape"
    (batch,) = _alone_batches(_params(mixed_records[name]), size)
    want = task.validation_step(batch, model)
    got = found[portrait]
    assert got["coco_predictions"]["images"].shape[1:3] == size
    for key in ("num_detections", "detection_boxes", "detection_scores",
                "detection_classes", "detection_windows",
                "detection_mask_sides", "detection_mask_values"):
      np.testing.assert_allclose(got["coco_predictions"][key],
                                 want["coco_predictions"][key], atol=1e-5,
                                 err_msg=f"{name} {key}")
    assert int(got["coco_predictions"]["num_detections"][0]) > 0
    np.testing.assert_allclose(got[task.loss], want[task.loss],
                               rtol=1e-5)


def test_a_portrait_training_step_has_the_gradients_of_its_own_orientation(
    mixed_records):
  params = _params(mixed_records["portrait"])
  task, model = _model(params)
  ((images, labels),) = _batches(params, training=True)
  ((want_images, want_labels),) = _alone_batches(params, PORTRAIT,
                                                 training=True)

  def losses_and_grads(run):
    with tf.GradientTape() as tape:
      result = run(lambda images, labels: task.build_losses(
          model(images, training=True), labels, model))
    return result["total_loss"], tape.gradient(result["total_loss"],
                                               model.trainable_variables)

  loss, grads = losses_and_grads(lambda fn: tf.function(
      tensormask_input.run_in_orientation)(fn, images, labels))
  want_loss, want_grads = losses_and_grads(
      lambda fn: fn(want_images, want_labels))
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for g, w, v in zip(grads, want_grads, model.trainable_variables):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=v.name)


def test_buckets_need_the_short_side_resize_and_a_model_of_any_size(
    mixed_records):
  params = _params(mixed_records["both"])
  params.task.validation_data.parser.short_side = 0
  with pytest.raises(ValueError, match="orientation_buckets needs short_side"):
    _batches(params)
  params = _params(mixed_records["both"])
  params.task.model.backbone.type = "resnet"
  with pytest.raises(ValueError, match="runs at any input size"):
    _batches(params)
  params = _params(mixed_records["both"])
  params.task.validation_data.parser.long_side = 200
  with pytest.raises(ValueError, match="fits its bucket"):
    _batches(params)


_REPLICAS_SCRIPT = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import json
import numpy as np
import tf_keras
from tests import test_orientation_buckets as t

params = t._params(sys.argv[1], batch=1)
params.task.losses.l2_weight_decay = 0.0
batches = t._batches(params)
landscape = next(b for b in batches if not b[1]["portrait"][0])
portrait = next(b for b in batches if b[1]["portrait"][0])
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
  task, model = t._model(params)
  optimizer = tf_keras.optimizers.SGD(1.0)
variables = model.trainable_variables
# The reference, on one device: both images' losses over the positives of
# both, each image in its own orientation.
normalizer = sum(float(tf.reduce_sum(b[1]["num_positives"]))
                 for b in (landscape, portrait))
with tf.GradientTape() as tape:
  loss = sum(t.tensormask_input.run_in_orientation(
      lambda images, labels: task.build_losses(
          model(images, training=True), labels, model,
          normalizer=tf.constant(normalizer)), *batch)["total_loss"]
             for batch in (landscape, portrait))
expected = [v.numpy() - g.numpy()
            for v, g in zip(variables, tape.gradient(loss, variables))]
# Replica 0 gets the landscape batch, replica 1 the portrait one.
inputs = strategy.experimental_distribute_values_from_function(
    lambda context: (landscape, portrait)[context.replica_id_in_sync_group])
logs = strategy.run(tf.function(
    lambda batch: task.train_step(batch, model, optimizer)), args=(inputs,))
logged = [float(v) for v in strategy.experimental_local_results(
    logs[task.loss])]
worst = max(float(np.max(np.abs(v.numpy() - e) / (np.abs(e).max() + 1e-12)))
            for v, e in zip(variables, expected))
print("RESULT", json.dumps([float(loss), logged, worst]))
"""


# Slow (about 90 s on 2 cores): tests/test_distributed.py checks mirrored
# training in the fast suite.
@pytest.mark.slow
def test_replicas_with_batches_of_both_orientations_train_as_one_device(
    mixed_records):
  # MirroredStrategy over 2 logical CPUs (a fresh process: logical devices
  # are fixed when TensorFlow starts): one replica's batch is landscape,
  # the other's portrait, so they take different branches of the step; the
  # update is one device's SGD step on both images.
  result = subprocess.run(
      [sys.executable, "-c", _REPLICAS_SCRIPT, mixed_records["both"]],
      capture_output=True, text=True, timeout=600, check=False, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT"))
  loss, logged, worst = json.loads(line[len("RESULT"):])
  # Each replica logs its share times the replicas; the trainer averages
  # them into the global loss.
  assert np.mean(logged) == pytest.approx(loss, rel=1e-5)
  assert worst < 1e-5


@pytest.mark.slow  # About 50 s: an export of the bucketed model.
def test_served_images_get_the_detections_of_evaluation(mixed_records,
                                                         tmp_path):
  # The export module (pure-TF ops) serves a batch of one orientation at
  # its bucket: the evaluation's detections, in the original pixels (the
  # images are at scale 1). A batch of both orientations runs at the square
  # that holds them.
  params = _params(mixed_records["both"], batch=4)
  task, model = _model(params)
  checkpoint = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
  module = export_module.TensorMaskExportModule(params, checkpoint)
  pictures = {}
  for images, labels in _batches(params):
    portrait = bool(labels["portrait"][0])
    want = task.validation_step((images, labels), model)["coco_predictions"]
    image = tensormask_input.run_in_orientation(
        lambda images, labels: images, images, labels)[:1]
    pixels = tf.cast(tf.round(image * preprocess_ops.STDDEV_RGB +
                              preprocess_ops.MEAN_RGB), tf.uint8)
    pictures[portrait] = pixels[0].numpy()
    got = module.serve_image_tensors(pixels)
    count = int(want["num_detections"][0])
    assert count > 0 and int(got["num_detections"][0]) == count
    np.testing.assert_allclose(got["detection_scores"][0],
                               want["detection_scores"][0], atol=1e-4)
    np.testing.assert_allclose(got["detection_boxes"][0, :count],
                               np.clip(want["detection_boxes"][0, :count], 0,
                                       np.tile(pixels.shape[1:3], 2)),
                               atol=1e-2)
  encoded = [tf.io.encode_png(pictures[p]) for p in (False, True)]
  both = module.serve_encoded_images(tf.stack(encoded))
  assert both["detection_boxes"].shape == (2, 20, 4)
  assert min(both["num_detections"].numpy()) > 0


# Slow (about 85 s): tests/test_tensormask_model.py compiles a training
# step with XLA in the fast suite.
@pytest.mark.slow
def test_the_bucketed_loss_and_gradients_compile_with_xla(mixed_records):
  # Both orientation branches are static: XLA compiles the loss and its
  # gradients (pure-TF ops, static mask shapes, as train.prepare_params sets
  # for XLA; the release FPN's upsampling as reshape + tile, whose gradient
  # XLA compiles) and gives them as without XLA on a portrait batch.
  params = _params(mixed_records["portrait"])
  params.task.model.ops_backend = "tf"
  params.task.losses.static_mask_shapes = True
  task, model = _model(params)
  ((images, labels),) = _batches(params, training=True)
  # (The string source ids are not a tensor XLA takes.)
  labels = {k: v for k, v in labels.items() if k != "source_id"}

  def loss_and_gradients(images, labels):
    with tf.GradientTape() as tape:
      loss = tensormask_input.run_in_orientation(
          lambda images, labels: task.build_losses(
              model(images, training=True), labels, model)["total_loss"],
          images, labels)
    return loss, tape.gradient(loss, model.trainable_variables)

  got_loss, got = tf.function(loss_and_gradients, jit_compile=True)(
      images, labels)
  want_loss, want = tf.function(loss_and_gradients)(images, labels)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-4)
  for variable, got_grad, want_grad in zip(model.trainable_variables, got,
                                           want):
    scale = max(float(tf.reduce_max(tf.abs(want_grad))), 1e-12)
    np.testing.assert_allclose(got_grad / scale, want_grad / scale,
                               atol=1e-3, err_msg=variable.name)
