"""Benchmark of TensorMask training and inference (issue 7).

    .venv/bin/python scripts/bench_model.py [--size 512] [--repeats 3]
        [--sections train,inference,memory,profile,input]
        [--train_runs 3] [--branch_runs 3] [--variants gathered,dense_held]

All in one run on this machine, random-initialised weights, R50-FPN, batch 1,
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
2. inference: latency of this project's TensorMask (custom-op backend;
   the same with direct convolutions instead of the head's Winograd ones,
   "_direct"; pure-TF backend, as exported) vs Model Garden's
   RetinaNet and Mask R-CNN (R50-FPN, from Model Garden's own experiment
   configs), all keeping 100 detections (score threshold 0); network and
   post-processing timed separately where the model allows; FLOPs of the
   whole inference function from the TF profiler.
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
def _tensormask_config(size: int, max_detections: int = 100):
  from tensormask_tf.configs import tensormask_config  # pylint: disable=g-import-not-at-top
  config = tensormask_config.TensorMaskModel(
      num_classes=80, input_size=_input_size(size) + [3])
  config.detection_generator.override({"score_threshold": 0.0,
                                       "max_detections": max_detections})
  return config


def _scene(size: int, seed: int = 0):
  """A random image with 20 rectangles' boxes, classes and masks."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  height, width = _input_size(size)
  image = rng.normal(size=(1, height, width, 3)).astype(np.float32)
  boxes, masks = [], []
  for _ in range(20):
    side = rng.uniform(16, 0.6 * min(height, width))
    y0 = rng.uniform(0, height - side)
    x0 = rng.uniform(0, width - side)
    boxes.append([y0, x0, y0 + side, x0 + side * rng.uniform(0.5, 1)])
    mask = np.zeros((height, width), np.float32)
    y, x = int(y0), int(x0)
    mask[y:int(boxes[-1][2]), x:int(boxes[-1][3])] = 1
    masks.append(mask)
  return (image, np.array(boxes, np.float32),
          rng.randint(0, 80, 20).astype(np.int32), np.stack(masks))


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
                branch_only: bool = False) -> dict:
  """One SGD step; mask_branch: gathered, dense, dense_held, or features (the
  mask features are computed and back-propagated, no masks)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tensormask_tf import losses  # pylint: disable=g-import-not-at-top
  from tensormask_tf.modeling import factory  # pylint: disable=g-import-not-at-top
  from tensormask_tf.ops import window_labeler  # pylint: disable=g-import-not-at-top
  from tensormask_tf.configs import tensormask_config  # pylint: disable=g-import-not-at-top
  from tensormask_tf.tasks import tensormask as tensormask_task  # pylint: disable=g-import-not-at-top
  config = _tensormask_config(size)
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


def _profile_flops(concrete_function) -> float:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top
  frozen = convert_to_constants.convert_variables_to_constants_v2(
      concrete_function)
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  info = tf.compat.v1.profiler.profile(graph=frozen.graph, options=options)
  return float(info.total_float_ops)


def child_inference(size: int, model_name: str, repeats: int,
                    max_detections: int = 100) -> dict:
  """Latency (network, post-processing), FLOPs and peak memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  height, width = _input_size(size)
  images = tf.random.normal([1, height, width, 3], seed=1)
  if model_name.startswith("tensormask"):
    from tensormask_tf.modeling import factory  # pylint: disable=g-import-not-at-top
    config = _tensormask_config(size, max_detections)
    config.ops_backend = "tf" if model_name == "tensormask_tf" else "custom"
    config.head.winograd_at_inference = not model_name.endswith("_direct")
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


def child_profile(size: int, repeats: int) -> dict:
  """Seconds and FLOPs of each stage of TensorMask inference."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tensormask_tf.modeling import factory  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  height, width = _input_size(size)
  images = tf.random.normal([1, height, width, 3], seed=1)
  config = _tensormask_config(size)
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
      data.parser.override({"short_side": 0, "long_side": 0})
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
    return child_train(size, kind.split(":")[1], repeats)
  if kind.startswith("mask_branch:"):
    return child_train(size, kind.split(":")[1], repeats, branch_only=True)
  if kind.startswith("inference:"):
    _, name, detections = kind.split(":")
    return child_inference(size, name, repeats, int(detections))
  if kind == "input":
    return child_input(size, repeats)
  if kind == "profile":
    return child_profile(size, repeats)
  raise ValueError(kind)


# ---------------------------------------------------------------------------
# The parent: runs the children, prints the tables.
# ---------------------------------------------------------------------------
def _run_child(kind: str, args) -> dict:
  command = [sys.executable, __file__, f"--child={kind}", f"--size={args.size}",
             f"--repeats={args.repeats}", f"--precision={args.precision}"]
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
  print(f"# bench_model: R50-FPN, batch 1, input {height}x{width}, "
        f"{args.precision}, {os.cpu_count()} CPUs, median of {args.repeats}")
  train = {}
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
  if "inference" in sections:
    models = ("tensormask_custom", "tensormask_custom_direct",
              "tensormask_tf", "maskrcnn", "retinanet")
    results = {m: _run_child(f"inference:{m}:100", args) for m in models}
    ref = results["maskrcnn"]
    print("\n## 2. Inference, 100 detections kept (score threshold 0)")
    print("| model | total s | network s | post-processing s | GFLOPs | "
          "time / Mask R-CNN | FLOPs / Mask R-CNN | peak MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for m in models:
      r = results[m]
      print(f"| {m} | {_fmt(r.get('seconds'))} | "
            f"{_fmt(r.get('network_seconds'))} | {_fmt(r.get('post_seconds'))} | "
            f"{_fmt(r.get('flops', 0) / 1e9, digits=0) if r else '-'} | "
            f"{_fmt(r['seconds'] / ref['seconds']) if r and ref else '-'} | "
            f"{_fmt(r['flops'] / ref['flops']) if r and ref else '-'} | "
            f"{_fmt(r.get('peak_mb'), digits=0)} |")
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
