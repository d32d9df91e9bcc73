"""The release's backbone (msra_resnet) and FPN (detectron2_fpn) with their
stride-1 3x3 convs as layers.Conv3x3: Winograd at inference equals the
direct convolutions to float32 rounding, the rule picks the layers, training
and `winograd_at_inference: false` stay direct (bit for bit), the config
reaches the builders, and checkpoints of the former Conv2D layers load
unchanged."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official.vision.modeling.backbones import factory as backbone_factory
from official.vision.modeling.decoders import factory as decoder_factory
from tensormask_tf import layers
from tensormask_tf import ops
from tensormask_tf.configs import tensormask_config
from tensormask_tf.modeling.backbones import msra_resnet
from tensormask_tf.modeling.decoders import detectron2_fpn

SPEC = tf_keras.layers.InputSpec(shape=[1, None, None, 3])
# C2 32x48 .. C5 4x6; P2..P7.
SMALL = (1, 128, 192, 3)
# The bottlenecks' 3x3 convs (3 + 4 + 6 + 3) and the FPN's P2..P5 outputs.
BACKBONE_3X3, FPN_3X3 = 16, 4


def _build(winograd_at_inference=True, weights_of=None):
  """(backbone, decoder); with the weights of `weights_of`'s if given."""
  tf_keras.utils.set_random_seed(0)
  backbone = msra_resnet.msra_resnet(
      SPEC, winograd_at_inference=winograd_at_inference)
  decoder = detectron2_fpn.detectron2_fpn(
      backbone.output_specs, 2, 7,
      winograd_at_inference=winograd_at_inference)
  # Frozen BN away from the identity, each bottleneck's last one scaled down
  # (as the release reference checkpoint does) so activations stay O(1).
  rng = np.random.RandomState(0)
  for layer in backbone.layers:
    if isinstance(layer, msra_resnet.FrozenBatchNorm):
      n = layer.gamma.shape[0]
      scale = 0.25 if layer.name.endswith("conv3_norm") else 1.0
      layer.gamma.assign(scale * (1 + 0.1 * rng.normal(size=n)))
      layer.beta.assign(0.1 * rng.normal(size=n))
      layer.moving_mean.assign(0.05 * rng.normal(size=n))
      layer.moving_variance.assign(rng.uniform(0.8, 1.25, n))
  for variable in decoder.trainable_variables:
    if "bias" in variable.name:
      variable.assign(rng.normal(0, 0.02, variable.shape))
  for model, source in zip((backbone, decoder), weights_of or ()):
    model.set_weights(source.get_weights())
  return backbone, decoder


@pytest.fixture(scope="module")
def networks():
  return _build()


def _run(backbone, decoder, images, training):
  levels = backbone(images, training=training)
  outputs = {f"C{k}": v for k, v in levels.items()}
  outputs.update({f"P{k}": v for k, v in decoder(levels,
                                                  training=training).items()})
  return outputs


def _gathers(fn, *args):
  graph = tf.function(fn).get_concrete_function(*args).graph
  return sum(op.type == "GatherNd" for op in graph.get_operations())


@pytest.fixture
def always_pays_off(monkeypatch):
  monkeypatch.setattr(ops, "winograd_pays_off", lambda *args: True)


def test_stride1_3x3_convs_are_conv3x3_and_strided_ones_are_not(networks):
  backbone, decoder = networks
  convs = {layer.name: layer for model in networks for layer in model.layers
           if isinstance(layer, tf_keras.layers.Conv2D)}
  winograd = sorted(n for n, layer in convs.items()
                    if isinstance(layer, layers.Conv3x3))
  assert winograd == sorted(
      [f"res{stage}_{i}_conv2" for stage, blocks in zip(
          range(2, 6), msra_resnet.BLOCKS[50]) for i in range(blocks)]
      + [f"fpn_output{level}" for level in range(2, 6)])
  # The stem (7x7/2), 1x1s and P6/P7 (3x3/2) stay Conv2D.
  assert not isinstance(convs["top_block_p6"], layers.Conv3x3)
  assert convs["top_block_p6"].strides == (2, 2)
  assert all(convs[n].padding == "valid" for n in winograd)
  assert (len(backbone.layers), len(decoder.layers)) == (191, 30)


def test_winograd_at_inference_equals_the_direct_convs(networks,
                                                      always_pays_off):
  del always_pays_off
  backbone, decoder = networks
  images = tf.random.normal(SMALL, seed=1)
  levels = backbone(images, training=False)
  assert _gathers(lambda x: backbone(x, training=False), images) == (
      BACKBONE_3X3)
  assert _gathers(lambda v: decoder(v, training=False), levels) == FPN_3X3
  got = _run(backbone, decoder, images, training=False)
  direct = _run(*_build(winograd_at_inference=False, weights_of=networks),
                images, training=False)
  for name, want in direct.items():
    want = want.numpy().astype(np.float64)
    error = np.abs(got[name].numpy() - want).max() / np.abs(want).max()
    assert error <= 1e-5, (name, error)


def test_training_and_winograd_off_run_the_direct_convs_exactly(
    networks, always_pays_off):
  del always_pays_off
  backbone, decoder = networks
  images = tf.random.normal(SMALL, seed=2)
  assert _gathers(lambda x: backbone(x, training=True), images) == 0
  levels = backbone(images, training=True)
  assert _gathers(lambda v: decoder(v, training=True), levels) == 0
  direct_backbone, direct_decoder = _build(winograd_at_inference=False,
                                           weights_of=networks)
  assert _gathers(lambda x: direct_backbone(x, training=False), images) == 0
  assert _gathers(lambda v: direct_decoder(v, training=False), levels) == 0
  want = _run(direct_backbone, direct_decoder, images, training=False)
  for got in (_run(backbone, decoder, images, training=True),
              _run(direct_backbone, direct_decoder, images, training=True)):
    for name in want:
      np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_the_rule_picks_the_layers_on_large_grids(networks):
  # 320x384: res3 on 40x48 (1920 pixels, 128 channels) and P2, P3 qualify;
  # res2 (64 channels) and the grids of 480 pixels or fewer do not.
  backbone, decoder = networks
  images = tf.zeros([1, 320, 384, 3])
  assert _gathers(lambda x: backbone(x, training=False), images) == 4
  levels = {str(k): tf.zeros([1, 320 // 2**k, 384 // 2**k,
                              256 * 2**(k - 2)]) for k in range(2, 6)}
  assert _gathers(lambda v: decoder(v, training=False), levels) == 2


def test_the_config_reaches_the_builders(always_pays_off):
  del always_pays_off
  config = tensormask_config.TensorMaskModel(
      backbone=tensormask_config.Backbone(type="msra_resnet"),
      decoder=tensormask_config.Decoder(type="detectron2_fpn"))
  assert config.backbone.msra_resnet.winograd_at_inference
  assert config.decoder.detectron2_fpn.winograd_at_inference
  images = tf.zeros(SMALL)
  for winograd in (True, False):
    config.backbone.msra_resnet.winograd_at_inference = winograd
    config.decoder.detectron2_fpn.winograd_at_inference = winograd
    backbone = backbone_factory.build_backbone(
        input_specs=SPEC, backbone_config=config.backbone,
        norm_activation_config=config.norm_activation)
    decoder = decoder_factory.build_decoder(
        input_specs=backbone.output_specs, model_config=config)
    levels = backbone(images, training=False)
    assert _gathers(lambda x: backbone(x, training=False), images) == (
        BACKBONE_3X3 if winograd else 0)  # pylint: disable=cell-var-from-loop
    assert _gathers(lambda v: decoder(v, training=False), levels) == (
        FPN_3X3 if winograd else 0)  # pylint: disable=cell-var-from-loop


def _conv2d_as_before(filters, padding="same", winograd_at_inference=True,
                      winograd_in_training=False, **kwargs):
  """The Conv2D that the models built before they used layers.Conv3x3."""
  del winograd_at_inference, winograd_in_training
  return tf_keras.layers.Conv2D(filters, 3, strides=1, padding=padding,
                                **kwargs)


def test_checkpoints_of_the_conv2d_layers_load_unchanged(monkeypatch,
                                                         tmp_path):
  with monkeypatch.context() as patch:
    patch.setattr(layers, "Conv3x3", _conv2d_as_before)
    before = _build()
  assert not any(isinstance(layer, layers.Conv3x3)
                 for model in before for layer in model.layers)
  rng = np.random.RandomState(3)
  for model in before:
    for variable in model.variables:
      variable.assign(rng.normal(1.0, 0.1, variable.shape))
  old = tf.train.Checkpoint(backbone=before[0], decoder=before[1]).write(
      str(tmp_path / "before"))
  after = _build()
  # Every value of the file into a variable and every variable from the
  # file; the same layers at the same positions (a functional model's
  # checkpoint names its layers "layer-<position>").
  tf.train.Checkpoint(backbone=after[0], decoder=after[1]).read(
      old).assert_consumed()
  named = lambda model: [layer.name for layer in model.layers  # noqa: E731
                         if not isinstance(layer, tf_keras.layers.InputLayer)]
  for model_before, model_after in zip(before, after):
    assert named(model_before) == named(model_after)
    for got, want in zip(model_after.variables, model_before.variables):
      assert got.name == want.name
      np.testing.assert_array_equal(got, want)
  new = tf.train.Checkpoint(backbone=after[0], decoder=after[1]).write(
      str(tmp_path / "after"))
  assert tf.train.list_variables(new) == tf.train.list_variables(old)
