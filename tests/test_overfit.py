"""Overfit: a small TensorMask learns two synthetic images (issue 4).

Trains ResNet-18 + FPN + bipyramid on 2 images of 128 px with a few shapes
(400 XLA-compiled steps, pure-TF backend), then checks the loss fell at
least 10x and that every object gets a mask with IoU >= 0.8 from the
detections.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tensormask_tf.configs import tensormask_config
from tensormask_tf.modeling import detection_generator
from tensormask_tf.modeling import factory
from tensormask_tf.ops import window_labeler
from tests import training_helpers

SIZE = 128
STEPS = 400


def _shape_masks():
  """Two images' instance masks, boxes and classes (square, disc, triangle)."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
  # Edges on the 4-px mask grid of P2 (rows 20..60, columns 24..64).
  square = (np.abs(yy - 40) <= 20) & (np.abs(xx - 44) <= 20)
  disc = (yy - 84)**2 + (xx - 88)**2 <= 22**2
  triangle = (yy >= 20) & (yy <= 64) & (np.abs(xx - 96) <= (yy - 20) / 2)
  disc2 = (yy - 60)**2 + (xx - 50)**2 <= 26**2
  images = [[(square, 0), (disc, 1)], [(triangle, 2), (disc2, 1)]]
  out = []
  for objects in images:
    masks = np.stack([m for m, _ in objects]).astype(np.float32)
    boxes = []
    for m in masks:
      rows, cols = np.nonzero(m)
      boxes.append([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1])
    out.append((masks, np.array(boxes, np.float32),
                np.array([c for _, c in objects])))
  return out


def _render(masks, classes, seed):
  rng = np.random.RandomState(seed)
  colors = np.array([[0.9, 0.2, 0.2], [0.2, 0.9, 0.2], [0.2, 0.3, 0.9]])
  image = rng.uniform(0.3, 0.5, (SIZE, SIZE, 3))
  for m, c in zip(masks, classes):
    image[m > 0] = colors[c]
  return (image - 0.5).astype(np.float32)


@pytest.mark.slow  # 70-170 s on 2 cores.
def test_small_model_overfits_two_images():
  tf.random.set_seed(0)
  config = tensormask_config.TensorMaskModel(
      num_classes=3, input_size=[SIZE, SIZE, 3], min_level=2, max_level=5)
  config.backbone.resnet.model_id = 18
  config.norm_activation.norm_momentum = 0.9
  config.decoder.fpn.num_filters = 64
  config.windows.base_sides = [24, 40]
  config.head.override({"num_convs": 2, "class_filters": 64,
                        "box_filters": 32, "mask_filters": 32})
  config.ops_backend = "tf"
  model = factory.build_tensormask_model(
      tf_keras.layers.InputSpec(shape=[2, SIZE, SIZE, 3]), config)
  spec = factory.window_spec(config)
  scenes = _shape_masks()
  caps = {2: 16, 3: 16, 4: 8, 5: 8}
  per_image = [window_labeler.label_windows(spec, (SIZE, SIZE), boxes, classes,
                                            masks, caps, seed=0)
               for masks, boxes, classes in scenes]
  labels = {k: tf.stack([p[k] for p in per_image]) for k in per_image[0]}
  images = tf.constant(np.stack([_render(m, c, i) for i, (m, _, c) in
                                 enumerate(scenes)]))
  # The decay makes the end of training stable from run to run (the
  # multi-threaded XLA CPU reductions are not bit-reproducible).
  optimizer = tf_keras.optimizers.Adam(
      tf_keras.optimizers.schedules.PiecewiseConstantDecay([250],
                                                           [1e-3, 1e-4]))

  step = tf.function(training_helpers.make_train_step(
      model, spec, config.num_classes, optimizer), jit_compile=True)

  first = float(step(images, labels)["total_loss"])
  for _ in range(STEPS):
    result = step(images, labels)
  last = float(result["total_loss"])
  print(f"loss {first:.3f} -> {last:.3f}")
  assert last <= first / 10

  config.detection_generator.override({"max_detections": 20,
                                       "mask_size": 48})
  det = factory.detect(model, images, config)
  for n, (masks, _, classes) in enumerate(scenes):
    count = int(det["num_detections"][n])
    pasted = detection_generator.paste_window_masks(
        detection_generator.padded_window_masks(
            det["detection_mask_values"], det["detection_mask_sides"])[
                n, :count],
        det["detection_mask_sides"][n, :count],
        det["detection_windows"][n, :count], (SIZE, SIZE)).numpy()
    for gt_mask, gt_class in zip(masks > 0, classes):
      same_class = np.flatnonzero(
          det["detection_classes"][n, :count].numpy() == gt_class)
      assert same_class.size, f"image {n}: no detection of class {gt_class}"
      best = same_class[0]  # The highest-scoring one of that class.
      inter = np.logical_and(pasted[best], gt_mask).sum()
      iou = inter / np.logical_or(pasted[best], gt_mask).sum()
      print(f"image {n} class {gt_class}: score "
            f"{float(det['detection_scores'][n, best]):.2f} IoU {iou:.3f}")
      assert iou >= 0.8
