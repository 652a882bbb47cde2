"""Test-set log-likelihood of a model: an importance-weighted estimate with K samples of its joint posterior.

  log p(x) ~= log (1/K) sum_k  p(x | z_k) p(z_k) / q(z_k | x),   z_k ~ q(z | x), the joint posterior
  log p(x | z) = sum_m log p(x_m | z)                           each modality's likelihood (its kind's
                                                                nll, with the model's Gaussian scales)

In expectation a lower bound on log p(x) that tightens as K grows (Burda et al. 2016's IWAE bound);
when q is the exact posterior every weight equals p(x), so the estimate is exact for any K. Reported
in nats per example, with E_q[log p(x_m | z)] of each modality beside it. An image is scored on its
first stored frame. The model must offer `joint_posterior({name: x}) -> (mu_BxZ, logvar_BxZ)`;
for one that does not, the estimate is skipped with a note. Noise of example i comes from
np.random.default_rng((seed, i)), so the numbers do not depend on the batch size.
"""

import math

import numpy as np

from mmvae import data, inference, progress, zoo

DEFAULT_SAMPLES = 16
_LOG_2PI = math.log(2 * math.pi)


def log_sigmas(model, loss_cfg) -> dict:
  """{modality: log sigma} of the Gaussian likelihoods: model.log_sigmas(loss_cfg) if offered, else the MS-VAE's."""
  if isinstance(model, zoo.LogSigmas):
    values = model.log_sigmas(loss_cfg)
  else:
    from mmvae import losses
    values = losses.log_sigmas(model, loss_cfg)
  return {k: float(v) for k, v in values.items()}


def _log_normal(z, mu, logvar):
  import jax.numpy as jnp
  return -0.5 * jnp.sum(_LOG_2PI + logvar + (z - mu) ** 2 * jnp.exp(-logvar), axis=-1)


def _log_weights_fn(specs: dict, log_sigma: dict):
  """(model, x {name: [B, ...]}, eps_KxBxZ) -> (log w [K, B], {name: log p(x_m | z_k) [K, B]}), jitted."""
  import jax.numpy as jnp
  from flax import nnx

  @nnx.jit
  def log_weights(model, x, eps_KxBxZ):
    mu_BxZ, logvar_BxZ = model.joint_posterior(x)
    k, b, z_dim = eps_KxBxZ.shape
    z_KxBxZ = mu_BxZ[None] + jnp.exp(0.5 * logvar_BxZ)[None] * eps_KxBxZ
    out = model.decode(z_KxBxZ.reshape(k * b, z_dim))
    log_lik = {}
    for name, m in specs.items():
      target = jnp.broadcast_to(x[name][None], (k,) + x[name].shape).reshape((k * b,) + x[name].shape[1:])
      log_lik[name] = -m.kind_module.nll(out[name], target, log_sigma.get(name)).reshape(k, b)
    log_prior = _log_normal(z_KxBxZ, 0.0, 0.0)
    log_q = _log_normal(z_KxBxZ, mu_BxZ[None], logvar_BxZ[None])
    return sum(log_lik.values()) + log_prior - log_q, log_lik

  return log_weights


def estimate(model, inputs: dict, specs: dict, log_sigma: dict, samples: int = DEFAULT_SAMPLES, seed: int = 0,
             latent_dim: int | None = None, batch_size: int | None = None, offset: int = 0) -> dict:
  """Per-example 'iwae' (the log p(x) estimate, nats) and 'expected_log_lik_<m>' of each modality; 'samples' = K.

  offset: the split position of inputs' first row (a chunk of a streamed split draws the noise the whole split would).
  """
  from scipy import special
  n = len(next(iter(inputs.values())))
  if latent_dim is None:
    latent_dim = int(np.shape(model.joint_posterior({k: v[:1] for k, v in inputs.items()})[0])[-1])
  batch_size = batch_size or max(1, inference.BATCH // samples)  # K decodes per example
  eps_NxKxZ = np.stack([np.random.default_rng((seed, offset + i)).standard_normal((samples, latent_dim))
                        for i in range(n)])
  fn = _log_weights_fn(specs, {k: np.float32(v) for k, v in log_sigma.items()})
  parts = []
  for lo in progress.bar(range(0, n, batch_size), desc="likelihood", disable=n <= 4 * batch_size):
    idx = np.minimum(np.arange(lo, lo + batch_size), n - 1)  # the last batch padded: one compilation
    x = {k: v[idx] for k, v in inputs.items()}
    log_w, log_lik = fn(model, x, np.asarray(eps_NxKxZ[idx].transpose(1, 0, 2), np.float32))
    keep = min(batch_size, n - lo)
    log_w = np.asarray(log_w, np.float64)[:, :keep]
    parts.append({"iwae": special.logsumexp(log_w, axis=0) - math.log(samples),
                  **{f"expected_log_lik_{k}": np.asarray(v, np.float64)[:, :keep].mean(0) for k, v in log_lik.items()}})
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  out["samples"] = np.array(samples)
  return out


def for_run(model, config, arrays: dict, specs: dict, samples: int, seed: int, latent_dim: int,
            offset: int = 0) -> dict:
  """estimate() on a split's stored arrays, or {'skipped': why} for a model that cannot be scored."""
  if not getattr(model, "can_generate", False):
    return {"skipped": np.array("the model cannot generate (no decoder), so it has no likelihood")}
  if not isinstance(model, zoo.JointPosterior):
    return {"skipped": np.array(f"the model (kind `{config.model.get('kind', 'msvae')}`) offers no joint_posterior "
                                "to sample the importance weights from")}
  try:
    sigma = log_sigmas(model, config.loss)
  except (AttributeError, KeyError) as e:  # a model whose scales live elsewhere than the MS-VAE's decoder
    return {"skipped": np.array(f"the model's likelihood scales are unknown ({e}); give it log_sigmas(loss_cfg)")}
  return estimate(model, data.model_inputs(specs, arrays), specs, sigma, samples, seed, latent_dim, offset=offset)


def summary(result: dict) -> dict:
  """Flat metrics: likelihood.iwae_k<K> and likelihood.expected_log_lik.<m> (means over examples, nats)."""
  if not result or "skipped" in result:
    return {}
  k = int(result["samples"])
  out = {f"likelihood.iwae_k{k}": float(np.mean(result["iwae"])), "likelihood.samples": k,
         "likelihood.examples": int(len(result["iwae"]))}
  for key, values in result.items():
    if key.startswith("expected_log_lik_"):
      out[f"likelihood.expected_log_lik.{key[len('expected_log_lik_'):]}"] = float(np.mean(values))
  return out
