"""The `video` and `points` modality kinds: encoders checked against plain NumPy, order (in)variance, a train step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmvae import config as config_lib
from mmvae import models, modalities
from mmvae.zoo import msvae
from mmvae.train import step as step_lib

VIDEO = {"name": "video", "kind": "video", "shape": [3, 6, 6, 1], "dtype": "uint8"}
CLOUD = {"name": "pointcloud", "kind": "points", "shape": [32, 3], "dtype": "float32"}


def _tiny():
  cfg = config_lib.load("reference:tiny")
  cfg.model.hidden, cfg.model.latent_dim = (8,), 4
  return cfg


def _encoders(cfg):
  specs = {d["name"]: modalities.from_dict(d) for d in (VIDEO, CLOUD)}
  return specs, models.build_encoders(cfg.model, specs, jnp.float32, nnx.Rngs(0))


def _dense(layer, x):
  return x @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)


def test_video_encoder_is_a_shared_frame_mlp_pooled_by_mean_and_max_over_time():
  cfg = _tiny()
  specs, enc = _encoders(cfg)
  assert specs["video"].model_shape == (3, 6, 6, 1) and specs["video"].frames == 1
  rng = np.random.default_rng(0)
  stored = rng.integers(0, 256, size=(5, 3, 6, 6, 1), dtype=np.uint8)
  x = specs["video"].kind_module.inputs(specs["video"], stored)
  assert x.dtype == np.float32 and x.shape == (5, 3, 6, 6, 1)
  np.testing.assert_allclose(x, stored / 255.0, rtol=1e-6)
  mu, logvar = enc["video"](jnp.asarray(x))
  assert mu.shape == logvar.shape == (5, cfg.model.latent_dim)

  # The same encoder written out in NumPy, frame by frame.
  module = enc["video"]
  want = []
  for clip in np.asarray(x, np.float64):
    frames = []
    for frame in clip:
      h = frame.reshape(-1)
      for layer in module.element:
        h = np.maximum(_dense(layer, h), 0.0)
      frames.append(h)
    frames = np.stack(frames)
    want.append(_dense(module.after.head, np.concatenate([frames.mean(0), frames.max(0)])))
  want = np.stack(want)
  z = cfg.model.latent_dim
  np.testing.assert_allclose(mu, want[:, :z], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logvar, want[:, z:], rtol=1e-4, atol=1e-5)
  # A changed frame changes the embedding.
  x2 = np.array(x)
  x2[0, 1] = 1.0 - x2[0, 1]
  assert not np.allclose(enc["video"](jnp.asarray(x2))[0][0], mu[0])


def test_point_cloud_embedding_ignores_point_order_but_not_the_points():
  cfg = _tiny()
  _, enc = _encoders(cfg)
  rng = np.random.default_rng(1)
  cloud = rng.uniform(-1, 1, size=(4, 32, 3)).astype(np.float32)
  mu, logvar = enc["pointcloud"](jnp.asarray(cloud))
  assert mu.shape == (4, cfg.model.latent_dim)
  shuffled = np.stack([c[rng.permutation(32)] for c in cloud])
  mu_s, logvar_s = enc["pointcloud"](jnp.asarray(shuffled))
  np.testing.assert_allclose(mu_s, mu, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(logvar_s, logvar, rtol=1e-6, atol=1e-6)
  moved = cloud.copy()
  moved[:, 0] += 0.5
  assert not np.allclose(enc["pointcloud"](jnp.asarray(moved))[0], mu)


def test_kinds_build_their_heads_and_refuse_wrong_shapes():
  cfg = _tiny()
  video, cloud = modalities.from_dict(VIDEO), modalities.from_dict(CLOUD)
  for m, shape in ((video, (2, 3, 6, 6, 1)), (cloud, (2, 32, 3))):
    head = m.kind_module.head(16, m, "mlp", cfg.model, jnp.float32, nnx.Rngs(0))
    out = m.kind_module.activate(head(jnp.ones((2, 16))))
    assert out.shape == shape
    assert m.kind_module.to_data(out).dtype == np.float32
  raw = jnp.linspace(-20, 20, 11)
  assert float(video.kind_module.activate(raw).min()) >= 0 and float(video.kind_module.activate(raw).max()) <= 1
  np.testing.assert_array_equal(cloud.kind_module.activate(raw), raw)  # coordinates are not squashed
  assert modalities.sigma(cfg.loss, video) == modalities.sigma(cfg.loss, cloud) == 0.1
  cfg.model.encoders.pointcloud = "mlp"
  with pytest.raises(ValueError, match=r"not an encoder of the 'points' kind; use one of \('pointnet',\)"):
    modalities.encoder_choice(cfg.model, cloud)
  flat_cloud = modalities.from_dict({**CLOUD, "shape": [32, 2]})
  with pytest.raises(ValueError, match=r"needs a stored shape \[P, 3\]"):
    flat_cloud.kind_module.encoder("pointnet", flat_cloud, cfg.model, jnp.float32, nnx.Rngs(0))
  flat_video = modalities.from_dict({**VIDEO, "shape": [3, 36]})
  with pytest.raises(ValueError, match=r"needs a stored shape \[T, S, S, C\]"):
    flat_video.kind_module.encoder("frames", flat_video, cfg.model, jnp.float32, nnx.Rngs(0))

def test_an_msvae_with_video_and_points_takes_a_training_step():
  cfg = _tiny()
  specs = {d["name"]: modalities.from_dict(d) for d in (VIDEO, CLOUD)}
  model = msvae.build(cfg, specs, seed=0, num_classes=3)
  tx = step_lib.make_optimizer(cfg.train)
  graphdef, state = step_lib.init_state(model, tx)
  rng = np.random.default_rng(2)
  b = 4
  batch = {"video": specs["video"].kind_module.inputs(specs["video"], rng.integers(0, 256, (b, 3, 6, 6, 1), np.uint8)),
           "pointcloud": rng.uniform(-1, 1, (b, 32, 3)).astype(np.float32), "label": np.array([0, 1, 2, 0], np.int32)}
  step = jax.jit(functools.partial(step_lib.train_step, graphdef, tx, cfg))
  new_state, metrics = step(state, batch, np.arange(b, dtype=np.int32))
  assert int(new_state["step"]) == 1
  assert {"recon_video_from_pointcloud", "recon_pointcloud_from_video"} <= set(metrics)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  later, _ = step(new_state, batch, np.arange(b, dtype=np.int32))  # the warm-up's first learning rate is 0
  moved = [not np.allclose(a, b_) for a, b_ in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(later["params"]))]
  assert any(moved)


def test_rotate_points_turns_each_cloud_about_y_by_its_own_keyed_angle():
  import jax
  import ml_collections
  from mmvae.modalities import points
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 7, 3)).astype(np.float32)
  keys = jax.random.split(jax.random.key(1), 5)
  on = ml_collections.ConfigDict({"rotate_points": True})
  out = np.asarray(points.augment(jax.numpy.asarray(x), None, on, keys))
  theta = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (), minval=0.0, maxval=2 * np.pi))(keys))
  for b in range(5):  # the rotation matrix about y, written out
    c, s = np.cos(theta[b]), np.sin(theta[b])
    r = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    np.testing.assert_allclose(out[b], x[b] @ r.T, rtol=1e-5, atol=1e-5)
  assert len(set(np.round(theta, 4))) == 5
  off = ml_collections.ConfigDict({"rotate_points": False})
  assert points.augment(x, None, off, keys) is x
