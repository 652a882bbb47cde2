"""MoPoE's subsets and MMVAE's components decoded as one batch per decoder: the same loss and gradients as decoding
each subset (component) and draw with its own decoder calls, one by one, and one decoder call per modality."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmvae import config as config_lib
from mmvae import losses, zoo
from mmvae.modalities import Modality
from mmvae.zoo import experts, mmvae, mopoe

VOCAB = (("vocab", ("<pad>", "a", "b", "c", "d", "e")),)
SPECS = {"audio": Modality("audio", "spectrogram", (6,), "float32"),
         "image": Modality("image", "image", (1, 4, 4, 1), "uint8"),
         "text": Modality("text", "tokens", (4,), "int32", VOCAB)}
B, K, LATENT, HIDDEN = 5, 2, 3, 7
BETA = 0.6


def _setup(kind, extra):
  cfg = config_lib.load("synthetic:tiny", [f"model.kind={kind}", f"model.latent_dim={LATENT}", f"model.hidden=({HIDDEN},)",
                                           f"loss.num_samples={K}", f"loss.kl_weight={BETA}", "loss.kl_anneal_steps=0",
                                           "loss.learn_sigma=True", *extra])
  cfg.loss.sigma = {"audio": 0.5, "image": 0.2}
  zoo.of(cfg).check_config(cfg)
  model = zoo.of(cfg).build(cfg, SPECS, seed=1, num_classes=0)
  model.decoder.log_sigma_offset["audio"].value = jnp.float32(0.3)  # a learned scale the loss must use
  rng = np.random.default_rng(2)
  batch = {"audio": rng.normal(size=(B, 6)).astype(np.float32),
           "image": rng.uniform(size=(B, 4, 4, 1)).astype(np.float32),
           "text": rng.integers(0, 6, (B, 4)).astype(np.int32)}
  return cfg, model, batch


def _log_lik_one_by_one(model, z_BxZ, batch, log_sigma):
  """sum over modalities of log p(x_m | z) [B]: each modality's decoder called on this one latent batch."""
  total = 0.0
  for name, m in model.specs.items():
    out = model.decoder(z_BxZ, [name])[name]
    total = total - m.kind_module.nll(out, jnp.asarray(batch[name]), log_sigma.get(name))
  return total


def _mopoe_per_subset(model, batch, draws, loss_cfg):
  """The MoPoE loss with each subset's product formed from its members and decoded on its own, draw by draw."""
  names = list(model.specs)
  mus, logvars = zip(*(model.encode(n, batch[n]) for n in names))
  subsets = experts.subsets(tuple(names))
  log_sigma = losses.log_sigmas(model, loss_cfg)
  eps = draws["eps"]
  products, log_lik = [], []  # per subset: (mu, logvar), [K, B]
  for s in subsets:
    idx = [names.index(n) for n in s]
    mu_BxZ, logvar_BxZ = experts.product_of_experts(jnp.stack([mus[i] for i in idx]),
                                                    jnp.stack([logvars[i] for i in idx]), prior=False)
    products.append((mu_BxZ, logvar_BxZ))
  if eps.shape[0] == len(subsets):  # stratified: subset d with its own draws d
    recon_B = 0.0
    for d, (mu_BxZ, logvar_BxZ) in enumerate(products):
      for k in range(eps.shape[1]):
        recon_B = recon_B - _log_lik_one_by_one(model, mu_BxZ + jnp.exp(0.5 * logvar_BxZ) * eps[d, k], batch, log_sigma)
    recon_B = recon_B / (len(subsets) * eps.shape[1])
  else:  # one subset per example: every subset decoded, each example keeps its own subset's rows
    recon_B = 0.0
    for d, (mu_BxZ, logvar_BxZ) in enumerate(products):
      mine_B = jnp.asarray(draws["subset"]) == d
      for k in range(eps.shape[1]):
        nll_B = -_log_lik_one_by_one(model, mu_BxZ + jnp.exp(0.5 * logvar_BxZ) * eps[0, k], batch, log_sigma)
        recon_B = recon_B + jnp.where(mine_B, nll_B, 0.0)
    recon_B = recon_B / eps.shape[1]
  kl_B = sum(losses.gaussian_kl(mu, lv) for mu, lv in products) / len(subsets)
  return jnp.mean(recon_B + BETA * kl_B), -jnp.mean(recon_B + kl_B)


def _mmvae_per_component(model, batch, draws, loss_cfg):
  """The MMVAE bound trained by loss.estimator, each component's draw k decoded on its own."""
  estimator = loss_cfg.estimator
  names = list(model.specs)
  mus, logvars = zip(*(model.encode(n, batch[n]) for n in names))
  mus_MxBxZ, logvars_MxBxZ = jnp.stack(mus), jnp.stack(logvars)
  log_sigma = losses.log_sigmas(model, loss_cfg)
  eps = draws["eps"]
  num_k = eps.shape[1]

  def log_w(m, k, z_BxZ, q_mus, q_logvars, beta):
    lik = _log_lik_one_by_one(model, z_BxZ, batch, log_sigma)
    ratio = experts.log_normal(z_BxZ, 0.0, 0.0) - experts.log_mixture(z_BxZ, q_mus, q_logvars)
    return lik + beta * ratio

  rows, unit = [], []  # per component: [K, B] trained log weights and unit-weight ones
  for m in range(len(names)):
    z_KxBxZ = [mus_MxBxZ[m] + jnp.exp(0.5 * logvars_MxBxZ[m]) * eps[m, k] for k in range(num_k)]
    if estimator == "dreg":
      q = (jax.lax.stop_gradient(mus_MxBxZ), jax.lax.stop_gradient(logvars_MxBxZ))
      w_KxB = jax.nn.softmax(jnp.stack([jax.lax.stop_gradient(log_w(m, k, z, *q, BETA))
                                        for k, z in enumerate(z_KxBxZ)]), axis=0)
      z_KxBxZ = [experts.scale_grad(z, w_KxB[k][:, None]) for k, z in enumerate(z_KxBxZ)]
    else:
      q = (mus_MxBxZ, logvars_MxBxZ)
    rows.append(jnp.stack([log_w(m, k, z, *q, BETA) for k, z in enumerate(z_KxBxZ)]))
    unit.append(jnp.stack([log_w(m, k, z, *q, 1.0) for k, z in enumerate(z_KxBxZ)]))
  iwae = lambda lw_KxB: jax.nn.logsumexp(lw_KxB, axis=0) - math.log(num_k)
  if estimator == "elbo":
    objective_B = sum(jnp.mean(r, axis=0) for r in rows) / len(rows)
  else:
    objective_B = sum(iwae(r) for r in rows) / len(rows)
    if estimator == "dreg":
      w = [jax.nn.softmax(jax.lax.stop_gradient(r), axis=0) for r in rows]
      surrogate_B = sum(jnp.sum(wi * r, axis=0) for wi, r in zip(w, rows)) / len(rows)
      objective_B = jax.lax.stop_gradient(objective_B) + surrogate_B - jax.lax.stop_gradient(surrogate_B)
  return -jnp.mean(objective_B), jnp.mean(jnp.stack(unit))


CASES = [("mopoe", "loss.subset_sampling=stratified"), ("mopoe", "loss.subset_sampling=one"),
         ("mmvae", "loss.estimator=elbo"), ("mmvae", "loss.estimator=iwae"), ("mmvae", "loss.estimator=dreg")]


@pytest.mark.parametrize("kind,option", CASES)
def test_one_batch_per_decoder_is_the_subset_by_subset_loss_and_gradient(kind, option):
  cfg, model, batch = _setup(kind, [option])
  module, reference = {"mopoe": (mopoe, _mopoe_per_subset), "mmvae": (mmvae, _mmvae_per_component)}[kind]
  keys = jax.random.split(jax.random.key(4), B)
  draws = module.noise(keys, len(SPECS), cfg.loss, K, LATENT)
  if kind == "mopoe" and option.endswith("one"):
    draws["subset"] = jnp.array([6, 0, 3, 5, 1], jnp.int32)  # the all-modality subset, singles and pairs
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def batched(p):
    total, metrics = module.objective(nnx.merge(graphdef, p, rest), batch, draws, 0, cfg.loss)
    return total, metrics["elbo"]

  def one_by_one(p):
    return reference(nnx.merge(graphdef, p, rest), batch, draws, cfg.loss)

  (total, elbo), grads = jax.jit(jax.value_and_grad(batched, has_aux=True))(params)
  (want_total, want_elbo), want_grads = jax.jit(jax.value_and_grad(one_by_one, has_aux=True))(params)
  assert float(total) == pytest.approx(float(want_total), rel=1e-5)
  assert float(elbo) == pytest.approx(float(want_elbo), rel=1e-5)
  flat, want_flat = nnx.to_flat_state(grads), nnx.to_flat_state(want_grads)
  for (path, g), (_, want) in zip(flat, want_flat):
    np.testing.assert_allclose(np.asarray(g[...]), np.asarray(want[...]), rtol=2e-4, atol=1e-6, err_msg=str(path))
  assert max(float(jnp.max(jnp.abs(g[...]))) for _, g in want_flat) > 1e-3  # the gradients are not all zero


@pytest.mark.parametrize("kind,option,rows", [("mopoe", "loss.subset_sampling=stratified", 7 * K * B),
                                              ("mopoe", "loss.subset_sampling=one", K * B),
                                              ("mmvae", "loss.estimator=dreg", 3 * K * B)])
def test_each_decoder_runs_once_on_every_latent_of_the_step(kind, option, rows):
  """The first layer of each modality's decoder is one matmul on all subsets' (components') draws."""
  cfg, model, batch = _setup(kind, [option])
  module = {"mopoe": mopoe, "mmvae": mmvae}[kind]
  draws = module.noise(jax.random.split(jax.random.key(4), B), len(SPECS), cfg.loss, K, LATENT)
  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(lambda s: module.objective(nnx.merge(graphdef, s), batch, draws, 0, cfg.loss)[0])(state)
  first_layer = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"
                 and tuple(e.invars[1].aval.shape) == (LATENT, HIDDEN)]
  calls = 2 if kind == "mmvae" else 1  # DReG evaluates its weights twice (held fixed, then along the path)
  assert [tuple(e.invars[0].aval.shape) for e in first_layer] == [(rows, LATENT)] * (len(SPECS) * calls)
