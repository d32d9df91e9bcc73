"""Benchmark of TensorMask training and inference (issue 7).

    .venv/bin/python scripts/bench_model.py [--size 512] [--repeats 3]
        [--sections train,model_garden,coco_epoch,train_profile,inference,
                    memory,profile,input]
        [--train_runs 3] [--branch_runs 3] [--variants gathered,dense_held]
        [--batch 1] [--backbone model_garden|release]

All in one run on this machine, random-initialised weights, R50-FPN (for
TensorMask Model Garden's ResNet-50 and FPN, the model config's default, or
with --backbone release the release's msra_resnet and detectron2_fpn, as the
COCO experiments build it), batch 1,
an input of --size x --size (800 means 896x1408: an 800x1333 image padded
to the P7 stride, as the COCO pipeline does), median of
--repeats timed calls after one warm-up call; --precision bfloat16 (or
float16) runs every model under Keras' mixed policy of that type. Every
measurement runs in its own child process (same thread settings) with
TensorFlow's BFC allocator on the CPU (TF_CPU_ALLOCATOR_USE_BFC=true), whose
statistics give the peak memory held by tensors (weights included) during
the measured calls.

1. train: one training step with the mask loss computed from the gathered
   masks of the positives only (the task's default mask caps; "gathered":
   every (level, size) pair in one `head.mask_logits_at` call, as the task
   does, whose backward builds one feature gradient per level, not one per
   level and window size;
   "gathered_per_pair": one `head.mask_logits` call per pair) vs from the
   dense bipyramid (every window's mask, then the positives picked), the
   latter two ways: level by level ("dense": TensorFlow frees each level's
   masks once its positives are picked) and held as the original
   implementation holds it ("dense_held": every level's masks exist before
   any positive is picked); and the same step with the mask features but no
   masks ("features", always measured; --variants picks the others).
   Whole-step peaks move by ~250 MB with the executor's order (the median
   of --train_runs child processes is reported, the variants' runs taking
   turns; "mask branch MB" is a step's peak above the features step's),
   so each branch is
   also measured alone, from fixed mask features
   (projection, masks, mask loss, their gradients; median peak of
   --branch_runs child processes; 0 skips it), and "own" memory is that
   above the features-only branch. The variants' losses must agree to 1e-5.
   1b (train): the training step of each detector's registered COCO
   experiment (ours `tensormask_r50_fpn_coco_1x`, its MSRA ResNet's stem and
   res2 frozen; Model Garden's `maskrcnn_resnetfpn_coco` and
   `retinanet_resnetfpn_coco`) at the benchmark input, --batch images:
   the task from `task_factory.get_task`, `task.build_model()`, the
   experiment's own optimizer, `task.train_step` in a tf.function, on one
   synthetic decoded example (20 rectangles; 800x1333 at --size 800)
   parsed by the task's own training parser and repeated to the batch;
   step time, s per image, images/s, time / Mask R-CNN's, GFLOPs (TF
   profiler), peak memory.
   1c (train, or alone as coco_epoch): our step (as in 1b, the
   experiment's orientation-bucket parser) at the landscape bucket (the
   benchmark input, 896x1408 at --size 800, or --epoch_landscape HxW, e.g.
   the experiment's own 800x1344), the portrait bucket (its transpose: a
   portrait image, stored transposed, run in its own orientation) and the
   square both fit in (1408x1408: square padding), and the hours of one
   COCO train2017 epoch on this machine with square padding vs orientation
   buckets (COCO_TRAIN2017_LANDSCAPE_FRACTION landscape), their ratio
   (target <= 0.7) and their pixels' ratio.
   model_garden: 1b alone. train_profile: our COCO experiment's training
   step stage by stage (backbone, FPN, the class, box and mask towers per
   level, the bipyramid fuse, the fused mask projection, the losses, the
   optimizer), each stage's forward and backward a tf.function on the
   previous stage's outputs with a fixed random output gradient, and the
   whole step beside their sum.
2. inference: latency of this project's TensorMask (custom-op backend;
   the same with direct convolutions instead of the Winograd ones,
   "_direct"; pure-TF backend, as exported) vs Model Garden's
   RetinaNet and Mask R-CNN (R50-FPN, from Model Garden's own experiment
   configs), all keeping 100 detections (score threshold 0); network and
   post-processing timed separately where the model allows; FLOPs of the
   whole inference function from the TF profiler. Then the pure-TF
   function (with the Winograd convolutions, "tensormask_onnx", and
   without, "_direct") converted to ONNX by tf2onnx and run by onnxruntime
   with its default session options and with ONNXRUNTIME_TUNED; their
   memory is the process' RSS growth from creating the session (weights
   included), not TensorFlow's allocator peak.
3. memory: TensorMask inference peak memory keeping 50, 100 and 200
   detections.
   profile: TensorMask inference stage by stage (backbone, FPN, the head's
   class, box and mask parts, post-processing with 100 masks), each a
   tf.function timed on the previous stage's outputs, with its FLOPs.
4. input: images/s of the training input pipeline (shapes images written at
   the benchmark size) vs the training step's demand.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensormask_tf  # noqa: E402,F401  (log level before TF loads)
from bench_ops import median_time  # noqa: E402  (scripts/ is on sys.path)

REPO = os.path.join(os.path.dirname(__file__), "..")
# The train section's mask branches, gathered (what the task runs) first.
TRAIN_VARIANTS = ("gathered", "gathered_per_pair", "dense", "dense_held")
# onnxruntime's session options of the "tuned" rows (issue 30): see
# docs/benchmarks.md for what each was measured to do on this CPU.
ONNXRUNTIME_TUNED = {"intra_op_num_threads": 2,
                     "session.set_denormal_as_zero": "1"}
# COCO train2017: about 75% of images are wider than tall (width >= height
# goes to the landscape bucket).
COCO_TRAIN2017_LANDSCAPE_FRACTION = 0.75


def _input_size(size: int) -> list[int]:
  # 800x1333 padded to a multiple of the P7 stride (128).
  return [896, 1408] if size == 800 else [size, size]


def _reset_peak():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.experimental.reset_memory_stats("CPU:0")


def _peak_mb() -> float:
  """Peak bytes held by TF's CPU allocator since _reset_peak (children run
  with TF_CPU_ALLOCATOR_USE_BFC=true, which keeps these statistics)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20


# ---------------------------------------------------------------------------
# Children: each prints one JSON line.
# ---------------------------------------------------------------------------
def _tensormask_config(size: int, max_detections: int = 100,
                       backbone: str = "model_garden"):
  """TensorMask's model config; `backbone` "model_garden" (the config's
  default: Model Garden's ResNet-50 and FPN) or "release" (the release's
  msra_resnet and detectron2_fpn, as the COCO experiments)."""
  from tensormask_tf.configs import tensormask_config  # pylint: disable=g-import-not-at-top
  config = tensormask_config.TensorMaskModel(
      num_classes=80, input_size=_input_size(size) + [3])
  if backbone == "release":
    config.backbone = tensormask_config.Backbone(type="msra_resnet")
    config.decoder = tensormask_config.Decoder(type="detectron2_fpn")
  config.detection_generator.override({"score_threshold": 0.0,
                                       "max_detections": max_detections})
  return config


def _rectangles(rng, height: int, width: int, count: int = 20):
  """count random rectangles: boxes [count, 4] (pixels, yxyx), masks
  [count, height, width] float32."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  boxes, masks = [], []
  for _ in range(count):
    side = rng.uniform(16, 0.6 * min(height, width))
    y0 = rng.uniform(0, height - side)
    x0 = rng.uniform(0, width - side)
    boxes.append([y0, x0, y0 + side, x0 + side * rng.uniform(0.5, 1)])
    mask = np.zeros((height, width), np.float32)
    y, x = int(y0), int(x0)
    mask[y:int(boxes[-1][2]), x:int(boxes[-1][3])] = 1
    masks.append(mask)
  return np.array(boxes, np.float32), np.stack(masks)


def _scene(size: int, seed: int = 0):
  """A random image with 20 rectangles' boxes, classes and masks."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  height, width = _input_size(size)
  image = rng.normal(size=(1, height, width, 3)).astype(np.float32)
  boxes, masks = _rectangles(rng, height, width)
  return (image, boxes, rng.randint(0, 80, 20).astype(np.int32), masks)


def _original_size(height: int, width: int) -> tuple[int, int]:
  """The decoded image's size for an input of height x width: COCO's
  800x1333 (what the COCO resize makes of most of its images), oriented as
  the input, where the input holds it (the parsers resize it: --size 800's
  inputs), else the input's own size."""
  if min(height, width) >= 800 and max(height, width) >= 1333:
    return (800, 1333) if width >= height else (1333, 800)
  return height, width


def _decoded_example(height: int, width: int, seed: int = 0) -> dict:
  """A decoded COCO example as Model Garden's `TfExampleDecoder(
  include_mask=True)` gives it: a random uint8 image of height x width with
  20 rectangles (normalized boxes, COCO category ids, their masks)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensormask_tf.configs import tensormask_config  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  image = rng.randint(0, 256, (height, width, 3)).astype(np.uint8)
  boxes, masks = _rectangles(rng, height, width)
  classes = rng.choice(tensormask_config.COCO_CATEGORY_IDS, len(boxes))
  return {
      "source_id": tf.constant("0"),
      "image": tf.constant(image),
      "height": tf.constant(height, tf.int64),
      "width": tf.constant(width, tf.int64),
      "groundtruth_classes": tf.constant(classes, tf.int64),
      "groundtruth_is_crowd": tf.zeros([len(boxes)], tf.bool),
      "groundtruth_area": tf.constant(masks.sum((1, 2)), tf.float32),
      "groundtruth_boxes": tf.constant(
          boxes / np.float32([height, width, height, width])),
      "groundtruth_instance_masks": tf.constant(masks),
  }


def _natural_masks_mb(model, spec, config, labels, mask_branch) -> float:
  """MB of natural mask logits the branch computes (float32, one image).

  The dense bipyramid is every window of every level and size,
  H_k * W_k * (lam * S)^2 values each; the gathered branch computes the
  positives' rows of the mask caps only (the task's default; the padding
  rows too with `losses.static_mask_shapes`).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  height, width = config.input_size[:2]
  values = 0
  for k in spec.levels:
    stride = 2**k
    for a in range(spec.num_sizes):
      side = model.head.mask_side(k, a)
      if mask_branch.startswith("gathered"):
        windows = int(tf.math.count_nonzero(labels[f"mask_valid_{k}_{a}"]))
      elif mask_branch.startswith("dense"):
        windows = (height // stride) * (width // stride)
      else:
        windows = 0
      values += windows * side * side
  return 4 * values / 2**20


def child_train(size: int, mask_branch: str, repeats: int,
                branch_only: bool = False,
                backbone: str = "model_garden") -> dict:
  """One SGD step; mask_branch: gathered, dense, dense_held, or features (the
  mask features are computed and back-propagated, no masks)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tensormask_tf import losses  # pylint: disable=g-import-not-at-top
  from tensormask_tf.modeling import factory  # pylint: disable=g-import-not-at-top
  from tensormask_tf.ops import window_labeler  # pylint: disable=g-import-not-at-top
  from tensormask_tf.configs import tensormask_config  # pylint: disable=g-import-not-at-top
  from tensormask_tf.tasks import tensormask as tensormask_task  # pylint: disable=g-import-not-at-top
  config = _tensormask_config(size, backbone=backbone)
  # The compiled op, as training on CPU uses by default; "auto" would fall
  # back to pure TF (one warning) on a stale library and measure that.
  config.ops_backend = "custom"
  tf_keras.utils.set_random_seed(0)  # Python, numpy and TF: same weights.
  model = factory.build_tensormask_model(
      tf_keras.layers.InputSpec(shape=[1] + config.input_size), config)
  spec = factory.window_spec(config)
  image, boxes, classes, masks = _scene(size)
  caps = tensormask_task.mask_caps(tensormask_config.Parser(),
                                   config.min_level, config.max_level)
  labels = window_labeler.label_windows(
      spec, tuple(config.input_size[:2]), boxes, classes, masks, caps, seed=0)
  labels = {k: v[None] for k, v in labels.items()}
  optimizer = tf_keras.optimizers.SGD(0.0)  # Same weights every step.

  def positives(every, k, a, idx):
    """[K, M, M] masks of the windows idx from every window's masks."""
    side = model.head.mask_side(k, a)
    return tf.reshape(tf.gather_nd(every, idx), [-1, side, side])

  def masks_at_windows_fn(outputs):
    """The losses' `([(level, a, indices)]) -> [masks]` of the branch."""
    features = outputs["mask_features"]
    if mask_branch == "gathered":
      return lambda windows: model.head.mask_logits_at(features, windows)
    per_pair = per_pair_masks_fn(features)
    return lambda windows: [per_pair(*window) for window in windows]

  def per_pair_masks_fn(features):
    if mask_branch == "gathered_per_pair":
      # Each pair's masks on their own (before mask_logits_at): each
      # pair's backward makes its own feature gradient.
      return lambda k, a, idx: model.head.mask_logits(features, k, a, idx)
    if mask_branch == "dense":
      return lambda k, a, idx: positives(
          model.head.mask_logits(features, k, a), k, a, idx)
    if mask_branch == "dense_held":
      # The whole bipyramid first: no positive is picked (so no level's
      # masks can be freed) before every level's masks exist.
      bipyramid = {(k, a): model.head.mask_logits(features, k, a)
                   for k in spec.levels for a in range(spec.num_sizes)}
      def dense_held(k, a, idx):
        with tf.control_dependencies(list(bipyramid.values())):
          return positives(bipyramid[(k, a)], k, a, idx)
      return dense_held
    # Zero logits that still depend on the level's mask features, so the
    # mask tower and the bipyramid run forward and backward.
    return lambda k, a, idx: 0.0 * tf.reduce_mean(features[str(k)]) + tf.zeros(
        [tf.shape(idx)[0]] + [model.head.mask_side(k, a)] * 2)

  @tf.function
  def step(images):
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      result = losses.tensormask_losses(
          outputs, labels, masks_at_windows_fn(outputs), spec.levels,
          spec.num_sizes, config.num_classes)
    grads = tape.gradient(result["total_loss"], model.trainable_variables)
    optimizer.apply_gradients(
        (g, v) for g, v in zip(grads, model.trainable_variables)
        if g is not None)
    return result

  images = tf.constant(image)
  natural_mb = _natural_masks_mb(model, spec, config, labels, mask_branch)
  if branch_only:
    # The mask branch alone: projection, mask representation, mask loss and
    # their gradients, from fixed mask features.
    features = {k: tf.constant(v) for k, v in
                model(images, training=True)["mask_features"].items()}
    variables = [v for v in model.trainable_variables
                 if "mask_projection" in v.name]

    @tf.function
    def branch(features):
      with tf.GradientTape() as tape:
        tape.watch(features)
        fn = masks_at_windows_fn({"mask_features": features})
        total = 0.0
        if mask_branch == "features":
          # Only the features' gradient, which every variant returns.
          total = tf.add_n([0.0 * tf.reduce_mean(f) for f in
                            features.values()])
        windows, mask_labels = [], []
        for k in spec.levels if mask_branch != "features" else ():
          for a in range(spec.num_sizes):
            cells = labels[f"mask_indices_{k}_{a}"][0]
            # The positives' rows, as the task's loss computes them.
            idx, targets, valid = losses.positive_mask_rows(
                tf.concat([tf.zeros_like(cells[:, :1]), cells], 1),
                labels[f"mask_targets_{k}_{a}"][0],
                labels[f"mask_valid_{k}_{a}"][0])
            windows.append((k, a, idx))
            mask_labels.append((targets, valid))
        for logits, (targets, valid) in zip(fn(windows) if windows else [],
                                            mask_labels):
          total += losses.mask_loss(logits, targets, valid)
      grads = tape.gradient(total, [features, variables])
      # (The "features" branch has no projection gradients.)
      return total, tf.add_n([tf.reduce_sum(g) for g in
                              tf.nest.flatten(grads) if g is not None])

    branch.get_concrete_function(features)
    _reset_peak()
    held = tf.config.experimental.get_memory_info("CPU:0")["current"] / 2**20
    seconds = median_time(lambda: branch(features)[0].numpy(), repeats)
    return {"seconds": seconds, "peak_mb": _peak_mb() - held,
            "mask_loss": float(branch(features)[0]), "natural_mb": natural_mb}
  step.get_concrete_function(images)
  _reset_peak()
  seconds = median_time(lambda: step(images)["total_loss"].numpy(), repeats)
  result = step(images)
  return {"seconds": seconds, "peak_mb": _peak_mb(),
          "natural_mb": natural_mb,
          "loss": float(result["total_loss"]),
          "mask_loss": float(result["mask_loss"]),
          "mask_windows": int(sum(int(tf.math.count_nonzero(v)) for k, v in
                                  labels.items() if k.startswith("mask_valid")))}


# train_task children: each detector's registered COCO experiment.
TRAIN_TASK_EXPERIMENTS = {"tensormask": "tensormask_r50_fpn_coco_1x",
                          "maskrcnn": "maskrcnn_resnetfpn_coco",
                          "retinanet": "retinanet_resnetfpn_coco"}


def _tensormask_parser(task, params):
  """The parser `TensorMaskTask.build_inputs` builds, and a note on its
  resize.

  The COCO experiment's resize (short side 800, long side at most 1333)
  must fit the input (with orientation buckets: its bucket); at an input it
  does not fit (a small --size) the sides become the input's own, so an
  image of the input's size is not resized.
  """
  model_config = params.task.model
  data = params.task.train_data
  parser_config = data.parser

  def build():
    return task.build_parser(data)

  def sides():
    return (f"short side {parser_config.short_side}, long side "
            f"{parser_config.long_side}" + (
                ", orientation buckets" if parser_config.orientation_buckets
                else ""))

  experiment = sides()
  try:
    return build(), experiment
  except ValueError as e:
    if "short_side" not in str(e):
      raise
    short, long = sorted(model_config.input_size[:2])
    parser_config.short_side = short
    parser_config.long_side = (long if parser_config.orientation_buckets
                               else short)
    return build(), f"{sides()} (the experiment's {experiment} does not fit)"


def _model_garden_parser(name: str, params):
  """The parser Model Garden's MaskRCNNTask / RetinaNetTask.build_inputs
  builds from the experiment."""
  from official.vision.dataloaders import maskrcnn_input  # pylint: disable=g-import-not-at-top
  from official.vision.dataloaders import retinanet_input  # pylint: disable=g-import-not-at-top
  model = params.task.model
  data = params.task.train_data
  parser = data.parser
  anchors = dict(
      output_size=model.input_size[:2], min_level=model.min_level,
      max_level=model.max_level, num_scales=model.anchor.num_scales,
      aspect_ratios=model.anchor.aspect_ratios,
      anchor_size=model.anchor.anchor_size, dtype=data.dtype,
      aug_rand_hflip=parser.aug_rand_hflip, aug_type=parser.aug_type,
      aug_scale_min=parser.aug_scale_min, aug_scale_max=parser.aug_scale_max,
      skip_crowd_during_training=parser.skip_crowd_during_training,
      max_num_instances=parser.max_num_instances)
  if name == "maskrcnn":
    return maskrcnn_input.Parser(
        rpn_match_threshold=parser.rpn_match_threshold,
        rpn_unmatched_threshold=parser.rpn_unmatched_threshold,
        rpn_batch_size_per_im=parser.rpn_batch_size_per_im,
        rpn_fg_fraction=parser.rpn_fg_fraction,
        aug_rand_vflip=parser.aug_rand_vflip,
        include_mask=model.include_mask,
        outer_boxes_scale=model.outer_boxes_scale,
        mask_crop_size=parser.mask_crop_size, **anchors)
  return retinanet_input.Parser(
      match_threshold=parser.match_threshold,
      unmatched_threshold=parser.unmatched_threshold,
      box_coder_weights=model.detection_generator.box_coder_weights,
      aug_rand_jpeg=parser.aug_rand_jpeg, pad=parser.pad,
      keep_aspect_ratio=parser.keep_aspect_ratio, **anchors)


def _train_task_setup(name: str, height: int, width: int, batch: int,
                      precision: str):
  """(task, model, optimizer, images, labels, info) of a task built from
  its registered COCO experiment, on one decoded example parsed by the
  task's own training parser, repeated `batch` times; info: {"portrait",
  "original", "resize"}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from official.core import task_factory  # pylint: disable=g-import-not-at-top
  # (Registering the tasks and experiments; the tasks import their configs.)
  from official.vision.tasks import maskrcnn, retinanet  # noqa: F401 pylint: disable=g-import-not-at-top,unused-import
  from tensormask_tf import registry_imports  # noqa: F401 pylint: disable=g-import-not-at-top,unused-import
  from tensormask_tf.dataloaders import tensormask_input  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  params = exp_factory.get_exp_config(TRAIN_TASK_EXPERIMENTS[name])
  params.task.model.input_size = [height, width, 3]
  # The images in the step's precision (Model Garden's COCO experiments
  # parse to bfloat16, for their TPU runtime).
  params.task.train_data.dtype = precision
  params.runtime.mixed_precision_dtype = precision
  task = task_factory.get_task(params.task)
  model = task.build_model()
  if name == "tensormask":
    parser, resize = _tensormask_parser(task, params)
  else:
    jitter = params.task.train_data.parser
    parser, resize = _model_garden_parser(name, params), (
        f"fit to the input, scale jitter {jitter.aug_scale_min}-"
        f"{jitter.aug_scale_max}")
  original = _original_size(height, width)
  decoded = _decoded_example(*original)
  # The decoder's shapes: sizes and counts unknown (with static ones, the
  # orientation buckets' tf.cond would trace the other bucket's branch with
  # sizes that cannot fit it, and fail).
  fixed = {"image": [None, None, 3], "groundtruth_boxes": [None, 4]}
  image, labels = tf.function(
      parser.parse_fn(is_training=True),
      input_signature=[{k: tf.TensorSpec(
          fixed.get(k, [None] * v.shape.rank), v.dtype)
                        for k, v in decoded.items()}])(decoded)
  # With orientation buckets a portrait example is stored transposed and
  # `train_step` runs it in its own orientation (in a tf.cond).
  portrait = bool(labels.get(tensormask_input.PORTRAIT_KEY, False))
  images, labels = tf.nest.map_structure(
      lambda t: tf.stack([t] * batch), (image, labels))
  optimizer = task.create_optimizer(params.trainer.optimizer_config,
                                    params.runtime)
  return task, model, optimizer, images, labels, {
      "portrait": portrait, "original": original, "resize": resize}


def child_train_task(name: str, height: int, width: int, repeats: int,
                     batch: int, precision: str) -> dict:
  """The training step of a task built from its registered COCO experiment
  (`task.train_step` in a tf.function, the experiment's own optimizer) on
  one decoded example parsed by the task's own parser, repeated `batch`
  times."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensormask_tf.dataloaders import tensormask_input  # pylint: disable=g-import-not-at-top
  task, model, optimizer, images, labels, info = _train_task_setup(
      name, height, width, batch, precision)
  portrait, original, resize = (info["portrait"], info["original"],
                                info["resize"])

  @tf.function
  def step(images, labels):
    return task.train_step((images, labels), model, optimizer, metrics=None)

  step(images, labels)  # Traces, and makes the optimizer's slots.
  _reset_peak()
  seconds = median_time(
      lambda: float(step(images, labels)[task.loss]), repeats)
  size = list(images.shape[1:3])
  result = {"seconds": seconds, "peak_mb": _peak_mb(), "batch": batch,
            "input": size[::-1] if portrait else size,
            "original": list(original), "resize": resize,
            "loss": float(step(images, labels)[task.loss])}
  try:  # Optional (a second or so): the step's graph, unfrozen; traced
    # without the orientation flag, whose tf.cond would hide the step in
    # its branches (a portrait step as stored, transposed: the same FLOPs).
    result["flops"] = _profile_flops(tf.function(
        lambda images, labels: task.train_step(
            (images, labels), model, optimizer)).get_concrete_function(
                images, {k: v for k, v in labels.items()
                         if k != tensormask_input.PORTRAIT_KEY}), freeze=False)
  except Exception:  # pylint: disable=broad-except
    pass
  return result


def child_train_profile(height: int, width: int, repeats: int,
                        precision: str) -> dict:
  """Seconds of each stage of our COCO training step (forward and
  backward), each a tf.function on fixed inputs (the previous stage's
  outputs) with a fixed random output gradient; and the whole step."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  task, model, optimizer, images, labels, _ = _train_task_setup(
      "tensormask", height, width, 1, precision)
  head = model.head
  result = {}

  def fwd_bwd(name, fn, inputs, variables, input_gradients=True):
    """Times fn's forward and its gradients (of `variables` and, when
    input_gradients, of `inputs`) for a random output gradient."""
    outputs = fn(inputs)
    cotangents = tf.nest.map_structure(
        lambda t: tf.random.normal(tf.shape(t), dtype=t.dtype), outputs)

    @tf.function
    def run(inputs, cotangents):
      with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = fn(inputs)
        proxy = tf.add_n([tf.reduce_sum(o * c) for o, c in zip(
            tf.nest.flatten(outputs), tf.nest.flatten(cotangents))])
      return tape.gradient(proxy, [inputs if input_gradients else [],
                                   variables])

    run(inputs, cotangents)
    result[name] = median_time(lambda: tf.nest.map_structure(
        lambda t: t.numpy(), run(inputs, cotangents)), repeats)
    return outputs

  def variables_of(*layers):
    return [v for layer in layers for v in layer.trainable_variables]

  endpoints = fwd_bwd("backbone", lambda x: model.backbone(x, training=True),
                      images, model.backbone.trainable_variables,
                      input_gradients=False)
  features = fwd_bwd("FPN", lambda x: model.decoder(x, training=True),
                     endpoints, model.decoder.trainable_variables)
  towers = {"class": (head._class_tower, head._class_logits),  # pylint: disable=protected-access
            "box": (head._box_tower, head._box_deltas),  # pylint: disable=protected-access
            "mask": (head._mask_tower, None)}  # pylint: disable=protected-access
  for tower, (convs, last) in towers.items():
    layers = list(convs) + ([last] if last is not None else [])

    def run_tower(x, layers=layers):
      for layer in layers:
        x = layer(x, training=True)
      return x

    for level in head.levels:
      fwd_bwd(f"{tower} tower P{level}", run_tower, features[str(level)],
              variables_of(*layers))
  mask_features = fwd_bwd(
      "mask towers + bipyramid fuse",
      lambda x: head.mask_features(x, training=True), features,
      variables_of(*head._mask_tower, head._fuse))  # pylint: disable=protected-access
  result["bipyramid fuse"] = result.pop("mask towers + bipyramid fuse") - sum(
      result[f"mask tower P{level}"] for level in head.levels)
  outputs = {"class_outputs": head.class_outputs(features, training=True),
             "box_outputs": head.box_outputs(features, training=True),
             "mask_features": mask_features}
  # The windows whose masks the loss asks for (the positives of the mask
  # caps), recorded on the way through the task's own loss.
  windows = []
  project = head.mask_logits_at
  head.mask_logits_at = lambda features, pairs: (
      windows.extend(pairs), project(features, pairs))[1]
  task.build_losses(dict(outputs), labels, model)
  head.mask_logits_at = project
  fwd_bwd("fused mask projection", lambda x: project(x, windows),
          mask_features, variables_of(*head._mask_projections))  # pylint: disable=protected-access
  fwd_bwd("losses (with the projection)",
          lambda x: task.build_losses(x, labels, model)["total_loss"],
          outputs, variables_of(*head._mask_projections))  # pylint: disable=protected-access
  result["losses"] = result.pop("losses (with the projection)") - result[
      "fused mask projection"]
  variables = model.trainable_variables
  gradients = [tf.random.normal(v.shape) * 1e-6 for v in variables]

  @tf.function
  def apply():
    optimizer.apply_gradients(zip(gradients, variables))

  apply()
  result["optimizer"] = median_time(apply, repeats)
  step = tf.function(lambda images, labels: task.train_step(
      (images, labels), model, optimizer))
  step(images, labels)
  result["whole step"] = median_time(
      lambda: float(step(images, labels)[task.loss]), repeats)
  return result


def _profile_flops(concrete_function, freeze: bool = True) -> float:
  """FLOPs of the function's graph from the TF profiler; freeze=False
  profiles the graph as it is, for functions that update variables (a
  training step), which cannot be frozen. Ops whose shapes are unknown
  until run time (the gathered masks) count for nothing."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top
  graph = concrete_function.graph
  if freeze:
    graph = convert_to_constants.convert_variables_to_constants_v2(
        concrete_function).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  info = tf.compat.v1.profiler.profile(graph=graph, options=options)
  return float(info.total_float_ops)


def child_inference(size: int, model_name: str, repeats: int,
                    max_detections: int = 100,
                    backbone: str = "model_garden") -> dict:
  """Latency (network, post-processing), FLOPs and peak memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  height, width = _input_size(size)
  images = tf.random.normal([1, height, width, 3], seed=1)
  if model_name.startswith("tensormask"):
    from tensormask_tf.modeling import factory  # pylint: disable=g-import-not-at-top
    config = _tensormask_config(size, max_detections, backbone)
    config.ops_backend = "tf" if model_name == "tensormask_tf" else "custom"
    winograd = not model_name.endswith("_direct")
    config.head.winograd_at_inference = winograd
    config.backbone.msra_resnet.winograd_at_inference = winograd
    config.decoder.detectron2_fpn.winograd_at_inference = winograd
    model = factory.build_tensormask_model(
        tf_keras.layers.InputSpec(shape=[1, height, width, 3]), config)
    network = tf.function(lambda x: model(x, training=False))
    post = tf.function(lambda outputs: factory.postprocess(
        model, outputs, (height, width), config))
    full = tf.function(lambda x: factory.postprocess(
        model, model(x, training=False), (height, width), config))
    kept = lambda: int(full(images)["num_detections"][0])
  else:
    from official.core import exp_factory  # pylint: disable=g-import-not-at-top
    from official.vision.modeling import factory as mg_factory  # pylint: disable=g-import-not-at-top
    from official.vision.ops import anchor  # pylint: disable=g-import-not-at-top
    params = exp_factory.get_exp_config(
        {"retinanet": "retinanet_resnetfpn_coco",
         "maskrcnn": "maskrcnn_resnetfpn_coco"}[model_name])
    params.task.model.detection_generator.override(
        {"pre_nms_score_threshold": 0.0, "max_num_detections": 100})
    model_config = params.task.model
    model_config.input_size = [height, width, 3]
    spec = tf_keras.layers.InputSpec(shape=[1, height, width, 3])
    build = (mg_factory.build_retinanet if model_name == "retinanet"
             else mg_factory.build_maskrcnn)
    model = build(spec, model_config)
    generator = anchor.build_anchor_generator(
        min_level=model_config.min_level, max_level=model_config.max_level,
        num_scales=model_config.anchor.num_scales,
        aspect_ratios=model_config.anchor.aspect_ratios,
        anchor_size=model_config.anchor.anchor_size)
    anchors = {k: v[None] for k, v in generator((height, width)).items()}
    shape = tf.constant([[height, width]], tf.float32)
    full = tf.function(lambda x: model(x, image_shape=shape,
                                       anchor_boxes=anchors, training=False))
    network = post = None
    if model_name == "retinanet":
      network = tf.function(
          lambda x: model.head(model.decoder(model.backbone(x))))
      post = tf.function(lambda outputs: model.detection_generator(
          outputs[1], outputs[0], anchors, shape, None))
    kept = lambda: int(full(images)["num_detections"][0])
  concrete = full.get_concrete_function(images)
  _reset_peak()
  total = median_time(lambda: tf.nest.map_structure(
      lambda t: t.numpy(), full(images)), repeats)
  result = {"seconds": total, "peak_mb": _peak_mb(),
            "detections": kept(), "flops": _profile_flops(concrete)}
  if network is not None:
    outputs = network(images)
    result["network_seconds"] = median_time(
        lambda: tf.nest.map_structure(lambda t: t.numpy(), network(images)),
        repeats)
    result["post_seconds"] = median_time(
        lambda: tf.nest.map_structure(lambda t: t.numpy(), post(outputs)),
        repeats)
  return result


def _onnx_path(size: int, model_name: str) -> str:
  """Where the onnx_export child writes a model for the onnxruntime
  children of the same run (a per-run folder, removed at the end)."""
  return os.path.join(os.environ["BENCH_ONNX_DIR"], f"{model_name}_{size}.onnx")


def child_onnx_export(size: int, model_name: str, backbone: str) -> dict:
  """Converts the pure-TF inference function of child_inference (the same
  random weights) to ONNX with tf2onnx; the seconds it took."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  import tf2onnx  # pylint: disable=g-import-not-at-top
  from tensormask_tf.modeling import factory  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  height, width = _input_size(size)
  config = _tensormask_config(size, 100, backbone)
  config.ops_backend = "tf"
  config.head.winograd_at_inference = not model_name.endswith("_direct")
  model = factory.build_tensormask_model(
      tf_keras.layers.InputSpec(shape=[1, height, width, 3]), config)
  full = tf.function(lambda x: factory.postprocess(
      model, model(x, training=False), (height, width), config),
      input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32)])
  start = time.perf_counter()
  tf2onnx.convert.from_function(full, input_signature=full.input_signature,
                                opset=17,
                                output_path=_onnx_path(size, model_name))
  return {"seconds": time.perf_counter() - start}


def child_onnxruntime(size: int, model_name: str, settings: str,
                      repeats: int) -> dict:
  """Latency and memory of an onnx_export child's model in onnxruntime on
  the same input as child_inference: peak RSS growth from before the
  session was created (the process has TensorFlow imported, unused);
  settings "default" (SessionOptions() as they come) or "tuned"
  (ONNXRUNTIME_TUNED)."""
  import resource  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import onnxruntime  # pylint: disable=g-import-not-at-top
  options = onnxruntime.SessionOptions()
  if settings == "tuned":
    for key, value in ONNXRUNTIME_TUNED.items():
      if key.startswith("session."):
        options.add_session_config_entry(key, value)
      else:
        setattr(options, key, value)
  base_mb = _rss_mb()
  session = onnxruntime.InferenceSession(
      _onnx_path(size, model_name), options,
      providers=["CPUExecutionProvider"])
  height, width = _input_size(size)
  images = np.random.default_rng(1).normal(
      size=(1, height, width, 3)).astype(np.float32)
  feed = {session.get_inputs()[0].name: images}
  names = [o.name for o in session.get_outputs()]
  total = median_time(lambda: session.run(None, feed), repeats)
  outputs = dict(zip(names, session.run(None, feed)))
  return {"seconds": total,
          "peak_rss_mb": resource.getrusage(
              resource.RUSAGE_SELF).ru_maxrss / 1024 - base_mb,
          "detections": int(outputs["num_detections"][0])}


def _rss_mb() -> float:
  """The process' resident memory now, MB (Linux)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return 0.0


def child_profile(size: int, repeats: int,
                  backbone: str = "model_garden") -> dict:
  """Seconds and FLOPs of each stage of TensorMask inference."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tensormask_tf.modeling import factory  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  height, width = _input_size(size)
  images = tf.random.normal([1, height, width, 3], seed=1)
  config = _tensormask_config(size, backbone=backbone)
  config.ops_backend = "custom"
  model = factory.build_tensormask_model(
      tf_keras.layers.InputSpec(shape=[1, height, width, 3]), config)
  head = model.head
  levels = model.backbone(images, training=False)
  features = model.decoder(levels, training=False)
  outputs = model(images, training=False)
  # (stage, its function, the previous stage's outputs it runs on)
  stages = [
      ("backbone", lambda x: model.backbone(x, training=False), images),
      ("FPN", lambda x: model.decoder(x, training=False), levels),
      ("head: class tower + logits", head.class_outputs, features),
      ("head: box tower + deltas", head.box_outputs, features),
      ("head: mask tower + bipyramid", head.mask_features, features),
      ("post-processing (100 masks)", lambda o: factory.postprocess(
          model, o, (height, width), config), outputs),
  ]
  result = {}
  for name, fn, inputs in stages:
    function = tf.function(fn)
    concrete = function.get_concrete_function(inputs)
    seconds = median_time(
        lambda f=function, x=inputs: tf.nest.map_structure(
            lambda t: t.numpy(), f(x)), repeats)
    result[name] = {"seconds": seconds, "flops": _profile_flops(concrete)}
  return result


def child_input(size: int, repeats: int) -> dict:
  """Images/s of the training pipeline over shapes images of this size."""
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from official.core import task_factory  # pylint: disable=g-import-not-at-top
  from tensormask_tf import registry_imports  # noqa: F401 pylint: disable=g-import-not-at-top,unused-import
  from tensormask_tf.data import coco_tfrecord  # pylint: disable=g-import-not-at-top
  from tensormask_tf.data import shapes_dataset  # pylint: disable=g-import-not-at-top
  height, width = [800, 1333] if size == 800 else _input_size(size)
  with tempfile.TemporaryDirectory() as root:
    json_path = shapes_dataset.write_shapes_dataset(
        root, "train", 16, height=height, width=width, max_objects=8, seed=0)
    coco_tfrecord.write_coco_tfrecords(json_path, os.path.join(root, "train"),
                                       os.path.join(root, "rec"), 1)
    # The COCO experiment's pipeline (short side 800, long side <= 1333),
    # or at other sizes a fixed square input.
    params = exp_factory.get_exp_config("tensormask_r50_fpn_coco_1x")
    data = params.task.train_data
    data.override({"input_path": os.path.join(root, "rec*"),
                   "global_batch_size": 1, "shuffle_buffer_size": 16})
    if size != 800:
      params.task.model.input_size = [height, width, 3]
      data.parser.override({"short_side": 0, "long_side": 0,
                            "orientation_buckets": False})
    task = task_factory.get_task(params.task)
    iterator = iter(task.build_inputs(data).repeat())
    next(iterator)
    count = 16 * repeats
    start = time.perf_counter()
    for _ in range(count):
      next(iterator)
    return {"images_per_second": count / (time.perf_counter() - start)}


def _child(args) -> dict:
  kind, size, repeats = args.child, args.size, args.repeats
  if args.precision != "float32":
    import tf_keras  # pylint: disable=g-import-not-at-top
    tf_keras.mixed_precision.set_global_policy(f"mixed_{args.precision}")
  if kind.startswith("train:"):
    return child_train(size, kind.split(":")[1], repeats,
                       backbone=args.backbone)
  if kind.startswith("mask_branch:"):
    return child_train(size, kind.split(":")[1], repeats, branch_only=True,
                       backbone=args.backbone)
  if kind.startswith("onnx_export:"):
    return child_onnx_export(size, kind.split(":")[1], args.backbone)
  if kind.startswith("onnxruntime:"):
    _, name, settings = kind.split(":")
    return child_onnxruntime(size, name, settings, repeats)
  if kind.startswith("inference:"):
    _, name, detections = kind.split(":")
    return child_inference(size, name, repeats, int(detections),
                           args.backbone)
  if kind == "input":
    return child_input(size, repeats)
  if kind == "profile":
    return child_profile(size, repeats, args.backbone)
  if kind.startswith("train_profile:"):
    height, width = (int(v) for v in kind.split(":")[1].split("x"))
    return child_train_profile(height, width, repeats, args.precision)
  if kind.startswith("train_task:"):
    _, name, hw = kind.split(":")
    height, width = (int(v) for v in hw.split("x"))
    return child_train_task(name, height, width, repeats, args.batch,
                            args.precision)
  raise ValueError(kind)


# ---------------------------------------------------------------------------
# The parent: runs the children, prints the tables.
# ---------------------------------------------------------------------------
def _run_child(kind: str, args) -> dict:
  command = [sys.executable, __file__, f"--child={kind}", f"--size={args.size}",
             f"--repeats={args.repeats}", f"--precision={args.precision}",
             f"--batch={args.batch}", f"--backbone={args.backbone}"]
  result = subprocess.run(command, capture_output=True, text=True,
                          check=False, cwd=REPO,
                          env={**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true"})
  if result.returncode:
    print(f"[{kind}] failed:\n{result.stderr[-3000:]}", file=sys.stderr)
    return {}
  return json.loads(result.stdout.strip().splitlines()[-1])


def _median_children(kinds: Sequence[str], args, runs: int) -> dict:
  """{kind: the run with the median peak of `runs` children, with the
  peaks' range}.

  The kinds take turns (run 1 of each, then run 2 of each, ...), so a drift
  of the machine's speed or of its memory state is spread over all of them.
  """
  results = {kind: [] for kind in kinds}
  for _ in range(runs):
    for kind in kinds:
      r = _run_child(kind, args)
      if r:
        results[kind].append(r)
  medians = {}
  for kind, rs in results.items():
    if not rs:
      medians[kind] = {}
      continue
    rs.sort(key=lambda r: r["peak_mb"])
    median = dict(rs[len(rs) // 2])
    median["peak_min_mb"] = rs[0]["peak_mb"]
    median["peak_max_mb"] = rs[-1]["peak_mb"]
    medians[kind] = median
  return medians


def _fmt(value, unit="", digits=2):
  return "-" if value is None else f"{value:.{digits}f}{unit}"


def _step_mask_memory(dense: dict, gathered: dict, base: float | None) -> str:
  """The two steps' mask-branch memory: their medians above the step with
  the mask features but no masks ("features"), in words."""
  if base is None:
    return "no features-only step"
  d, g = dense["peak_mb"] - base, gathered["peak_mb"] - base
  if g <= 0:
    return (f"mask branch in the step: {d:.0f} MB against {g:.0f} MB, at or "
            "below the step without masks")
  return f"mask branch in the step: {d:.0f} vs {g:.0f} MB, {d / g:.1f}x"


def _print_branch_alone(branch: dict, branches: Sequence[str],
                        runs: int) -> None:
  """The mask branch alone's table; adds each variant's "own_mb"."""
  # Every variant returns the gradient of the six P2-grid mask features;
  # the "features" branch (no masks, the same feature gradients, each
  # summed and freed at once) is the floor under what the masks cost.
  floor = branch["features"].get("peak_mb")
  for b in branches:
    if branch[b] and floor is not None:
      branch[b]["own_mb"] = branch[b]["peak_mb"] - floor
  print("\nThe mask branch alone (from fixed mask features: projection, "
        "masks, mask loss, gradients; \"own\" = above the features-only "
        "branch, which holds the features' gradient every variant returns):")
  print(f"| mask branch | s | peak MB above its inputs (median of "
        f"{runs}; min-max) | own MB | mask loss |")
  print("| --- | --- | --- | --- | --- |")
  for b in tuple(branches) + ("features",):
    r = branch[b]
    spread = (f" ({r['peak_min_mb']:.0f}-{r['peak_max_mb']:.0f})"
              if r else "")
    print(f"| {b} | {_fmt(r.get('seconds'), digits=3)} | "
          f"{_fmt(r.get('peak_mb'), digits=1)}{spread} | "
          f"{_fmt(r.get('own_mb'), digits=1)} | "
          f"{_fmt(r.get('mask_loss'), digits=6)} |")


def _hw(size: Sequence[int]) -> str:
  return f"{size[0]}x{size[1]}"


def _print_against_model_garden(results: dict, args) -> None:
  """Table 1b: our COCO experiment's training step vs Model Garden's."""
  height, width = _input_size(args.size)
  ref = results["maskrcnn"]
  print("\n## 1b. Training step against Model Garden's detectors (their "
        f"COCO experiment configs, batch {args.batch}, input "
        f"{height}x{width})")
  print("| model (experiment) | step s | s per image | images/s | "
        "step / Mask R-CNN step | GFLOPs | peak MB |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for name, experiment in TRAIN_TASK_EXPERIMENTS.items():
    r = results[name]
    per_image = r["seconds"] / r["batch"] if r else None
    label = f"{name} ({'ours, ' if name == 'tensormask' else ''}{experiment})"
    print(f"| {label} | {_fmt(r.get('seconds'))} | "
          f"{_fmt(per_image, digits=3)} | "
          f"{_fmt(1 / per_image if r else None)} | "
          f"{_fmt(r['seconds'] / ref['seconds']) if r and ref else '-'} | "
          f"{_fmt(r['flops'] / 1e9, digits=0) if 'flops' in r else '-'} | "
          f"{_fmt(r.get('peak_mb'), digits=0)} |")
  print("\nEach: `task.train_step` in a tf.function with the experiment's "
        "optimizer, on one decoded example with 20 rectangles parsed by the "
        "task's own training parser (repeated to the batch); GFLOPs from the "
        "TF profiler (ops with shapes known only at run time uncounted). "
        "Resize:")
  for name, r in results.items():
    if r:
      print(f"- {name}: {_hw(r['original'])} image, {r['resize']}")


def _print_coco_epoch(results: dict, sizes: dict, args) -> None:
  """Table 1c: our training step at the square, landscape and portrait
  inputs, and an epoch of COCO train2017 at each layout."""
  from tensormask_tf.configs import experiments  # pylint: disable=g-import-not-at-top
  fraction = COCO_TRAIN2017_LANDSCAPE_FRACTION
  images = experiments.COCO_TRAIN_EXAMPLES
  print("\n## 1c. COCO epoch: square padding vs orientation buckets "
        f"(tensormask_r50_fpn_coco_1x, batch {args.batch})")
  print("| input | size | step s | s per image | peak MB |")
  print("| --- | --- | --- | --- | --- |")
  per_image = {}
  for layout, size in sizes.items():
    r = results[layout]
    per_image[layout] = r["seconds"] / r["batch"] if r else None
    print(f"| {layout} | {_hw(size)} | {_fmt(r.get('seconds'))} | "
          f"{_fmt(per_image[layout], digits=3)} | "
          f"{_fmt(r.get('peak_mb'), digits=0)} |")
  print("\nEach: as in 1b, one image parsed by the experiment's training "
        "parser; a portrait image is stored transposed and the step runs it "
        "in its own orientation.")
  for layout, r in results.items():
    if r:
      print(f"- {layout}: {_hw(r['original'])} image, {r['resize']}; the "
            f"network ran at {_hw(r['input'])}")
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from tensormask_tf.modeling import factory  # pylint: disable=g-import-not-at-top
  own = factory.padded_input_size(exp_factory.get_exp_config(
      TRAIN_TASK_EXPERIMENTS["tensormask"]).task.model)
  print(f"(tensormask_r50_fpn_coco_1x's own landscape bucket: {_hw(own)}; "
        f"--epoch_landscape {_hw(own)} measures it)")
  if None in per_image.values():
    return
  square = images * per_image["square"]
  buckets = images * (fraction * per_image["landscape bucket"] +
                      (1 - fraction) * per_image["portrait bucket"])
  area = {layout: size[0] * size[1] for layout, size in sizes.items()}
  pixels = (fraction * area["landscape bucket"] +
            (1 - fraction) * area["portrait bucket"]) / area["square"]
  print(f"\n| epoch of COCO train2017 ({images} images) | hours on this "
        "machine | pixels / square |")
  print("| --- | --- | --- |")
  print(f"| square padding (every image at {_hw(sizes['square'])}) | "
        f"{square / 3600:.1f} | 1.00 |")
  print(f"| orientation buckets ({100 * fraction:.0f}% landscape at "
        f"{_hw(sizes['landscape bucket'])}, the rest at "
        f"{_hw(sizes['portrait bucket'])}) | {buckets / 3600:.1f} | "
        f"{pixels:.2f} |")
  print(f"\nbuckets / square: time {buckets / square:.2f} (target <= 0.7), "
        f"pixels {pixels:.2f}")


def _print_train_profile(result: dict, size: Sequence[int]) -> None:
  """Table: our training step stage by stage."""
  print(f"\n## Our training step by stage ({_hw(size)}, batch 1, forward "
        "and backward of each on the previous stage's outputs)")
  if not result:
    return
  whole = result.pop("whole step")
  total = sum(result.values())
  print("| stage | s | share of the stages' sum |")
  print("| --- | --- | --- |")
  for name, seconds in sorted(result.items(), key=lambda kv: -kv[1]):
    print(f"| {name} | {seconds:.3f} | {100 * seconds / total:.1f}% |")
  print(f"| sum of the stages | {total:.3f} | 100% |")
  print(f"| the whole step (task.train_step) | {whole:.3f} | "
        f"{100 * whole / total:.0f}% of the sum |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--branch_runs", type=int, default=3,
                      help="child processes per mask branch measured alone")
  parser.add_argument("--train_runs", type=int, default=1,
                      help="child processes per training step variant")
  parser.add_argument("--variants", default=",".join(TRAIN_VARIANTS),
                      help="mask branches of the train section, from "
                      f"{','.join(TRAIN_VARIANTS)} (\"features\", the "
                      "floor, is always measured)")
  parser.add_argument("--sections", default="train,inference,memory,input")
  parser.add_argument("--precision", default="float32",
                      choices=("float32", "bfloat16", "float16"),
                      help="Keras mixed-precision policy of every model")
  parser.add_argument("--batch", type=int, default=1,
                      help="images per step of the train_task children "
                      "(the tables against Model Garden and coco_epoch)")
  parser.add_argument("--epoch_landscape", default="",
                      help="HxW of the coco_epoch table's landscape bucket "
                      "(default: the benchmark input, 896x1408 at --size "
                      "800); the square is its long side squared, the "
                      "portrait bucket its transpose")
  parser.add_argument("--backbone", default="model_garden",
                      choices=("model_garden", "release"),
                      help="TensorMask's backbone and FPN in the train, "
                      "inference, memory and profile sections: Model "
                      "Garden's ResNet-50 and FPN (the model config's "
                      "default) or the release's msra_resnet and "
                      "detectron2_fpn (the COCO experiments')")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(_child(args)))
    return
  asked = set(v for v in args.variants.split(",") if v)
  unknown = sorted(asked - set(TRAIN_VARIANTS))
  if unknown or "gathered" not in asked:
    parser.error(f"--variants: {','.join(unknown) or 'gathered missing'}: "
                 f"give gathered and any of {','.join(TRAIN_VARIANTS[1:])}")
  # In TRAIN_VARIANTS' order: gathered, the one the others are compared to,
  # first.
  variants = tuple(v for v in TRAIN_VARIANTS if v in asked)
  sections = args.sections.split(",")
  height, width = _input_size(args.size)
  print(f"# bench_model: R50-FPN ({args.backbone} backbone and FPN), "
        f"batch 1 (the COCO experiments' steps: "
        f"{args.batch}), input {height}x{width}, {args.precision}, "
        f"{os.cpu_count()} CPUs, median of {args.repeats}")
  train = {}
  tasks = {}  # train_task children's results, by kind: each run once.

  def train_task(name: str, size: Sequence[int]) -> dict:
    kind = f"train_task:{name}:{_hw(size)}"
    if kind not in tasks:
      tasks[kind] = _run_child(kind, args)
    return tasks[kind]

  if "train" in sections:
    branches = variants
    measured = branches + ("features",)
    # Whole-step peaks move by ~250 MB with the executor's order: the
    # median of --train_runs children.
    medians = _median_children([f"train:{b}" for b in measured], args,
                               args.train_runs)
    train = {b: medians[f"train:{b}"] for b in measured}
    base = train["features"].get("peak_mb")
    print("\n## 1. Training step (SGD, one image)")
    print(f"| mask branch | step s | peak MB (median of {args.train_runs}; "
          "min-max) | mask branch MB | natural masks MB | total loss |")
    print("| --- | --- | --- | --- | --- | --- |")
    for b in measured:
      r = train[b]
      own = (r["peak_mb"] - base) if r and base is not None and (
          b != "features") else None
      spread = (f" ({r['peak_min_mb']:.0f}-{r['peak_max_mb']:.0f})"
                if r else "")
      print(f"| {b} | {_fmt(r.get('seconds'))} | "
            f"{_fmt(r.get('peak_mb'), digits=0)}{spread} | "
            f"{_fmt(own, digits=0)} | "
            f"{_fmt(r.get('natural_mb'), digits=1)} | "
            f"{_fmt(r.get('loss'), digits=6)} |")
    branch = {b: {} for b in measured}
    if args.branch_runs:
      # The branch's peak moves by up to ~100 MB from run to run (the order
      # in which TensorFlow runs its gradient ops): median of --branch_runs.
      medians = _median_children([f"mask_branch:{b}" for b in measured],
                                 args, args.branch_runs)
      branch = {b: medians[f"mask_branch:{b}"] for b in measured}
      _print_branch_alone(branch, branches, args.branch_runs)
    g = train["gathered"]
    for b in branches[1:]:
      d = train[b]
      if not (g and d):
        continue
      print(f"\n{b}/gathered: step time {d['seconds'] / g['seconds']:.2f}x, "
            f"peak {d['peak_mb'] / g['peak_mb']:.2f}x (" +
            _step_mask_memory(d, g, base) + "), natural masks "
            f"{d['natural_mb'] / g['natural_mb']:.0f}x; |loss difference| "
            f"{abs(d['loss'] - g['loss']):.2e} ({g['mask_windows']} positive "
            "windows with masks)")
      alone, alone_g = branch[b], branch["gathered"]
      if alone and alone_g:
        print(f"  mask branch alone: time "
              f"{alone['seconds'] / alone_g['seconds']:.1f}x, memory "
              f"{alone['peak_mb'] / alone_g['peak_mb']:.1f}x (own "
              f"{alone.get('own_mb', 0) / alone_g.get('own_mb', 1):.1f}x)")
  if "train" in sections or "model_garden" in sections:
    _print_against_model_garden(
        {name: train_task(name, (height, width))
         for name in TRAIN_TASK_EXPERIMENTS}, args)
  if "train" in sections or "coco_epoch" in sections:
    # Our step at the square input every image fits (square padding) and at
    # the two orientation buckets.
    short, long = (sorted(int(v) for v in args.epoch_landscape.split("x"))
                   if args.epoch_landscape else (height, width))
    sizes = {"square": (long, long),
             "landscape bucket": (short, long),
             "portrait bucket": (long, short)}
    _print_coco_epoch({layout: train_task("tensormask", size)
                       for layout, size in sizes.items()}, sizes, args)
  if "train_profile" in sections:
    _print_train_profile(_run_child(f"train_profile:{_hw((height, width))}",
                                    args), (height, width))
  if "inference" in sections:
    models = ("tensormask_custom", "tensormask_custom_direct",
              "tensormask_tf", "maskrcnn", "retinanet")
    results = {m: _run_child(f"inference:{m}:100", args) for m in models}
    # The pure-TF graph (with and without the Winograd convolutions)
    # converted to ONNX, in onnxruntime with its default and tuned session
    # options; the models live in a folder of this run.
    with tempfile.TemporaryDirectory() as folder:
      os.environ["BENCH_ONNX_DIR"] = folder
      for name in ("tensormask_onnx", "tensormask_onnx_direct"):
        exported = _run_child(f"onnx_export:{name}", args)
        for settings in ("default", "tuned"):
          results[f"{name} ({settings})"] = (
              _run_child(f"onnxruntime:{name}:{settings}", args)
              if exported else {})
    ref = results["maskrcnn"]
    print("\n## 2. Inference, 100 detections kept (score threshold 0)")
    print("| model | total s | network s | post-processing s | GFLOPs | "
          "time / Mask R-CNN | FLOPs / Mask R-CNN | peak MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for m, r in results.items():
      flops = r.get("flops") if r else None
      # onnxruntime: the process' RSS growth from creating the session
      # to the end (weights included), not TensorFlow's allocator peak.
      peak = r.get("peak_mb", r.get("peak_rss_mb")) if r else None
      print(f"| {m} | {_fmt(r.get('seconds'))} | "
            f"{_fmt(r.get('network_seconds'))} | {_fmt(r.get('post_seconds'))} | "
            f"{_fmt(flops / 1e9, digits=0) if flops else '-'} | "
            f"{_fmt(r['seconds'] / ref['seconds']) if r and ref else '-'} | "
            f"{_fmt(flops / ref['flops']) if flops and ref else '-'} | "
            f"{_fmt(peak, digits=0)}{' (RSS)' if r and 'peak_rss_mb' in r else ''} |")
  if "memory" in sections:
    print("\n## 3. TensorMask inference peak memory vs kept detections")
    print("| detections kept | total s | peak MB |")
    print("| --- | --- | --- |")
    for count in (50, 100, 200):
      r = _run_child(f"inference:tensormask_custom:{count}", args)
      print(f"| {count} ({r.get('detections', '-')} returned) | "
            f"{_fmt(r.get('seconds'))} | {_fmt(r.get('peak_mb'), digits=0)} |")
  if "profile" in sections:
    r = _run_child("profile", args)
    total = sum(v["seconds"] for v in r.values()) if r else None
    print("\n## TensorMask inference by stage (each on the previous stage's "
          "outputs)")
    print("| stage | s | share | GFLOPs | GFLOP/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, v in r.items():
      print(f"| {name} | {v['seconds']:.3f} | "
            f"{100 * v['seconds'] / total:.0f}% | {v['flops'] / 1e9:.0f} | "
            f"{v['flops'] / 1e9 / v['seconds']:.0f} |")
    if r:
      flops = sum(v["flops"] for v in r.values())
      print(f"| sum | {total:.3f} | 100% | {flops / 1e9:.0f} | "
            f"{flops / 1e9 / total:.0f} |")
  if "input" in sections:
    r = _run_child("input", args)
    demand = (1.0 / train["gathered"]["seconds"]
              if train.get("gathered") else None)
    print("\n## 4. Input pipeline (parse + labels, batch 1)")
    print("| pipeline images/s | training step images/s | ratio |")
    print("| --- | --- | --- |")
    print(f"| {_fmt(r.get('images_per_second'), digits=1)} | "
          f"{_fmt(demand, digits=2)} | "
          f"{_fmt(r['images_per_second'] / demand, 'x', 1) if r and demand else '-'} |")


if __name__ == "__main__":
  main()
