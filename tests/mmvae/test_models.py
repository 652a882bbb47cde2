"""MS-VAE structure: encoders per modality, one shared decoder, output shapes and ranges."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmvae import config as config_lib
from mmvae import models, modalities
from mmvae.zoo import msvae

A, V = "audio", "face"


def _voice_face(shapes: dict) -> dict:
  """{audio: a spectrogram, face: one image frame} of the given model shapes, as a dataset declares them."""
  return {A: modalities.Modality(A, "spectrogram", tuple(shapes[A]), "float32"),
          V: modalities.Modality(V, "image", (1, *shapes[V]), "uint8")}


def _param_shapes(model):
  return {".".join(str(p) for p in path): tuple(v.shape) for path, v in nnx.state(model, nnx.Param).flat_state()}


@pytest.mark.parametrize("spec,shapes", [("reference:tiny", {A: (512,), V: (23, 23, 1)}),
                                         ("conv:tiny", {A: (29, 24), V: (16, 16, 3)})])
def test_encode_decode_shapes_and_face_range(spec, shapes):
  cfg = config_lib.load(spec)
  model = msvae.build(cfg, _voice_face(shapes), seed=0)
  assert isinstance(model.encoders, nnx.Dict) and set(model.encoders.keys()) == {A, V}
  rng = np.random.default_rng(0)
  z = {}
  for m in (A, V):
    x = rng.uniform(size=(2,) + shapes[m]).astype(np.float32)
    mu, logvar = model.encode(m, x)
    assert mu.shape == logvar.shape == (2, cfg.model.latent_dim)
    z[m] = mu
  for m in (A, V):  # any latent decodes to both modalities
    out = model.decode(z[m])
    assert out[A].shape == (2,) + shapes[A] and out[V].shape == (2,) + shapes[V]
    assert float(out[V].min()) >= 0.0 and float(out[V].max()) <= 1.0


def _params_each_head_uses(decoder, z_BxZ):
  """{modality: paths of the decoder parameters its output has a non-zero gradient for}."""
  graphdef, params, rest = nnx.split(decoder, nnx.Param, ...)
  probe = np.random.default_rng(1)
  used = {}
  for m in (A, V):
    out_shape = jax.eval_shape(lambda p: nnx.merge(graphdef, p, rest)(z_BxZ)[m], params).shape
    w = jnp.asarray(probe.normal(size=out_shape), jnp.float32)  # a random projection: no unit cancels out
    grads = jax.grad(lambda p: jnp.sum(w * nnx.merge(graphdef, p, rest)(z_BxZ)[m]))(params)
    used[m] = {".".join(map(str, path)) for path, g in grads.flat_state() if np.any(np.asarray(g[...]) != 0)}
  return used


@pytest.mark.parametrize("spec,shapes", [("reference:tiny", {A: (512,), V: (23, 23, 1)}),
                                         ("conv:tiny", {A: (29, 24), V: (16, 16, 3)})])
def test_heads_sit_on_one_shared_trunk(spec, shapes):
  cfg = config_lib.load(spec)
  model = msvae.build(cfg, _voice_face(shapes), seed=0)
  decoder = model.decoder
  trunk = {".".join(map(str, p)) for p, _ in nnx.state(decoder.trunk, nnx.Param).flat_state()}
  trunk = {"trunk." + k for k in trunk}
  assert trunk
  z = jnp.asarray(np.random.default_rng(0).normal(size=(8, cfg.model.latent_dim)), jnp.float32)
  # The parameters both heads' outputs depend on are exactly the trunk's, every one of them:
  # two independent decoders would share none, a second trunk would leave this one unused by a head.
  used = _params_each_head_uses(decoder, z)
  assert used[A] & used[V] == trunk, sorted(used[A] & used[V] ^ trunk)
  assert all(k.startswith(f"heads.{m}.") or k in trunk for m in (A, V) for k in used[m])
  assert all(any(k.startswith(f"heads.{m}.") for k in used[m]) for m in (A, V))  # each has its own head
  # The same by perturbation: a trunk weight moves both outputs, a face-head weight only the face.
  before = model.decode(z)
  first, kernel = decoder.trunk[0], decoder.trunk[0].kernel[...]
  first.kernel[...] = kernel + 0.5
  after = model.decode(z)
  assert not np.allclose(after[A], before[A]) and not np.allclose(after[V], before[V])
  first.kernel[...] = kernel
  face_head = nnx.state(decoder.heads[V], nnx.Param)
  nnx.update(decoder.heads[V], jax.tree.map(lambda v: v + 0.5, face_head))
  after = model.decode(z)
  np.testing.assert_array_equal(after[A], before[A])
  assert not np.allclose(after[V], before[V])


def test_reference_full_param_shapes_without_allocation():
  cfg = config_lib.load("reference")
  abstract = nnx.eval_shape(lambda: msvae.build(cfg, _voice_face({A: (512,), V: (23, 23, 1)}), seed=0))
  shapes = _param_shapes(abstract)
  assert shapes["encoders.audio.layers.0.kernel"] == (512, 512)
  assert shapes["encoders.face.layers.0.kernel"] == (529, 512)
  assert shapes["encoders.audio.head.kernel"] == (256, 200)  # mean and log-variance of a 100-d latent
  assert shapes["decoder.trunk.0.kernel"] == (100, 256)
  assert shapes["decoder.heads.face.linear.kernel"] == (512, 529)
  assert shapes["decoder.heads.audio.linear.kernel"] == (512, 512)


def test_conv_full_param_shapes_without_allocation():
  cfg = config_lib.load("conv")
  abstract = nnx.eval_shape(lambda: msvae.build(cfg, _voice_face({A: (297, 512), V: (64, 64, 3)}), seed=0))
  shapes = _param_shapes(abstract)
  assert shapes["encoders.face.convs.0.kernel"] == (3, 3, 3, 32)
  assert shapes["encoders.face.head.kernel"] == (4 * 4 * 256, 256)  # 64 / 2^4 = 4
  assert shapes["encoders.audio.head.kernel"] == (32 * 256, 256)  # time pooled, 512 / 2^4 = 32 bins
  assert shapes["decoder.heads.face.deconvs.3.kernel"][-1] == 3
  total = sum(math.prod(s) for s in shapes.values())
  assert total < 30_000_000, total
  # Both heads reach the full input sizes (297 frames is no power of 2: cropped after upsampling).
  graphdef, state = nnx.split(abstract)
  z = jax.ShapeDtypeStruct((2, cfg.model.latent_dim), jnp.float32)
  out = jax.eval_shape(lambda s, z: nnx.merge(graphdef, s).decode(z), state, z)
  assert out[A].shape == (2, 297, 512) and out[V].shape == (2, 64, 64, 3)
  x = jax.ShapeDtypeStruct((2, 297, 512), jnp.float32)
  mu, _ = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).encode(A, x), state, x)
  assert mu.shape == (2, 128)


def test_public_msvae_layers_have_the_published_widths():
  """The public MS-VAE (visual 512-512-512-128-128, audio 128-128-128, decoder 100-512-512-512-640-640)."""
  cfg = config_lib.load("msvae_public")
  specs = {"visual": modalities.Modality("visual", "vector", (512,), "float32"),
           "audio": modalities.Modality("audio", "vector", (128,), "float32")}
  shapes = _param_shapes(nnx.eval_shape(lambda: msvae.build(cfg, specs, seed=0)))

  def chain(prefix, widths):  # the kernels of consecutive Linear layers of these widths
    return {f"{prefix}.{i}.kernel": (a, b) for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))}

  expected = {**chain("encoders.visual.layers", (512, 512, 512, 128, 128)),
              **chain("encoders.audio.layers", (128, 128, 128)),
              **chain("decoder.trunk", (100, 512, 512, 512, 640, 640)),
              "encoders.visual.head.kernel": (128, 200), "encoders.audio.head.kernel": (128, 200),
              "decoder.heads.visual.linear.kernel": (640, 512), "decoder.heads.audio.linear.kernel": (640, 128)}
  assert {k: v for k, v in shapes.items() if k.endswith("kernel")} == expected
  # Weights and biases: the closed-form count of the same layers.
  layers = [(512, 512), (512, 512), (512, 128), (128, 128), (128, 200), (128, 128), (128, 128), (128, 200),
            (100, 512), (512, 512), (512, 512), (512, 640), (640, 640), (640, 512), (640, 128)]
  sigma_offsets = 2
  assert sum(math.prod(s) for s in shapes.values()) == sum(a * b + b for a, b in layers) + sigma_offsets


def test_encoder_and_decoder_widths_come_from_overrides_and_bad_ones_are_clear():
  cfg = config_lib.load("reference:tiny", ["model.encoder_hidden.face=(8, 4)", "model.decoder_hidden=(6,)"])
  shapes = _param_shapes(nnx.eval_shape(lambda: msvae.build(cfg, _voice_face({A: (512,), V: (23, 23, 1)}), seed=0)))
  assert shapes["encoders.face.layers.0.kernel"] == (529, 8) and shapes["encoders.face.head.kernel"] == (4, 16)
  assert shapes["encoders.audio.layers.0.kernel"] == (512, 32)  # not named: model.hidden
  assert shapes["decoder.trunk.0.kernel"] == (8, 6) and shapes["decoder.heads.face.linear.kernel"] == (6, 529)
  cfg.model.encoder_hidden.face = (8, 0)
  with pytest.raises(ValueError, match=r"config.model.encoder_hidden.face=\(8, 0\)"):
    msvae.build(cfg, _voice_face({A: (512,), V: (23, 23, 1)}), seed=0)


def test_bad_model_config_is_a_clear_error():
  cfg = config_lib.load("reference:tiny")
  cfg.model.encoders.audio = "conv"
  with pytest.raises(ValueError, match="time_average"):
    msvae.build(cfg, _voice_face({A: (512,), V: (23, 23, 1)}), seed=0)
  cfg.model.encoders.audio = "transformer"
  with pytest.raises(ValueError, match="encoders.audio"):
    msvae.build(cfg, _voice_face({A: (512,), V: (23, 23, 1)}), seed=0)


def test_init_follows_lecun_normal_and_seed():
  cfg = config_lib.load("reference")
  shapes = {A: (512,), V: (23, 23, 1)}
  model = msvae.build(cfg, _voice_face(shapes), seed=3)
  k = np.asarray(model.encoders[A].layers[0].kernel[...])
  assert abs(k.std() - np.sqrt(1 / 512)) < 0.05 * np.sqrt(1 / 512) and np.abs(k).max() <= 2 * 0.0442 / 0.8796 + 1e-6
  assert np.all(np.asarray(model.encoders[A].layers[0].bias[...]) == 0)
  again = msvae.build(cfg, _voice_face(shapes), seed=3).encoders[A].layers[0].kernel[...]
  other = msvae.build(cfg, _voice_face(shapes), seed=4).encoders[A].layers[0].kernel[...]
  np.testing.assert_array_equal(k, again)
  assert not np.allclose(k, other)
  assert not np.allclose(k[:, :100], np.asarray(model.encoders[V].layers[0].kernel[...])[:512, :100])


class _Block(nnx.Module):
  """Every parameter kind a model may use, each with its layer's default or configured initialiser."""

  def __init__(self, rngs: nnx.Rngs):
    self.linear = nnx.Linear(400, 300, rngs=rngs)
    self.conv = nnx.Conv(16, 256, (3, 3), rngs=rngs)
    self.norm = nnx.LayerNorm(300, rngs=rngs)
    self.batch_norm = nnx.BatchNorm(256, rngs=rngs)
    self.custom = nnx.Linear(200, 100, kernel_init=nnx.initializers.normal(0.5), bias_init=nnx.initializers.ones,
                             rngs=rngs)
    self.offset = nnx.Param(jnp.full((3,), 0.25))  # a parameter made from a value keeps it


def test_init_module_uses_each_layers_flax_initialiser():
  block = models.init_module(_Block, seed=0)
  np.testing.assert_array_equal(block.norm.scale[...], np.ones(300))  # not 0: a LayerNorm would output zeros
  np.testing.assert_array_equal(block.norm.bias[...], np.zeros(300))
  np.testing.assert_array_equal(block.batch_norm.scale[...], np.ones(256))
  np.testing.assert_array_equal(block.batch_norm.bias[...], np.zeros(256))
  np.testing.assert_array_equal(block.batch_norm.mean[...], np.zeros(256))  # batch statistics too
  np.testing.assert_array_equal(block.batch_norm.var[...], np.ones(256))
  np.testing.assert_array_equal(block.linear.bias[...], np.zeros(300))
  np.testing.assert_array_equal(block.conv.bias[...], np.zeros(256))
  np.testing.assert_array_equal(block.custom.bias[...], np.ones(100))
  np.testing.assert_array_equal(block.offset[...], np.full(3, 0.25))
  # LeCun normal, worked out here: variance 1 / fan_in (fan_in = receptive field x input channels), from a
  # normal truncated at +-2 of its own standard deviations, whose variance is 0.87962566^2 of the untruncated.
  # Tolerances are ~5 sampling standard errors (120000 and 36864 draws).
  for kernel, fan_in in ((block.linear.kernel, 400), (block.conv.kernel, 3 * 3 * 16)):
    k = np.asarray(kernel[...], np.float64)
    assert abs(k.mean()) < 5 * np.sqrt(1 / fan_in / k.size)
    assert k.var() == pytest.approx(1 / fan_in, rel=0.04), (kernel.shape, k.var() * fan_in)
    assert np.abs(k).max() <= 2 * np.sqrt(1 / fan_in) / 0.87962566 * (1 + 1e-6)
  c = np.asarray(block.custom.kernel[...])  # the configured N(0, 0.5^2), not truncated
  assert c.std() == pytest.approx(0.5, rel=0.03) and np.abs(c).max() > 2 * 0.5
  # The draw follows the seed.
  np.testing.assert_array_equal(models.init_module(_Block, seed=0).linear.kernel[...], block.linear.kernel[...])
  assert not np.allclose(models.init_module(_Block, seed=1).linear.kernel[...], block.linear.kernel[...])


def test_deliberate_zero_starts_stay_zero():
  cfg = config_lib.load("conv:tiny")
  model = msvae.build(cfg, _voice_face({A: (29, 24), V: (16, 16, 3)}), seed=0)
  for m in (A, V):  # the likelihood scale starts at exactly the config's sigma
    assert float(model.decoder.log_sigma_offset[m][...]) == 0.0
  np.testing.assert_array_equal(model.decoder.heads[A].grid_bias[...], 0.0)
