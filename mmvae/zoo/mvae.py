"""`mvae` (Wu & Goodman 2018): a product of Gaussian experts with the prior expert, trained by the sub-sampled ELBO.

The posterior of any subset s of the modalities is the product of the prior and the subset's experts,
  q(z | X_s) ∝ p(z) prod_{m in s} q_m(z | x_m),    p(z) = N(0, I),
and each ELBO term reconstructs the modalities it conditions on:
  ELBO(X_s) = E_q(z|X_s)[sum_{m in s} log p(x_m | z)]            (1) K = loss.num_samples draws
            - KL(q(z | X_s) || N(0, I))                           (2) analytic
  L = ELBO(X) + sum_m ELBO(x_m) + sum_{j=1..k} ELBO(X_{s_j})      (3) the sub-sampled objective
with k = loss.subsampled_elbos subsets s_j drawn per example from its own key, uniformly among the
subsets that are neither one modality nor all of them (with two modalities there are none: the first
two parts already cover every subset, and k is ignored). The loss is -L, each term a mean over the
batch, with the KL weighted by losses.kl_weight; the logged `elbo` is ELBO(X) (unit KL weight), the
bound on log p(X) in nats per example. One decoder per modality (expert_vae.Decoders).
`encode(m, x)` is q(z | x_m) = PoE(p(z), q_m): the unimodal posterior the model is trained with.
"""


import jax
import jax.numpy as jnp
import numpy as np

from mmvae import losses, zoo
from mmvae.zoo import expert_vae, experts


class MVAE(expert_vae.ExpertVAE):
  """Experts combined by a product with the N(0, I) prior expert."""

  def encode(self, modality: str, x):
    """(mu_BxZ, logvar_BxZ) of q(z | x_m) ∝ p(z) q_m(z | x_m)."""
    mu_BxZ, logvar_BxZ = self.encoders[modality](x)
    return experts.product_of_experts(mu_BxZ[None], logvar_BxZ[None], prior=True)

  def joint_posterior(self, inputs: dict):
    """(mu_BxZ, logvar_BxZ) of q(z | X_s) ∝ p(z) prod_{m in s} q_m(z | x_m) for the given modalities s."""
    return experts.product_of_experts(*self.experts(inputs), prior=True)


def terms(names) -> tuple[np.ndarray, np.ndarray]:
  """(fixed_TxM, extra_ExM) subset masks: the fixed terms (all, then each modality) and the sub-sampling pool."""
  names = tuple(names)
  fixed = experts.subset_masks([names] + [(m,) for m in names], names)
  extra = experts.subset_masks([s for s in experts.subsets(names) if 1 < len(s) < len(names)], names)
  return fixed, extra


def noise(example_keys_B, num_modalities: int, loss_cfg, num_samples: int, latent_dim: int) -> dict:
  """Per-example draws: eps_TxKxBxZ for every term, and subset_JxB (indices into the pool) for the sub-sampled ones."""
  names = tuple(range(num_modalities))
  fixed, extra = terms(names)
  k = int(loss_cfg.get("subsampled_elbos", 0)) if len(extra) else 0
  eps_keys_B, subset_keys_B = expert_vae.example_streams(example_keys_B, 2)
  out = {"eps": expert_vae.normal_draws(eps_keys_B, (len(fixed) + k, num_samples), latent_dim)}
  pick = lambda key: jax.random.randint(key, (k,), 0, max(len(extra), 1))
  out["subset"] = jnp.moveaxis(jax.vmap(pick)(subset_keys_B), 0, 1)
  return out


def objective(model, batch, draws: dict, step, loss_cfg):
  """(total, metrics) of the sub-sampled ELBO for given draws (see `noise`); terms (1)-(3)."""
  names = list(model.specs)
  fixed_TxM, extra_ExM = terms(names)
  subset_JxB = draws["subset"]
  batch_size = subset_JxB.shape[1]
  masks_TxMxB = jnp.broadcast_to(jnp.asarray(fixed_TxM)[:, :, None], fixed_TxM.shape + (batch_size,))
  if subset_JxB.shape[0]:
    picked_JxMxB = jnp.moveaxis(jnp.asarray(extra_ExM)[subset_JxB], -1, 1)
    masks_TxMxB = jnp.concatenate([masks_TxMxB, picked_JxMxB], axis=0)
  mus_MxBxZ, logvars_MxBxZ = model.experts(batch)
  mus_TxBxZ, logvars_TxBxZ = jax.vmap(lambda mask: experts.product_of_experts(mus_MxBxZ, logvars_MxBxZ, mask))(
      masks_TxMxB)
  z_TxKxBxZ = mus_TxBxZ[:, None] + jnp.exp(0.5 * logvars_TxBxZ)[:, None] * draws["eps"]
  log_sigma = losses.log_sigmas(model, loss_cfg)
  num_fixed = len(fixed_TxM)
  recon_TxB = jnp.zeros(masks_TxMxB.shape[::2])
  for i, name in enumerate(names):
    # Only the terms that may hold modality i: the joint one, its own, and the sub-sampled ones.
    rows = np.array([0, 1 + i] + list(range(num_fixed, len(masks_TxMxB))))
    log_p_RxKxB = expert_vae.log_likelihoods(model, z_TxKxBxZ[rows], batch, log_sigma, [name])[name]
    recon_RxB = -jnp.mean(log_p_RxKxB, axis=1) * masks_TxMxB[rows, i]  # (1)
    recon_TxB = recon_TxB.at[rows].add(recon_RxB)
  kl_TxB = losses.gaussian_kl(mus_TxBxZ, logvars_TxBxZ)  # (2)
  beta = losses.kl_weight(loss_cfg, step)
  recon_T, kl_T = jnp.mean(recon_TxB, axis=1), jnp.mean(kl_TxB, axis=1)
  total = jnp.sum(recon_T + beta * kl_T)  # (3)
  metrics = {"elbo": -(recon_T[0] + kl_T[0]), "recon_joint": recon_T[0], "kl_joint": kl_T[0]}
  for i, name in enumerate(names):
    metrics[f"elbo_{name}"] = -(recon_T[1 + i] + kl_T[1 + i])
  if len(masks_TxMxB) > num_fixed:
    metrics["elbo_subsampled"] = -jnp.mean(recon_T[num_fixed:] + kl_T[num_fixed:])
  return expert_vae.finish(model, batch, total, metrics, loss_cfg, beta, log_sigma)


def check(loss_cfg) -> None:
  """Raises ValueError when loss.subsampled_elbos is unusable."""
  if int(loss_cfg.get("subsampled_elbos", 0)) < 0:
    raise ValueError(f"config.loss.subsampled_elbos={loss_cfg.subsampled_elbos} must be >= 0")


# loss.subsampled_elbos: ELBO terms of k random subsets beyond the joint and unimodal ones.
zoo.register("mvae", expert_vae.Kind("mvae", MVAE, noise, objective, {"subsampled_elbos": 0}, check))
