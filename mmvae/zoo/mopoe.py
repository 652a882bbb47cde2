"""`mopoe` (Sutter et al. 2021): a mixture over every non-empty subset of the product of that subset's experts.

  q(z | X) = 1/S sum_s q_s(z),   q_s(z) ∝ prod_{m in s} q_m(z | x_m),   S = 2^M - 1 subsets
  ELBO = E_q(z|X)[sum_m log p(x_m | z)]                  (1) every modality, from a draw of the mixture
       - 1/S sum_s KL(q_s || N(0, I))                     (2) analytic
(2) is the paper's stand-in for KL(q(z | X) || p(z)), which has no closed form; by convexity it is an
upper bound of it, so the ELBO stays a lower bound on log p(X). The subsets' products carry no prior
expert, as the paper defines them (the reference code, thomassutter/MoPoE, adds N(0, I) to the product
of all M modalities only; that is not followed). loss.subset_sampling draws (1)'s latents:
  'one'         one subset per example, uniform, from the example's own key (the reference code gives
                each example one subset by its batch position), K = loss.num_samples draws from it
  'stratified'  K draws from every subset, averaged: the same expectation, no subset noise, S times the decodes
The loss is -ELBO averaged over the batch, with (2) weighted by losses.kl_weight; `elbo` is logged at
unit weight. `encode(m, x)` is the expert q_m (the one-modality subset's product);
`joint_posterior(inputs)` is the product of the given modalities' experts, their subset's component.
"""


import jax
import jax.numpy as jnp

from mmvae import losses, zoo
from mmvae.zoo import expert_vae, experts

SUBSET_SAMPLING = ("one", "stratified")  # config.loss.subset_sampling


class MoPoE(expert_vae.ExpertVAE):
  """Experts combined by a mixture of the products of every subset."""

  def joint_posterior(self, inputs: dict):
    """(mu_BxZ, logvar_BxZ) of q_s(z) ∝ prod_{m in s} q_m(z | x_m), s the given modalities (no prior expert)."""
    return experts.product_of_experts(*self.experts(inputs), prior=False)


def subset_masks(names) -> jnp.ndarray:
  """[S, M] bool: every non-empty subset of the modalities, by size, then in the dataset's order."""
  names = tuple(names)
  return jnp.asarray(experts.subset_masks(experts.subsets(names), names))


def noise(example_keys_B, num_modalities: int, loss_cfg, num_samples: int, latent_dim: int) -> dict:
  """Per-example draws: eps ([S or 1]xKxBxZ by loss.subset_sampling) and subset_B (the subset of 'one')."""
  num_subsets = 2**num_modalities - 1
  stratified = loss_cfg.get("subset_sampling", "one") == "stratified"
  eps_keys_B, subset_keys_B = expert_vae.example_streams(example_keys_B, 2)
  eps = expert_vae.normal_draws(eps_keys_B, (num_subsets if stratified else 1, num_samples), latent_dim)
  return {"eps": eps, "subset": jax.vmap(lambda k: jax.random.randint(k, (), 0, num_subsets))(subset_keys_B)}


def objective(model, batch, draws: dict, step, loss_cfg):
  """(total, metrics) of the MoPoE ELBO for given draws (see `noise`); terms (1) and (2)."""
  mus_MxBxZ, logvars_MxBxZ = model.experts(batch)
  mus_SxBxZ, logvars_SxBxZ = experts.subset_products(mus_MxBxZ, logvars_MxBxZ, subset_masks(model.specs),
                                                     prior=False)
  if draws["eps"].shape[0] == 1:  # 'one': each example's own subset
    index_1xBx1 = draws["subset"][None, :, None]
    mus_DxBxZ = jnp.take_along_axis(mus_SxBxZ, index_1xBx1, axis=0)
    logvars_DxBxZ = jnp.take_along_axis(logvars_SxBxZ, index_1xBx1, axis=0)
  else:  # 'stratified': every subset (D = S)
    mus_DxBxZ, logvars_DxBxZ = mus_SxBxZ, logvars_SxBxZ
  z_DxKxBxZ = mus_DxBxZ[:, None] + jnp.exp(0.5 * logvars_DxBxZ)[:, None] * draws["eps"]
  log_sigma = losses.log_sigmas(model, loss_cfg)
  log_lik = expert_vae.log_likelihoods(model, z_DxKxBxZ, batch, log_sigma)
  recon_B = -jnp.mean(sum(log_lik.values()), axis=(0, 1))  # (1)
  kl_B = jnp.mean(losses.gaussian_kl(mus_SxBxZ, logvars_SxBxZ), axis=0)  # (2)
  beta = losses.kl_weight(loss_cfg, step)
  total = jnp.mean(recon_B + beta * kl_B)
  metrics = {"elbo": -jnp.mean(recon_B + kl_B), "recon": jnp.mean(recon_B), "kl_subsets": jnp.mean(kl_B)}
  for name, value in log_lik.items():
    metrics[f"recon_{name}"] = -jnp.mean(value)
  return expert_vae.finish(model, batch, total, metrics, loss_cfg, beta, log_sigma)


def check(loss_cfg) -> None:
  """Raises ValueError when loss.subset_sampling is unknown."""
  if loss_cfg.get("subset_sampling", "one") not in SUBSET_SAMPLING:
    raise ValueError(f"config.loss.subset_sampling={loss_cfg.subset_sampling!r} is unknown; "
                     f"use one of {SUBSET_SAMPLING}")


# loss.subset_sampling: 'one' subset per example (from its key) or 'stratified' (every subset).
zoo.register("mopoe", expert_vae.Kind("mopoe", MoPoE, noise, objective, {"subset_sampling": "one"}, check))
