"""The multimodal-VAE baselines (mvae, mmvae, mopoe) against plain numpy loops; every kind on 1 and 4 devices."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import special

from mmvae import config as config_lib
from mmvae import zoo
from mmvae.modalities import Modality
from mmvae.train import parallel
from mmvae.train import step as step_lib
from mmvae.zoo import mmvae, mopoe, msvae, mvae

VOCAB = (("vocab", ("<pad>", "a", "b", "c", "d", "e")),)
# The device and learning tests: names the tiny config's encoder and sigma tables know.
AUDIO = Modality("audio", "spectrogram", (6,), "float32")
IMAGE = Modality("image", "image", (1, 4, 4, 1), "uint8")
TEXT = Modality("text", "tokens", (4,), "int32", VOCAB)
# The numeric tests: small, with a sigmoid image and a categorical text.
SMALL = {"a": Modality("a", "vector", (3,), "float32"), "img": Modality("img", "image", (1, 2, 2, 1), "uint8"),
         "text": Modality("text", "tokens", (4,), "int32", VOCAB)}
SIGMA = {"a": 0.5, "img": 0.2}
OFFSET = 0.3  # a learned log-sigma factor of 'a', set by hand, so the learned scale must be used
BETA = 0.7


def _batch(specs, n, seed):
  rng = np.random.default_rng(seed)
  out = {"label": np.arange(n, dtype=np.int32) % 4}
  for name, m in specs.items():
    if m.kind == "tokens":
      out[name] = rng.integers(0, 6, (n,) + m.shape).astype(np.int32)
    elif m.kind == "image":
      out[name] = rng.uniform(size=(n,) + m.shape[1:]).astype(np.float32)
    else:
      out[name] = rng.normal(size=(n,) + m.shape).astype(np.float32)
  return out


# ---------------------------------------------------------------- every kind on 1 and 4 devices, and it learns

KINDS = ("msvae", "contrastive", "mvae", "mmvae", "mopoe")
# On three modalities the baselines run their non-default paths too (one compile pair per case keeps it quick):
# random subsets, DReG's custom gradient under pmap, every subset's draws, and the identity head.
OPTIONS = {"mvae": ("loss.subsampled_elbos=2", "loss.num_samples=2", "loss.identity_weight=0.3"),
           "mmvae": ("loss.estimator=dreg", "loss.num_samples=2", "loss.identity_weight=0.3"),
           "mopoe": ("loss.subset_sampling=stratified",)}
CASES = [(k, 2, ()) for k in KINDS] + [(k, 3, OPTIONS.get(k, ())) for k in KINDS]


@pytest.mark.parametrize("kind,num_modalities,extra", CASES,
                         ids=[f"{k}-{n}mod-{'+'.join(e) or 'tiny'}" for k, n, e in CASES])
def test_every_kind_agrees_on_one_and_four_devices_and_learns(kind, num_modalities, extra):
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4, set in conftest.py)")
  assert set(KINDS) <= set(zoo.kinds())
  cfg = config_lib.load("synthetic:tiny", [f"model.kind={kind}", *extra, "train.lr_schedule=constant",
                                           "train.warmup_steps=0", "train.learning_rate=0.01"])
  zoo.of(cfg).check_config(cfg)
  specs = {m.name: m for m in (AUDIO, IMAGE, TEXT)[:num_modalities]}
  model = zoo.of(cfg).build(cfg, specs, seed=0, num_classes=4)
  tx = step_lib.make_optimizer(cfg.train)
  graphdef, state = step_lib.init_state(model, tx)
  state = jax.tree.map(np.asarray, state)
  batch = _batch(specs, cfg.train.batch_size, seed=num_modalities)
  metrics, runners = {}, {}
  for n in (1, 4):
    runners[n] = parallel.Runner(graphdef, tx, cfg, "pmap", devices=jax.devices()[:n])
    _, m = runners[n].step(runners[n].put_state(state), batch)
    metrics[n] = {k: float(v) for k, v in m.items()}
  assert set(metrics[1]) == set(metrics[4]) and "loss" in metrics[1]
  for k in metrics[1]:
    assert metrics[4][k] == pytest.approx(metrics[1][k], rel=1e-5, abs=1e-5), k
  assert metrics[1]["grad_norm"] > 1e-3  # the step is not a no-op
  if kind in ("mvae", "mmvae", "mopoe"):
    assert "elbo" in metrics[1] and model.can_generate
  dev_state, history = runners[1].put_state(state), []
  for _ in range(60):  # a fixed small batch: the loss must fall
    dev_state, m = runners[1].step(dev_state, batch)
    history.append(float(m["loss"]))
  first, last = np.mean(history[:5]), np.mean(history[-5:])
  assert np.isfinite(history).all() and last < first - 0.2 * abs(first), history


# ---------------------------------------------------------------- plain numpy re-implementations

def _small(kind, extra=(), specs=None):
  """A tiny model of `kind` on SMALL (latent 2, one hidden layer of 5), with a learned scale set by hand."""
  cfg = config_lib.load("synthetic:tiny", [f"model.kind={kind}", "model.latent_dim=2", "model.hidden=(5,)",
                                           f"loss.kl_weight={BETA}", "loss.kl_anneal_steps=0", *extra])
  cfg.loss.sigma = dict(SIGMA)
  zoo.of(cfg).check_config(cfg)
  model = zoo.of(cfg).build(cfg, specs or SMALL, seed=3, num_classes=0)
  model.decoder.log_sigma_offset["a"].value = jnp.float32(OFFSET)
  return cfg, model


def _p(param):
  return np.asarray(param[...], np.float64)


def _linear(layer, x):
  return x @ _p(layer.kernel) + _p(layer.bias)


def _np_expert(model, name, x):
  """(mu, logvar) of one modality's encoder, by hand: an MLP (tokens: on counts without padding)."""
  x = np.asarray(x)
  enc = model.encoders[name]
  if SMALL[name].kind == "tokens":
    h = np.stack([np.bincount(row, minlength=6) for row in x]).astype(np.float64)
    h[:, 0] = 0.0
    enc = enc.mlp
  else:
    h = x.reshape(len(x), -1).astype(np.float64)
  for layer in enc.layers:
    h = np.maximum(_linear(layer, h), 0.0)
  out = _linear(enc.head, h)
  return out[:, :2], out[:, 2:]


def _np_log_lik(model, name, z, x):
  """log p(x | z) of one example's z under the modality's own decoder, from the densities' formulas."""
  h = np.asarray(z, np.float64)[None]
  for layer in model.decoder.trunks[name]:
    h = np.maximum(_linear(layer, h), 0.0)
  raw = _linear(model.decoder.heads[name].linear, h)[0]
  x = np.asarray(x, np.float64)
  if name == "text":
    logits = raw.reshape(4, 6)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return sum(log_p[i, int(t)] for i, t in enumerate(x))
  mean = raw if name == "a" else 1.0 / (1.0 + np.exp(-raw))
  sigma = SIGMA[name] * (math.exp(OFFSET) if name == "a" else 1.0)
  d = x.ravel() - mean
  return float(np.sum(-0.5 * d**2 / sigma**2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)))


def _np_poe(gaussians, prior):
  """Precision-weighted product of [(mu, logvar)] (with N(0, 1) if prior): (mu, var)."""
  precisions = [np.exp(-lv) for _, lv in gaussians] + ([np.ones_like(gaussians[0][0])] if prior else [])
  means = [mu for mu, _ in gaussians] + ([np.zeros_like(gaussians[0][0])] if prior else [])
  total = sum(precisions)
  return sum(p * m for p, m in zip(precisions, means)) / total, 1.0 / total


def _np_kl(mu, var):
  return 0.5 * float(np.sum(var + mu**2 - 1.0 - np.log(var)))


def _np_log_normal(z, mu, var):
  return float(np.sum(-0.5 * (np.log(2 * np.pi * var) + (z - mu)**2 / var)))


def _draws(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_mvae_two_modality_elbo_sum_written_out_by_hand():
  names = ("a", "img")
  specs = {n: SMALL[n] for n in names}
  cfg, model = _small("mvae", ["loss.num_samples=2"], specs)
  batch = _batch(specs, 3, seed=1)
  eps = _draws(0, (3, 2, 3, 2))  # terms (joint, a, img) x K x B x Z
  total, metrics = mvae.objective(model, batch, {"eps": eps, "subset": np.zeros((0, 3), np.int32)}, 0, cfg.loss)
  ea, ei = _np_expert(model, "a", batch["a"]), _np_expert(model, "img", batch["img"])
  terms = {"joint": ([ea, ei], names), "a": ([ea], ("a",)), "img": ([ei], ("img",))}
  neg = {}
  for t, (name, (experts_, recon_names)) in enumerate(terms.items()):
    mu, var = _np_poe(experts_, prior=True)
    recon = [-np.mean([sum(_np_log_lik(model, n, mu[b] + np.sqrt(var[b]) * eps[t, k, b], batch[n][b])
                           for n in recon_names) for k in range(2)]) for b in range(3)]
    kl = [_np_kl(mu[b], var[b]) for b in range(3)]
    neg[name] = (np.mean(recon), np.mean(kl))
  expected = sum(r + BETA * k for r, k in neg.values())
  assert float(total) == float(metrics["loss"]) == pytest.approx(expected, rel=1e-4)
  assert float(metrics["elbo"]) == pytest.approx(-sum(neg["joint"]), rel=1e-4)
  assert float(metrics["elbo_img"]) == pytest.approx(-sum(neg["img"]), rel=1e-4)


def test_mvae_three_modalities_with_text_and_subsampled_terms_against_a_loop():
  cfg, model = _small("mvae", ["loss.subsampled_elbos=2"])
  names = tuple(SMALL)
  batch = _batch(SMALL, 4, seed=2)
  eps = _draws(1, (1 + 3 + 2, 1, 4, 2))
  pool = list(itertools.combinations(names, 2))  # neither one modality nor all three
  subset = np.array([[0, 1, 2, 1], [2, 2, 0, 0]], np.int32)
  total, metrics = mvae.objective(model, batch, {"eps": eps, "subset": subset}, 0, cfg.loss)
  ex = {n: _np_expert(model, n, batch[n]) for n in names}
  trained, elbo = np.zeros((6, 4)), np.zeros((6, 4))  # terms x examples
  for b in range(4):
    subsets_ = [names] + [(n,) for n in names] + [pool[subset[j, b]] for j in range(2)]
    for t, s in enumerate(subsets_):
      mu, var = _np_poe([(ex[n][0][b], ex[n][1][b]) for n in s], prior=True)
      z = mu + np.sqrt(var) * eps[t, 0, b]
      recon = -sum(_np_log_lik(model, n, z, batch[n][b]) for n in s)  # only the term's own modalities
      trained[t, b], elbo[t, b] = recon + BETA * _np_kl(mu, var), -recon - _np_kl(mu, var)
  assert float(total) == pytest.approx(trained.mean(1).sum(), rel=1e-4)
  assert float(metrics["elbo"]) == pytest.approx(elbo[0].mean(), rel=1e-4)
  assert float(metrics["elbo_text"]) == pytest.approx(elbo[3].mean(), rel=1e-4)
  assert float(metrics["elbo_subsampled"]) == pytest.approx(elbo[4:].mean(), rel=1e-4)
  draws = mvae.noise(jax.random.split(jax.random.key(0), 4), 3, cfg.loss, 1, 2)
  assert draws["eps"].shape == (6, 1, 4, 2) and draws["subset"].shape == (2, 4)
  assert int(draws["subset"].min()) >= 0 and int(draws["subset"].max()) < 3


@pytest.mark.parametrize("names", [("a", "img"), ("a", "img", "text"), ("text",)])
def test_mvae_and_mopoe_joint_posteriors_are_numpy_precision_weighted_products(names):
  batch = _batch(SMALL, 5, seed=4)
  for kind, prior in (("mvae", True), ("mopoe", False)):
    _, model = _small(kind)
    mu, logvar = model.joint_posterior({n: batch[n] for n in names})
    want_mu, want_var = _np_poe([_np_expert(model, n, batch[n]) for n in names], prior)
    np.testing.assert_allclose(mu, want_mu, rtol=1e-4, atol=1e-6, err_msg=kind)
    np.testing.assert_allclose(np.exp(logvar), want_var, rtol=1e-4, err_msg=kind)
  # mvae's unimodal posterior is PoE(prior, expert), and msvae's joint posterior is MVAE's combination.
  _, model = _small("mvae")
  mu, logvar = model.encode("a", batch["a"])
  want_mu, want_var = _np_poe([_np_expert(model, "a", batch["a"])], True)
  np.testing.assert_allclose(mu, want_mu, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.exp(logvar), want_var, rtol=1e-4)
  cfg = config_lib.load("synthetic:tiny", ["model.latent_dim=2", "model.hidden=(5,)"])
  ms = msvae.build(cfg, SMALL, seed=0)
  mu, logvar = ms.joint_posterior({n: batch[n] for n in names})
  want_mu, want_var = _np_poe([_np_expert(ms, n, batch[n]) for n in names], True)
  np.testing.assert_allclose(mu, want_mu, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.exp(logvar), want_var, rtol=1e-4)


def _np_experts(model, batch, names=tuple(SMALL)):
  """[(mu_BxZ, var_BxZ)] of every modality's expert, by hand."""
  return [(mu, np.exp(lv)) for mu, lv in (_np_expert(model, n, batch[n]) for n in names)]


def _np_mmvae(model, batch, eps, beta, sample=None, q=None, names=tuple(SMALL)):
  """Per example (log w [M, K], log w with beta [M, K]) by a loop over components and draws.

  z_mk is drawn from the `sample` experts, log q(z | X) is the uniform mixture of the `q` experts (both
  the model's own by default).
  """
  sample = _np_experts(model, batch, names) if sample is None else sample
  q = sample if q is None else q
  out = []
  for b in range(eps.shape[2]):
    lw, lw_beta = np.zeros(eps.shape[:2]), np.zeros(eps.shape[:2])
    for m, k in itertools.product(range(len(names)), range(eps.shape[1])):
      z = sample[m][0][b] + np.sqrt(sample[m][1][b]) * eps[m, k, b]
      lik = sum(_np_log_lik(model, n, z, batch[n][b]) for n in names)
      log_q = math.log(sum(math.exp(_np_log_normal(z, mu[b], var[b])) for mu, var in q) / len(names))
      ratio = _np_log_normal(z, 0.0, 1.0) - log_q
      lw[m, k], lw_beta[m, k] = lik + ratio, lik + beta * ratio
    out.append((lw, lw_beta))
  return out


def _np_iwae(lw_MxK):
  return float(np.mean([np.log(np.mean(np.exp(row))) for row in lw_MxK]))


@pytest.mark.parametrize("estimator", ["elbo", "iwae", "dreg"])
def test_mmvae_stratified_bounds_against_a_loop_over_components_and_samples(estimator):
  cfg, model = _small("mmvae", [f"loss.estimator={estimator}", "loss.num_samples=3"])
  batch = _batch(SMALL, 3, seed=5)
  eps = _draws(2, (3, 3, 3, 2))
  total, metrics = mmvae.objective(model, batch, {"eps": eps}, 0, cfg.loss)
  per_example = _np_mmvae(model, batch, eps, BETA)
  assert float(metrics["elbo"]) == pytest.approx(np.mean([lw.mean() for lw, _ in per_example]), rel=1e-4)
  assert float(metrics["iwae"]) == pytest.approx(np.mean([_np_iwae(lw) for lw, _ in per_example]), rel=1e-4)
  assert float(metrics["iwae"]) > float(metrics["elbo"])  # IWAE is the tighter bound
  trained = [lwb.mean() if estimator == "elbo" else _np_iwae(lwb) for _, lwb in per_example]
  assert float(total) == pytest.approx(-np.mean(trained), rel=1e-4)


def test_mmvae_dreg_gradients_are_iwae_for_the_decoders_and_dreg_for_the_encoders():
  batch = _batch(SMALL, 3, seed=6)
  eps = _draws(3, (3, 4, 3, 2))
  grads = {}
  for estimator in ("iwae", "dreg"):
    cfg, model = _small("mmvae", [f"loss.estimator={estimator}"])
    graphdef, params = nnx.split(model, nnx.Param)
    grad_fn = jax.grad(lambda p: mmvae.objective(nnx.merge(graphdef, p), batch, {"eps": eps}, 0, cfg.loss)[0])
    grads[estimator] = grad_fn(params)
  for a, b in zip(jax.tree.leaves(grads["iwae"]["decoder"]), jax.tree.leaves(grads["dreg"]["decoder"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # The encoders get the doubly reparameterised estimate instead: sum_k w~_k^2 d log w_k / dz_k dz_k / dphi, with
  # q's parameters and the weights held fixed; here by central differences of that surrogate, in float64.
  fixed = _np_experts(model, batch)
  w_sq = [special.softmax(lwb, axis=1)**2 for _, lwb in _np_mmvae(model, batch, eps, BETA)]  # normalised over K
  bias = model.encoders["a"].head.bias

  def surrogate(index, delta):
    saved = bias.value
    moved = _p(bias).copy()
    moved[index] += delta
    bias.value = moved
    sample = _np_experts(model, batch)
    bias.value = saved
    per_example = _np_mmvae(model, batch, eps, BETA, sample=sample, q=fixed)
    return np.mean([np.sum(w * lwb) / len(SMALL) for w, (_, lwb) in zip(w_sq, per_example)])

  for index in (0, 3):  # the bias of mu[0] and of logvar[1] of modality 'a'
    numeric = -(surrogate(index, 1e-4) - surrogate(index, -1e-4)) / 2e-4
    got = float(np.asarray(grads["dreg"]["encoders"]["a"]["head"]["bias"][...])[index])
    assert got == pytest.approx(numeric, rel=2e-3, abs=1e-4), index
    plain = float(np.asarray(grads["iwae"]["encoders"]["a"]["head"]["bias"][...])[index])
    assert abs(plain - got) > 1e-3, index  # the comparison can fail: IWAE's own gradient differs


def test_mmvae_joint_posterior_moment_matches_the_mixture():
  _, model = _small("mmvae")
  batch = _batch(SMALL, 5, seed=7)
  ex = _np_experts(model, batch)
  mu, logvar = model.joint_posterior({n: batch[n] for n in SMALL})
  want_mu = sum(m for m, _ in ex) / 3
  want_var = sum(v + m**2 for m, v in ex) / 3 - want_mu**2  # E[z^2] - E[z]^2 of the mixture
  np.testing.assert_allclose(mu, want_mu, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.exp(logvar), want_var, rtol=1e-4)
  one_mu, one_logvar = model.joint_posterior({"img": batch["img"]})  # one modality: its expert
  np.testing.assert_allclose(one_mu, ex[1][0], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.exp(one_logvar), ex[1][1], rtol=1e-4)


@pytest.mark.parametrize("sampling", ["one", "stratified"])
def test_mopoe_elbo_and_mean_subset_kl_against_a_loop(sampling):
  cfg, model = _small("mopoe", [f"loss.subset_sampling={sampling}", "loss.num_samples=2"])
  names = tuple(SMALL)
  subsets_ = [s for r in (1, 2, 3) for s in itertools.combinations(names, r)]
  batch = _batch(SMALL, 4, seed=8)
  eps = _draws(4, (len(subsets_) if sampling == "stratified" else 1, 2, 4, 2))
  chosen = np.array([6, 0, 4, 2], np.int32)
  total, metrics = mopoe.objective(model, batch, {"eps": eps, "subset": chosen}, 0, cfg.loss)
  ex = {n: _np_expert(model, n, batch[n]) for n in names}
  recon, kl = [], []
  for b in range(4):
    products = [_np_poe([(ex[n][0][b], ex[n][1][b]) for n in s], prior=False) for s in subsets_]
    kl.append(np.mean([_np_kl(mu, var) for mu, var in products]))  # the mixture's KL as the paper approximates it
    drawn = list(enumerate(products)) if sampling == "stratified" else [(0, products[chosen[b]])]
    recon.append(-np.mean([sum(_np_log_lik(model, n, mu + np.sqrt(var) * eps[d, k, b], batch[n][b]) for n in names)
                           for d, (mu, var) in drawn for k in range(2)]))
  assert float(total) == pytest.approx(np.mean(recon) + BETA * np.mean(kl), rel=1e-4)
  assert float(metrics["elbo"]) == pytest.approx(-np.mean(recon) - np.mean(kl), rel=1e-4)
  assert float(metrics["kl_subsets"]) == pytest.approx(np.mean(kl), rel=1e-4)


@pytest.mark.parametrize("kind,extra", [("mvae", ["loss.subsampled_elbos=1"]), ("mmvae", ["loss.estimator=dreg"]),
                                        ("mopoe", [])])
def test_wiring_the_registered_loss_is_the_objective_of_noise_drawn_from_each_examples_own_key(kind, extra):
  """Wiring only: Kind.loss is objective(noise(keys)); each objective is checked against a loop above."""
  cfg, model = _small(kind, [*extra, "loss.num_samples=2"])
  module = {"mvae": mvae, "mmvae": mmvae, "mopoe": mopoe}[kind]
  batch = _batch(SMALL, 4, seed=9)
  keys = jax.random.split(jax.random.key(5), 4)
  total, metrics = zoo.get(kind).loss(model, batch, keys, None, 0, cfg.loss)
  draws = module.noise(keys, 3, cfg.loss, 2, 2)
  assert float(total) == pytest.approx(float(module.objective(model, batch, draws, 0, cfg.loss)[0]), rel=1e-6)
  # Example 0's draws depend on its key alone: the same key in another batch position gives the same rows.
  moved = module.noise(jnp.stack([keys[3], keys[1], keys[2], keys[0]]), 3, cfg.loss, 2, 2)
  np.testing.assert_array_equal(np.asarray(moved["eps"])[..., 3, :], np.asarray(draws["eps"])[..., 0, :])
  assert np.isfinite(float(metrics["elbo"]))


@pytest.mark.parametrize("kind,override,key", [
    ("mmvae", "loss.estimator=vimco", "loss.estimator"),
    ("mvae", "loss.estimator=dreg", "loss.estimator"),
    ("mopoe", "loss.likelihood=sse", "loss.likelihood"),
    ("mmvae", "loss.num_samples=0", "loss.num_samples"),
    ("mvae", "loss.subsampled_elbos=-1", "loss.subsampled_elbos"),
    ("mopoe", "loss.subsampled_elbos=2", "loss.subsampled_elbos"),
    ("mopoe", "loss.subset_sampling=all", "loss.subset_sampling"),
    ("mmvae", "loss.subset_sampling=stratified", "loss.subset_sampling"),
    ("mvae", "model.decoder=deconv", "model.decoder"),
    ("mopoe", "loss.infonce_weight=1.0", "loss.infonce_weight"),
    ("mmvae", "loss.triplet_weight=0.5", "loss.triplet_weight"),
])
def test_check_config_names_the_key_to_change(kind, override, key):
  cfg = config_lib.load("synthetic:tiny", [f"model.kind={kind}", override])
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    zoo.of(cfg).check_config(cfg)
