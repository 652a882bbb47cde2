"""The MS-VAE objective: self and cross reconstruction, KL to N(0, I) and a Wasserstein alignment term.

For each modality m of a pair (x_audio, x_face), with z_m ~ q_m(z | x_m):
  (1) self reconstruction   ||dec_m(z_m) - x_m||^2
  (2) cross reconstruction  ||dec_n(z_m) - x_n||^2 for the other modality n
  (3) KL(q_m || N(0, I))
and once per pair
  (4) a Wasserstein alignment between q_audio and q_face.
Reconstructions are summed squared errors per example (a unit-variance Gaussian likelihood up to
constants), so their scale matches the summed KL; every term is a mean over the batch.
"""

import jax
import jax.numpy as jnp
from jax import lax

from mmvae import modalities

WASSERSTEIN_VARIANTS = ("w2_gaussian", "sample_l2", "sliced")


def gaussian_kl(mu_BxZ, logvar_BxZ):
  """KL(N(mu, diag(exp(logvar))) || N(0, I)) per example."""
  return 0.5 * jnp.sum(jnp.exp(logvar_BxZ) + mu_BxZ**2 - 1.0 - logvar_BxZ, axis=-1)


def w2_gaussian(mu_a_BxZ, logvar_a_BxZ, mu_v_BxZ, logvar_v_BxZ):
  """Exact squared 2-Wasserstein distance between diagonal Gaussians, per example."""
  sigma_a_BxZ = jnp.exp(0.5 * logvar_a_BxZ)
  sigma_v_BxZ = jnp.exp(0.5 * logvar_v_BxZ)
  return jnp.sum((mu_a_BxZ - mu_v_BxZ)**2, axis=-1) + jnp.sum((sigma_a_BxZ - sigma_v_BxZ)**2, axis=-1)


def sample_l2(z_a_BxZ, z_v_BxZ):
  """Squared L2 distance between reparameterised samples (the public MS-VAE code's variant), per example."""
  return jnp.sum((z_a_BxZ - z_v_BxZ)**2, axis=-1)


def sliced_w2(z_a_NxZ, z_v_NxZ, key, num_projections: int):
  """Sliced squared W2 between two equal-size point sets, times Z so a translation by s costs ~||s||^2."""
  dim = z_a_NxZ.shape[-1]
  theta_PxZ = jax.random.normal(key, (num_projections, dim))
  theta_PxZ = theta_PxZ / jnp.linalg.norm(theta_PxZ, axis=-1, keepdims=True)
  # In 1-D the optimal coupling pairs sorted samples (quantile coupling).
  proj_a_PxN = jnp.sort(theta_PxZ @ z_a_NxZ.T, axis=-1)
  proj_v_PxN = jnp.sort(theta_PxZ @ z_v_NxZ.T, axis=-1)
  # A random unit direction carries 1/Z of a vector's squared norm on average.
  return dim * jnp.mean((proj_a_PxN - proj_v_PxN)**2)


def reconstruction(pred, target):
  """Summed squared error per example."""
  diff = (pred - target).reshape(pred.shape[0], -1)
  return jnp.sum(diff**2, axis=-1)


def kl_weight(loss_cfg, step):
  """The annealed KL weight: a linear ramp from 0 to kl_weight over kl_anneal_steps (0 = off)."""
  if loss_cfg.kl_anneal_steps <= 0:
    return jnp.asarray(loss_cfg.kl_weight, jnp.float32)
  ramp = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / loss_cfg.kl_anneal_steps)
  return loss_cfg.kl_weight * ramp


def check_loss_config(loss_cfg) -> None:
  """Raises ValueError naming the key to change when the loss section is unusable."""
  if loss_cfg.wasserstein not in WASSERSTEIN_VARIANTS:
    raise ValueError(f"config.loss.wasserstein={loss_cfg.wasserstein!r} is unknown; use one of {WASSERSTEIN_VARIANTS}")
  for name in ("self_recon_weight", "cross_recon_weight", "kl_weight", "wasserstein_weight", "kl_anneal_steps"):
    if loss_cfg[name] < 0:
      raise ValueError(f"config.loss.{name}={loss_cfg[name]} must be >= 0")
  if loss_cfg.sliced_projections < 1:
    raise ValueError(f"config.loss.sliced_projections={loss_cfg.sliced_projections} must be >= 1")


def _gather(x, axis_name):
  """The whole global batch's rows when running under pmap (a no-op under jit, where x is global)."""
  return x if axis_name is None else lax.all_gather(x, axis_name, tiled=True)


def msvae_loss(model, batch, example_keys_B, step_key, step, loss_cfg, axis_name=None):
  """The MS-VAE loss of a batch: (total, {term: value}); keys give each example its own noise."""
  a, v = modalities.AUDIO, modalities.FACE
  post = {m: model.encode(m, batch[m]) for m in (a, v)}
  # Noise per example and modality from its own key, so it does not depend on the device layout.
  eps_keys = jax.vmap(lambda k: jax.random.split(k, 2))(example_keys_B)
  z = {}
  for i, m in enumerate((a, v)):
    mu_BxZ, logvar_BxZ = post[m]
    eps_BxZ = jax.vmap(lambda k: jax.random.normal(k, mu_BxZ.shape[1:]))(eps_keys[:, i])
    z[m] = mu_BxZ + jnp.exp(0.5 * logvar_BxZ) * eps_BxZ

  terms = {}
  for m in (a, v):
    out = model.decode(z[m])
    for n in (a, v):
      terms[f"recon_{n}_from_{m}"] = reconstruction(out[n], batch[n])  # (1) n == m, (2) n != m
    terms[f"kl_{m}"] = gaussian_kl(*post[m])  # (3)

  if loss_cfg.wasserstein == "w2_gaussian":  # (4)
    wass = jnp.mean(w2_gaussian(*post[a], *post[v]))
  elif loss_cfg.wasserstein == "sample_l2":
    wass = jnp.mean(sample_l2(z[a], z[v]))
  elif loss_cfg.wasserstein == "sliced":
    # A batch-level distance: computed on the whole global batch so it is the same on any device count.
    wass = sliced_w2(_gather(z[a], axis_name), _gather(z[v], axis_name), step_key, loss_cfg.sliced_projections)
  else:
    raise ValueError(f"config.loss.wasserstein={loss_cfg.wasserstein!r} is unknown; use one of {WASSERSTEIN_VARIANTS}")

  metrics = {name: jnp.mean(value) for name, value in terms.items()}
  metrics["wasserstein"] = wass
  beta = kl_weight(loss_cfg, step)
  total = (loss_cfg.self_recon_weight * (metrics[f"recon_{a}_from_{a}"] + metrics[f"recon_{v}_from_{v}"])
           + loss_cfg.cross_recon_weight * (metrics[f"recon_{v}_from_{a}"] + metrics[f"recon_{a}_from_{v}"])
           + beta * (metrics[f"kl_{a}"] + metrics[f"kl_{v}"])
           + loss_cfg.wasserstein_weight * wass)
  metrics["loss"] = total
  metrics["kl_scale"] = beta
  return total, metrics
