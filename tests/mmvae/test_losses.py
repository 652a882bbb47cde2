"""Loss terms against closed forms, Monte-Carlo estimates and brute-force NumPy."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmvae import losses


def test_kl_matches_monte_carlo():
  rng = np.random.default_rng(0)
  mu = rng.normal(size=(1, 3)).astype(np.float32)
  logvar = rng.normal(scale=0.5, size=(1, 3)).astype(np.float32)
  sigma = np.exp(0.5 * logvar)
  z = mu + sigma * rng.normal(size=(400_000, 3))
  # E_q[log q(z) - log p(z)] with the densities written out independently.
  log_q = -0.5 * np.sum(((z - mu) / sigma)**2 + np.log(2 * np.pi) + logvar, axis=1)
  log_p = -0.5 * np.sum(z**2 + np.log(2 * np.pi), axis=1)
  mc = np.mean(log_q - log_p)
  analytic = float(losses.gaussian_kl(jnp.asarray(mu), jnp.asarray(logvar))[0])
  assert analytic == pytest.approx(mc, abs=0.01)
  assert float(losses.gaussian_kl(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0]) == pytest.approx(0.0, abs=1e-7)


def test_w2_closed_form_matches_quantile_coupling_in_1d():
  rng = np.random.default_rng(1)
  for mu_a, s_a, mu_v, s_v in [(0.0, 1.0, 1.5, 0.5), (-1.0, 2.0, 0.3, 2.0), (0.2, 0.3, 0.2, 1.7)]:
    n = 400_000
    # Sorted samples pair the quantiles: the optimal coupling on the line.
    xa = np.sort(mu_a + s_a * rng.normal(size=n))
    xv = np.sort(mu_v + s_v * rng.normal(size=n))
    empirical = np.mean((xa - xv)**2)
    w2 = float(losses.w2_gaussian(jnp.array([[mu_a]]), jnp.array([[2 * np.log(s_a)]]),
                                  jnp.array([[mu_v]]), jnp.array([[2 * np.log(s_v)]]))[0])
    assert w2 == pytest.approx((mu_a - mu_v)**2 + (s_a - s_v)**2, rel=1e-5)
    assert w2 == pytest.approx(empirical, abs=0.02)


def test_w2_sums_over_dimensions():
  rng = np.random.default_rng(2)
  mu_a, mu_v, lv_a, lv_v = (rng.normal(size=(5, 7)).astype(np.float32) for _ in range(4))
  expected = [sum((mu_a[i, d] - mu_v[i, d])**2 + (np.exp(lv_a[i, d] / 2) - np.exp(lv_v[i, d] / 2))**2
                  for d in range(7)) for i in range(5)]
  np.testing.assert_allclose(losses.w2_gaussian(mu_a, lv_a, mu_v, lv_v), expected, rtol=1e-5)


def test_sample_l2_brute_force():
  rng = np.random.default_rng(3)
  a, v = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
  expected = [sum((a[i, d] - v[i, d])**2 for d in range(6)) for i in range(4)]
  np.testing.assert_allclose(losses.sample_l2(a, v), expected, rtol=1e-5)


def test_sliced_w2_identical_zero_and_shift_squared():
  rng = np.random.default_rng(4)
  key = jax.random.key(0)
  z = rng.normal(size=(256, 8)).astype(np.float32)
  assert float(losses.sliced_w2(z, z[::-1].copy(), key, 64)) == pytest.approx(0.0, abs=1e-8)
  # 1-D: a shift by s costs exactly s^2 for any sample.
  x = rng.normal(size=(300, 1)).astype(np.float32)
  assert float(losses.sliced_w2(x, x + 0.7, key, 4)) == pytest.approx(0.49, rel=1e-4)
  # Z-D: a translation s costs Z * E[(theta.s)^2] = ||s||^2 in expectation over directions.
  shift = rng.normal(size=8).astype(np.float32)
  value = float(losses.sliced_w2(z, z + shift, key, 4000))
  assert value == pytest.approx(float(np.sum(shift**2)), rel=0.08)


def test_sliced_w2_matches_sorted_projection_loop():
  rng = np.random.default_rng(5)
  a, v = rng.normal(size=(10, 3)).astype(np.float32), rng.normal(size=(10, 3)).astype(np.float32) + 1
  key = jax.random.key(7)
  theta = np.asarray(jax.random.normal(key, (5, 3)))
  total = 0.0
  for t in theta:
    t = t / np.linalg.norm(t)
    total += np.mean((np.sort(a @ t) - np.sort(v @ t))**2)
  assert float(losses.sliced_w2(a, v, key, 5)) == pytest.approx(3 * total / 5, rel=1e-4)


def _loss_cfg(**kw):
  c = ml_collections.ConfigDict(dict(wasserstein="w2_gaussian", self_recon_weight=1.0, cross_recon_weight=0.5,
                                     kl_weight=2.0, wasserstein_weight=3.0, kl_anneal_steps=0,
                                     sliced_projections=8))
  c.update(kw)
  return c


class _Affine:
  """A stand-in model with known, linear encoders and decoders to check how the terms combine."""

  def encode(self, m, x):
    flat = x.reshape(x.shape[0], -1)
    return flat[:, :2] * (1.0 if m == "audio" else 0.5), jnp.full((x.shape[0], 2), -1.0 if m == "audio" else 0.3)

  def decode(self, z):
    return {"audio": jnp.tile(z, (1, 2)), "face": jnp.tile(z, (1, 2)).reshape(-1, 2, 2, 1)}


def test_msvae_loss_combines_terms_with_weights_and_annealing():
  rng = np.random.default_rng(6)
  batch = {"audio": rng.normal(size=(3, 4)).astype(np.float32),
           "face": rng.uniform(size=(3, 2, 2, 1)).astype(np.float32)}
  keys = jax.random.split(jax.random.key(0), 3)
  cfg = _loss_cfg(kl_anneal_steps=10)
  total, m = losses.msvae_loss(_Affine(), batch, keys, jax.random.key(1), 4, cfg)
  recon = {k: float(m[k]) for k in m if k.startswith("recon")}
  assert set(recon) == {"recon_audio_from_audio", "recon_face_from_audio", "recon_audio_from_face",
                        "recon_face_from_face"}
  expected = (1.0 * (recon["recon_audio_from_audio"] + recon["recon_face_from_face"])
              + 0.5 * (recon["recon_face_from_audio"] + recon["recon_audio_from_face"])
              + 2.0 * 0.4 * (float(m["kl_audio"]) + float(m["kl_face"])) + 3.0 * float(m["wasserstein"]))
  assert float(total) == pytest.approx(expected, rel=1e-5)
  assert float(m["kl_scale"]) == pytest.approx(0.8)
  # KL and W2 do not depend on the noise: check them against NumPy.
  mu_a, mu_v = batch["audio"][:, :2], batch["face"].reshape(3, -1)[:, :2] * 0.5
  kl_a = np.mean(0.5 * np.sum(np.exp(-1.0) + mu_a**2 - 1 + 1.0, axis=1))
  assert float(m["kl_audio"]) == pytest.approx(kl_a, rel=1e-5)
  w2 = np.mean(np.sum((mu_a - mu_v)**2, axis=1) + 2 * (np.exp(-0.5) - np.exp(0.15))**2)
  assert float(m["wasserstein"]) == pytest.approx(w2, rel=1e-5)


def test_unknown_wasserstein_variant_is_a_clear_error():
  with pytest.raises(ValueError, match="wasserstein"):
    losses.check_loss_config(_loss_cfg(wasserstein="emd"))
