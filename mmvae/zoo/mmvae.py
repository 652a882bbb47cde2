"""`mmvae` (Shi et al. 2019): a mixture of Gaussian experts, stratified sampling, ELBO / IWAE / DReG estimators.

The joint posterior is the uniform mixture q(z | X) = 1/M sum_m q_m(z | x_m). Stratified sampling draws
K = loss.num_samples latents z_mk ~ q_m from every component, and each is weighted by
  log w_mk = sum_n log p(x_n | z_mk)                       (1) every modality, from every component's draws
           + log p(z_mk) - log q(z_mk | X)                 (2) q the mixture density, p(z) = N(0, I)
loss.estimator chooses the bound trained (each per example, in nats):
  'elbo'   1/M sum_m 1/K sum_k log w_mk                                     (3) stratified ELBO
  'iwae'   1/M sum_m log 1/K sum_k w_mk                                     (4) stratified IWAE
  'dreg'   (4)'s value with the doubly reparameterised gradient (Tucker et al. 2019), as MMVAE trains
The IWAE forms average over components outside the log: Shi et al.'s `--looser` bound, the one their
released models were trained with. DReG uses experts.py's scale_grad recipe, so both gradients are
right: through the decoders each log w_mk counts with its normalised weight w~_mk (the IWAE gradient),
along the sample path z_mk with w~_mk^2, and q's parameters inside (2) are held fixed; on K = 1 it is
the sticking-the-landing ELBO gradient. loss.kl_weight (losses.kl_weight) scales (2) in the trained
bound; the logged `elbo` (3) and `iwae` (4) use the unit weight, whatever the estimator.
`encode(m, x)` is the expert q_m; `joint_posterior` is the moment-matched Gaussian of the mixture.
"""

import math

import jax
import jax.numpy as jnp

from mmvae import losses, zoo
from mmvae.zoo import expert_vae, experts

ESTIMATORS = ("elbo", "iwae", "dreg")  # config.loss.estimator


class MMVAE(expert_vae.ExpertVAE):
  """Experts combined by a uniform mixture."""

  def joint_posterior(self, inputs: dict):
    """(mu_BxZ, logvar_BxZ): the Gaussian with the mean and variance of the given experts' uniform mixture.

    A moment-matched Gaussian covers every component, so as an importance-sampling proposal (the test
    likelihood) it is never narrower than the mixture; the PoE of MMVAE's experts is nothing the model
    was trained with and can be far narrower. One modality: its expert itself.
    """
    mus_MxBxZ, logvars_MxBxZ = self.experts(inputs)
    mu_BxZ = jnp.mean(mus_MxBxZ, axis=0)
    # E[z^2] - E[z]^2 written as the mean variance plus the spread of the means, so it stays > 0 in floats.
    var_BxZ = jnp.mean(jnp.exp(logvars_MxBxZ), axis=0) + jnp.mean((mus_MxBxZ - mu_BxZ)**2, axis=0)
    return mu_BxZ, jnp.log(var_BxZ)


def noise(example_keys_B, num_modalities: int, loss_cfg, num_samples: int, latent_dim: int) -> dict:
  """Per-example draws: eps_MxKxBxZ, K per mixture component (loss_cfg: as the other kinds' noise; unused)."""
  del loss_cfg
  eps_keys_B, = expert_vae.example_streams(example_keys_B, 1)
  return {"eps": expert_vae.normal_draws(eps_keys_B, (num_modalities, num_samples), latent_dim)}


def _log_weights(model, batch, z_MxKxBxZ, mus_MxBxZ, logvars_MxBxZ, log_sigma):
  """(log_lik_MxKxB, log_ratio_MxKxB): (1) and (2) of every stratified draw."""
  log_lik_MxKxB = sum(expert_vae.log_likelihoods(model, z_MxKxBxZ, batch, log_sigma).values())  # (1)
  log_prior_MxKxB = experts.log_normal(z_MxKxBxZ, 0.0, 0.0)
  log_q_MxKxB = experts.log_mixture(z_MxKxBxZ, mus_MxBxZ, logvars_MxBxZ)  # (2)
  return log_lik_MxKxB, log_prior_MxKxB - log_q_MxKxB


def objective(model, batch, draws: dict, step, loss_cfg):
  """(total, metrics) of the chosen estimator for given draws (see `noise`); terms (1)-(4)."""
  estimator = loss_cfg.get("estimator", "elbo")
  mus_MxBxZ, logvars_MxBxZ = model.experts(batch)
  z_MxKxBxZ = mus_MxBxZ[:, None] + jnp.exp(0.5 * logvars_MxBxZ)[:, None] * draws["eps"]
  log_sigma = losses.log_sigmas(model, loss_cfg)
  beta = losses.kl_weight(loss_cfg, step)
  num_samples = z_MxKxBxZ.shape[1]
  if estimator == "dreg":
    # q's parameters enter the weights only as constants; the encoders learn through the samples' path.
    q_mus, q_logvars = jax.lax.stop_gradient(mus_MxBxZ), jax.lax.stop_gradient(logvars_MxBxZ)
    lik, ratio = _log_weights(model, batch, jax.lax.stop_gradient(z_MxKxBxZ), q_mus, q_logvars, log_sigma)
    w_tilde_MxKxB = jax.nn.softmax(jax.lax.stop_gradient(lik + beta * ratio), axis=1)
    # The sample path's cotangent times w~ on top of the surrogate's w~: w~^2; the decoders see w~ alone.
    z_MxKxBxZ = experts.scale_grad(z_MxKxBxZ, w_tilde_MxKxB[..., None])
    log_lik_MxKxB, log_ratio_MxKxB = _log_weights(model, batch, z_MxKxBxZ, q_mus, q_logvars, log_sigma)
  else:
    log_lik_MxKxB, log_ratio_MxKxB = _log_weights(model, batch, z_MxKxBxZ, mus_MxBxZ, logvars_MxBxZ, log_sigma)
  log_w_MxKxB = log_lik_MxKxB + log_ratio_MxKxB  # unit KL weight: the reported bounds
  train_log_w_MxKxB = log_lik_MxKxB + beta * log_ratio_MxKxB
  iwae_per_component = lambda lw_MxKxB: jax.nn.logsumexp(lw_MxKxB, axis=1) - math.log(num_samples)
  if estimator == "elbo":
    objective_B = jnp.mean(train_log_w_MxKxB, axis=(0, 1))  # (3)
  else:
    objective_B = jnp.mean(iwae_per_component(train_log_w_MxKxB), axis=0)  # (4)
    if estimator == "dreg":
      surrogate_B = jnp.mean(jnp.sum(w_tilde_MxKxB * train_log_w_MxKxB, axis=1), axis=0)
      # The value of the bound, the gradient of the DReG surrogate.
      objective_B = jax.lax.stop_gradient(objective_B) + surrogate_B - jax.lax.stop_gradient(surrogate_B)
  total = -jnp.mean(objective_B)
  metrics = {"elbo": jnp.mean(log_w_MxKxB),  # (3)
             "iwae": jnp.mean(iwae_per_component(log_w_MxKxB)),  # (4)
             "recon": -jnp.mean(log_lik_MxKxB), "log_prior_over_q": jnp.mean(log_ratio_MxKxB)}
  return expert_vae.finish(model, batch, total, metrics, loss_cfg, beta, log_sigma)


def check(loss_cfg) -> None:
  """Raises ValueError when loss.estimator is unknown."""
  if loss_cfg.get("estimator", "elbo") not in ESTIMATORS:
    raise ValueError(f"config.loss.estimator={loss_cfg.estimator!r} is unknown; use one of {ESTIMATORS}")


# loss.estimator: the bound trained, 'elbo' (stratified ELBO), 'iwae' (stratified IWAE) or 'dreg' (IWAE with
# DReG gradients; Shi et al. trained with dreg and K = 30).
zoo.register("mmvae", expert_vae.Kind("mmvae", MMVAE, noise, objective, {"estimator": "elbo"}, check))
