"""MS-VAE structure: encoders per modality, one shared decoder, output shapes and ranges."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmvae import config as config_lib
from mmvae import models, modalities

A, V = modalities.AUDIO, modalities.FACE


def _param_shapes(model):
  return {".".join(str(p) for p in path): tuple(v.shape) for path, v in nnx.state(model, nnx.Param).flat_state()}


@pytest.mark.parametrize("spec,shapes", [("reference:tiny", {A: (512,), V: (23, 23, 1)}),
                                         ("conv:tiny", {A: (29, 24), V: (16, 16, 3)})])
def test_encode_decode_shapes_and_face_range(spec, shapes):
  cfg = config_lib.load(spec)
  model = models.build_model(cfg, shapes, seed=0)
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


def test_one_shared_decoder_trunk():
  cfg = config_lib.load("reference:tiny")
  model = models.build_model(cfg, {A: (512,), V: (23, 23, 1)}, seed=0)
  shapes = _param_shapes(model)
  trunk = [k for k in shapes if k.startswith("decoder.trunk")]
  heads = {k.split(".")[2] for k in shapes if k.startswith("decoder.heads")}
  assert trunk and heads == {A, V}
  # Changing only the face head leaves the decoded audio unchanged: the heads sit on one trunk.
  z = jnp.ones((1, cfg.model.latent_dim))
  before = model.decode(z)[A]
  head = model.decoder.heads[V].linear
  head.kernel[...] = head.kernel[...] + 1.0
  np.testing.assert_array_equal(model.decode(z)[A], before)


def test_reference_full_param_shapes_without_allocation():
  cfg = config_lib.load("reference")
  abstract = nnx.eval_shape(lambda: models.build_model(cfg, {A: (512,), V: (23, 23, 1)}, seed=0))
  shapes = _param_shapes(abstract)
  assert shapes["encoders.audio.layers.0.kernel"] == (512, 512)
  assert shapes["encoders.face.layers.0.kernel"] == (529, 512)
  assert shapes["encoders.audio.head.kernel"] == (256, 200)  # mean and log-variance of a 100-d latent
  assert shapes["decoder.trunk.0.kernel"] == (100, 256)
  assert shapes["decoder.heads.face.linear.kernel"] == (512, 529)
  assert shapes["decoder.heads.audio.linear.kernel"] == (512, 512)


def test_conv_full_param_shapes_without_allocation():
  cfg = config_lib.load("conv")
  abstract = nnx.eval_shape(lambda: models.build_model(cfg, {A: (297, 512), V: (64, 64, 3)}, seed=0))
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


def test_bad_model_config_is_a_clear_error():
  cfg = config_lib.load("reference:tiny")
  cfg.model.audio_encoder = "conv"
  with pytest.raises(ValueError, match="time_average"):
    models.build_model(cfg, {A: (512,), V: (23, 23, 1)}, seed=0)
  cfg.model.audio_encoder = "transformer"
  with pytest.raises(ValueError, match="audio_encoder"):
    models.build_model(cfg, {A: (512,), V: (23, 23, 1)}, seed=0)


def test_init_follows_lecun_normal_and_seed():
  cfg = config_lib.load("reference")
  shapes = {A: (512,), V: (23, 23, 1)}
  model = models.build_model(cfg, shapes, seed=3)
  k = np.asarray(model.encoders[A].layers[0].kernel[...])
  assert abs(k.std() - np.sqrt(1 / 512)) < 0.05 * np.sqrt(1 / 512) and np.abs(k).max() <= 2 * 0.0442 / 0.8796 + 1e-6
  assert np.all(np.asarray(model.encoders[A].layers[0].bias[...]) == 0)
  again = models.build_model(cfg, shapes, seed=3).encoders[A].layers[0].kernel[...]
  other = models.build_model(cfg, shapes, seed=4).encoders[A].layers[0].kernel[...]
  np.testing.assert_array_equal(k, again)
  assert not np.allclose(k, other)
  assert not np.allclose(k[:, :100], np.asarray(model.encoders[V].layers[0].kernel[...])[:512, :100])
