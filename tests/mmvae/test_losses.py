"""Loss terms against closed forms, Monte-Carlo estimates and brute-force NumPy."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from mmvae import config as config_lib
from mmvae import losses, modalities
from mmvae.zoo import msvae


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
                                     sliced_projections=8, likelihood="sse",
                                     sigma=ml_collections.ConfigDict({"audio": 1.0, "face": 1.0}),
                                     learn_sigma=False, min_sigma=0.01, infonce_weight=0.0, temperature=0.1,
                                     infonce_positives="identity", triplet_weight=0.0,
                                     triplet_margins=(0.2, 0.2, 0.2), identity_weight=0.0))
  c.update(kw)
  return c


_HEAD_W = np.array([[1.0, -0.5, 0.2], [0.3, 0.8, -1.1]], np.float32)  # _Affine's identity head, Z=2 -> 3 classes


_SPECS = {"audio": modalities.Modality("audio", "spectrogram", (4,), "float32"),
          "face": modalities.Modality("face", "image", (1, 2, 2, 1), "uint8")}


class _Affine:
  """A stand-in model with known, linear encoders and decoders to check how the terms combine."""

  specs = _SPECS

  def __init__(self, logvar=(-1.0, 0.3)):
    self.logvar = dict(zip(("audio", "face"), logvar))

  def encode(self, m, x):
    flat = x.reshape(x.shape[0], -1)
    return flat[:, :2] * (1.0 if m == "audio" else 0.5), jnp.full((x.shape[0], 2), self.logvar[m])

  def identity_logits(self, mu):
    return mu @ jnp.asarray(_HEAD_W)

  def decode(self, z):
    return {"audio": jnp.tile(z, (1, 2)), "face": jnp.tile(z, (1, 2)).reshape(-1, 2, 2, 1)}


def _np_terms(batch, likelihood="sse", sigma=None):
  """(mu, nll, recon, kl) of _Affine at logvar -40 (sigma ~ 2e-9: z is the mean), per example, by NumPy and scipy.

  nll[(n, src)]: -log N(x_n | dec(mu_src), sigma_n^2) summed over x_n's values; recon: that, or the squared
  error ('sse'); kl[src]: KL(N(mu_src, e^-40) || N(0, I)) in closed form.
  """
  sigma = sigma or {"audio": 1.0, "face": 1.0}
  b = len(batch["audio"])
  mu = {"audio": batch["audio"][:, :2].astype(np.float64), "face": batch["face"].reshape(b, -1)[:, :2] * 0.5}
  target = {"audio": batch["audio"], "face": batch["face"].reshape(b, -1)}
  nll, recon, kl = {}, {}, {}
  for src in ("audio", "face"):
    dec = np.tile(mu[src], (1, 2))  # _Affine's decoder: both modalities are z repeated twice
    for n in ("audio", "face"):
      nll[(n, src)] = -stats.norm.logpdf(target[n], dec, sigma[n]).sum(axis=1)
      recon[(n, src)] = nll[(n, src)] if likelihood == "gaussian" else ((dec - target[n])**2).sum(axis=1)
    kl[src] = 0.5 * np.sum(np.exp(-40.0) + mu[src]**2 - 1.0 + 40.0, axis=1)
  return mu, nll, recon, kl


def _np_total(recon, kl, self_weight, cross_weight, beta):
  """The weighted batch means of the self and cross reconstructions and the two KLs."""
  return (self_weight * (recon[("audio", "audio")].mean() + recon[("face", "face")].mean())
          + cross_weight * (recon[("face", "audio")].mean() + recon[("audio", "face")].mean())
          + beta * (kl["audio"].mean() + kl["face"].mean()))


def test_msvae_loss_combines_terms_with_weights_and_annealing():
  rng = np.random.default_rng(6)
  batch = {"audio": rng.normal(size=(3, 4)).astype(np.float32),
           "face": rng.uniform(size=(3, 2, 2, 1)).astype(np.float32)}
  keys = jax.random.split(jax.random.key(0), 3)
  cfg = _loss_cfg(kl_anneal_steps=10)
  # At sigma ~ 2e-9 every term is deterministic: the total from NumPy, the KL weight annealed to 4/10 of 2.0.
  total, m = msvae.loss(_Affine(logvar=(-40.0, -40.0)), batch, keys, jax.random.key(1), 4, cfg)
  assert {k for k in m if k.startswith("recon")} == {"recon_audio_from_audio", "recon_face_from_audio",
                                                     "recon_audio_from_face", "recon_face_from_face"}
  mu, _, recon, kl = _np_terms(batch)
  w2 = np.mean(np.sum((mu["audio"] - mu["face"])**2, axis=1))  # equal spreads: W2 is the means' distance
  assert float(total) == pytest.approx(_np_total(recon, kl, 1.0, 0.5, 2.0 * 0.4) + 3.0 * w2, rel=1e-5)
  assert float(m["kl_scale"]) == pytest.approx(0.8)
  # At the model's own spreads, KL and W2 still do not depend on the noise: check them against NumPy.
  _, m = msvae.loss(_Affine(), batch, keys, jax.random.key(1), 4, cfg)
  mu_a, mu_v = batch["audio"][:, :2], batch["face"].reshape(3, -1)[:, :2] * 0.5
  kl_a = np.mean(0.5 * np.sum(np.exp(-1.0) + mu_a**2 - 1 + 1.0, axis=1))
  assert float(m["kl_audio"]) == pytest.approx(kl_a, rel=1e-5)
  w2 = np.mean(np.sum((mu_a - mu_v)**2, axis=1) + 2 * (np.exp(-0.5) - np.exp(0.15))**2)
  assert float(m["wasserstein"]) == pytest.approx(w2, rel=1e-5)


def test_unknown_wasserstein_variant_is_a_clear_error():
  with pytest.raises(ValueError, match="wasserstein"):
    msvae.check_config(config_lib.load("reference:tiny", ["loss.wasserstein=emd"]))


@pytest.mark.parametrize("sigma", [0.05, 1.0, 3.7])
def test_gaussian_nll_matches_scipy(sigma):
  rng = np.random.default_rng(8)
  pred, target = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 3, 2))
  nll = losses.gaussian_nll(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), jnp.log(sigma))
  expected = [-stats.norm.logpdf(target[i], pred[i], sigma).sum() for i in range(4)]
  np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=1e-4)


def _np_info_nce(u, v, temperature, labels=None):
  """Symmetric InfoNCE written as a double loop over rows and columns."""
  u = u / np.linalg.norm(u, axis=1, keepdims=True)
  v = v / np.linalg.norm(v, axis=1, keepdims=True)
  b = len(u)
  logits = [[float(u[i] @ v[j]) / temperature for j in range(b)] for i in range(b)]
  positive = (lambda i, j: i == j) if labels is None else (lambda i, j: labels[i] == labels[j])

  def one_way(row_major):
    total = 0.0
    for i in range(b):
      row = [logits[i][j] if row_major else logits[j][i] for j in range(b)]
      everything = sum(math.exp(x) for x in row)
      positives = sum(math.exp(row[j]) for j in range(b) if positive(i, j))
      total += -math.log(positives / everything)
    return total / b

  return 0.5 * (one_way(True) + one_way(False))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_info_nce_matches_double_loop(temperature):
  rng = np.random.default_rng(9)
  u, v = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(7, 4)).astype(np.float32)
  v[:3] += 2 * u[:3]  # some aligned pairs, so the loss is not just log(B)
  repeated = np.array([0, 1, 0, 2, 1, 0, 3], np.int32)
  pair = float(losses.info_nce(u, v, temperature))
  assert pair == pytest.approx(_np_info_nce(u, v, temperature), rel=1e-5)
  multi = float(losses.info_nce(u, v, temperature, jnp.asarray(repeated)))
  assert multi == pytest.approx(_np_info_nce(u, v, temperature, repeated), rel=1e-5)
  assert abs(multi - pair) > 1e-2  # the repeated labels do change the positives
  distinct = np.arange(7, dtype=np.int32)  # all labels distinct: label positives are the pairs
  assert float(losses.info_nce(u, v, temperature, jnp.asarray(distinct))) == pytest.approx(pair, rel=1e-5)
  # The symmetry: u->v and v->u are both counted.
  assert float(losses.info_nce(v, u, temperature, jnp.asarray(repeated))) == pytest.approx(multi, rel=1e-5)


def _np_triplet(anchor, other, labels, margin, same_set):
  """Batch-hard triplet loss by loops: hardest positive and negative of each anchor, anchors lacking one skipped."""
  def unit(x):
    return x / np.linalg.norm(x)
  hinges = []
  for i in range(len(anchor)):
    pos, neg = [], []
    for j in range(len(other)):
      d = float(np.sum((unit(anchor[i]) - unit(other[j]))**2))
      if labels[i] != labels[j]:
        neg.append(d)
      elif not (same_set and i == j):
        pos.append(d)
    if pos and neg:
      hinges.append(max(0.0, margin + max(pos) - min(neg)))
  return sum(hinges) / len(hinges) if hinges else 0.0


@pytest.mark.parametrize("same_set", [True, False])
@pytest.mark.parametrize("labels", [[0, 1, 0, 2, 1, 0, 2, 1], [0, 0, 1, 1, 2, 3, 3, 4], [5, 5, 5, 5, 5, 5, 5, 5]])
def test_triplet_matches_loop_over_anchors(same_set, labels):
  rng = np.random.default_rng(10)
  a = rng.normal(size=(8, 3)).astype(np.float32)
  o = a + 0.8 * rng.normal(size=(8, 3)).astype(np.float32) if not same_set else a
  labels = np.array(labels, np.int32)
  for margin in (0.1, 0.5, 1.5):
    expected = _np_triplet(a, o, labels, margin, same_set)
    got = float(losses.triplet(a, o, jnp.asarray(labels), margin, same_set))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), margin
  if len(set(labels.tolist())) > 1:
    assert _np_triplet(a, o, labels, 1.5, same_set) > 0  # not a vacuous comparison of zeros


def test_triplet_skips_anchors_without_positive():
  # Labels 2 and 3 occur once: in their own set they have no positive and must not count.
  a = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0.2], [0.3, -1]], np.float32)
  labels = np.array([0, 0, 1, 1, 2, 3], np.int32)
  got = float(losses.triplet(a, a, jnp.asarray(labels), 2.0, True))
  expected = _np_triplet(a, a, labels, 2.0, True)
  assert got == pytest.approx(expected, rel=1e-5)
  # Only the 4 anchors of labels 0 and 1 count: a mean over all 6 anchors would be 4/6 of it.
  assert expected > 0 and got != pytest.approx(expected * 4 / 6, rel=1e-3)


def test_log_sigmas_learned_offset_and_floor():
  model = type("M", (), {})()
  model.specs = _SPECS
  model.decoder = type("D", (), {})()
  model.decoder.log_sigma_offset = {"audio": jnp.float32(0.5), "face": jnp.float32(-3.0)}
  cfg = _loss_cfg(sigma=ml_collections.ConfigDict({"audio": 2.0, "face": 0.1}), min_sigma=0.01)
  fixed = losses.log_sigmas(model, cfg)
  assert float(fixed["audio"]) == pytest.approx(np.log(2.0)) and float(fixed["face"]) == pytest.approx(np.log(0.1))
  learned = losses.log_sigmas(model, _loss_cfg(sigma=cfg.sigma, min_sigma=0.01, learn_sigma=True))
  assert float(learned["audio"]) == pytest.approx(np.log(2.0) + 0.5, rel=1e-6)
  assert float(learned["face"]) == pytest.approx(np.log(0.01), rel=1e-6)  # 0.1 e^-3 < min_sigma: floored


def _deterministic_batch(b=6, seed=11):
  rng = np.random.default_rng(seed)
  return {"audio": rng.normal(size=(b, 4)).astype(np.float32),
          "face": rng.uniform(size=(b, 2, 2, 1)).astype(np.float32)}


@pytest.mark.parametrize("likelihood", ["gaussian", "sse"])
def test_msvae_loss_gaussian_recon_terms_are_scipy_logpdf_sums(likelihood):
  # logvar -40: sigma ~ 2e-9, so z is the posterior mean and every term is deterministic.
  batch = _deterministic_batch()
  sig = {"audio": 0.7, "face": 0.2}
  cfg = _loss_cfg(likelihood=likelihood, sigma=ml_collections.ConfigDict(sig), wasserstein_weight=0.0)
  keys = jax.random.split(jax.random.key(0), 6)
  total, m = msvae.loss(_Affine(logvar=(-40.0, -40.0)), batch, keys, jax.random.key(1), 0, cfg)
  _, nll, recon, kl = _np_terms(batch, likelihood, sig)
  for (n, src), expected in recon.items():
    assert float(m[f"recon_{n}_from_{src}"]) == pytest.approx(expected.mean(), rel=1e-4, abs=1e-4), (n, src)
  assert float(total) == pytest.approx(_np_total(recon, kl, 1.0, 0.5, 2.0), rel=1e-5)
  # The logged ELBO is the Gaussian bound whatever the optimised likelihood: mean of the two encoders' bounds.
  elbo = np.mean([-(nll[("audio", s)] + nll[("face", s)]) - kl[s] for s in ("audio", "face")], axis=0)
  assert float(m["elbo"]) == pytest.approx(elbo.mean(), rel=1e-5)
  assert float(m["sigma_audio"]) == pytest.approx(0.7) and float(m["sigma_face"]) == pytest.approx(0.2)


def test_msvae_loss_adds_infonce_triplet_identity_with_weights():
  batch = _deterministic_batch(b=8, seed=12)
  batch["label"] = np.array([0, 1, 2, 0, 1, 2, 0, 2], np.int32)
  base_cfg = _loss_cfg(wasserstein_weight=0.0, triplet_margins=(0.3, 0.4, 0.5), temperature=0.2)
  keys = jax.random.split(jax.random.key(0), 8)
  model = _Affine(logvar=(-40.0, -40.0))
  _, _, recon, kl = _np_terms(batch)
  base = _np_total(recon, kl, 1.0, 0.5, 2.0)  # wasserstein_weight 0: no W2 in the total
  mu_a, mu_v = batch["audio"][:, :2], batch["face"].reshape(8, -1)[:, :2] * 0.5
  labels = batch["label"]
  nce = {"pair": _np_info_nce(mu_a, mu_v, 0.2), "identity": _np_info_nce(mu_a, mu_v, 0.2, labels)}
  trip = (_np_triplet(mu_a, mu_a, labels, 0.3, True) + _np_triplet(mu_v, mu_v, labels, 0.4, True)
          + 0.5 * (_np_triplet(mu_a, mu_v, labels, 0.5, False) + _np_triplet(mu_v, mu_a, labels, 0.5, False)))

  def ce(mu):
    logits = mu.astype(np.float64) @ _HEAD_W
    return np.mean([np.log(np.exp(row).sum()) - row[y] for row, y in zip(logits, labels)])

  ident = 0.5 * (ce(mu_a) + ce(mu_v))
  for positives in ("pair", "identity"):
    cfg = base_cfg.copy_and_resolve_references()
    cfg.update(dict(infonce_weight=0.5, triplet_weight=0.25, identity_weight=2.0, infonce_positives=positives))
    total, m = msvae.loss(model, batch, keys, jax.random.key(1), 0, cfg)
    assert float(m["infonce"]) == pytest.approx(nce[positives], rel=1e-5)
    assert float(m["triplet"]) == pytest.approx(trip, rel=1e-5)
    assert float(m["identity_ce"]) == pytest.approx(ident, rel=1e-5)
    expected = float(base) + 0.5 * nce[positives] + 0.25 * trip + 2.0 * ident
    assert float(total) == pytest.approx(expected, rel=1e-5)
  assert trip > 0 and abs(nce["pair"] - nce["identity"]) > 1e-3


def test_logged_elbo_matches_monte_carlo():
  cfg = config_lib.load("reference:tiny", ["loss.likelihood=gaussian", "loss.learn_sigma=True", "loss.sigma.face=0.3",
                                           "loss.sigma.audio=1.5"])
  shapes = {"audio": modalities.Modality("audio", "spectrogram", (6,), "float32"),
            "face": modalities.Modality("face", "image", (1, 3, 3, 1), "uint8")}
  model = msvae.build(cfg, shapes, seed=3)
  model.decoder.log_sigma_offset["audio"].value = jnp.float32(0.2)  # a learned scale enters the bound
  rng = np.random.default_rng(13)
  b = 4
  batch = {"audio": rng.normal(size=(b, 6)).astype(np.float32),
           "face": rng.uniform(size=(b, 3, 3, 1)).astype(np.float32)}
  sigma = {"audio": 1.5 * np.exp(0.2), "face": 0.3}

  # Independent estimate: z ~ q_m by NumPy, decoded by the model, every density by scipy.
  s = 4000
  bound = np.zeros((s, b))
  for m in ("audio", "face"):
    mu, logvar = (np.asarray(x, np.float64) for x in model.encode(m, batch[m]))
    sd = np.exp(0.5 * logvar)
    z = mu + sd * rng.normal(size=(s,) + mu.shape)
    out = model.decode(jnp.asarray(z.reshape(s * b, -1), jnp.float32))
    for n in ("audio", "face"):
      pred = np.asarray(out[n], np.float64).reshape(s, b, -1)
      bound += 0.5 * stats.norm.logpdf(batch[n].reshape(1, b, -1), pred, sigma[n]).sum(axis=-1)
    bound += 0.5 * (stats.norm.logpdf(z).sum(axis=-1) - stats.norm.logpdf(z, mu, sd).sum(axis=-1))
  per_draw = bound.mean(axis=1)
  mc, mc_se = per_draw.mean(), per_draw.std() / np.sqrt(s)

  graphdef, state = nnx.split(model)
  evals = 2000

  def elbo(keys):
    return msvae.loss(nnx.merge(graphdef, state), batch, keys, jax.random.key(0), 0, cfg.loss)[1]["elbo"]

  all_keys = jax.random.split(jax.random.key(5), evals * b).reshape(evals, b)
  values = np.asarray(jax.jit(jax.vmap(elbo))(all_keys), np.float64)
  code, code_se = values.mean(), values.std() / np.sqrt(evals)
  tol = 4 * np.hypot(mc_se, code_se)
  # The tolerance must be far below the size of a plausible error (e.g. a lost log(2 pi) constant).
  assert tol < 0.05 * 0.5 * np.log(2 * np.pi) * (6 + 9)
  assert code == pytest.approx(mc, abs=tol)
