"""Combining diagonal Gaussian experts: the math of MVAE, MMVAE and MoPoE.

Pure jit-able functions over batches; a Gaussian is (mu_BxZ, logvar_BxZ) and M experts stack on a
leading axis (mus_MxBxZ, logvars_MxBxZ).

  MVAE (Wu & Goodman 2018)      q(z | X) = p(z) prod_m q(z | x_m)          product_of_experts
  MMVAE (Shi et al. 2019)       q(z | X) = sum_m w_m q(z | x_m)            mixture_sample, log_mixture,
                                                                           stratified_samples, iwae_bound,
                                                                           dreg_surrogate, scale_grad
  MoPoE (Sutter et al. 2021)    q(z | X) = 1/|S| sum_{s in S} PoE(s)       subsets, subset_products

NaN-safety: an absent expert (mask False) may hold any values, NaN and inf included; they are
selected away before any arithmetic, so they reach neither the result nor its gradient. An example
with no expert present gets exactly N(0, I), with prior=True and also with prior=False.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

# Expert log-variances are clipped to this range inside product_of_experts (std 4.5e-5 .. 2.2e4).
# Precisions are combined in log space, so nothing overflows for any finite logvar; the clip keeps an
# encoder that emits logvar = -inf (or -1e4) from making the product's logvar -inf and every later
# exp(-logvar) inf. Beyond the clip the gradient is zero, as with MVAE's `var + 1e-8`.
LOGVAR_MIN, LOGVAR_MAX = -20.0, 20.0


def product_of_experts(mus_MxBxZ, logvars_MxBxZ, mask_MxB=None, prior=True):
  """Precision-weighted product of the present experts (times N(0, I) if prior), as (mu_BxZ, logvar_BxZ)."""
  mus_MxBxZ = jnp.asarray(mus_MxBxZ)
  logvars_MxBxZ = jnp.clip(jnp.asarray(logvars_MxBxZ), LOGVAR_MIN, LOGVAR_MAX)
  num_experts, batch = mus_MxBxZ.shape[:2]
  if mask_MxB is None:
    mask_MxB = jnp.ones((num_experts, batch), bool)
  mask_MxB = jnp.asarray(mask_MxB, bool)
  # The N(0, I) expert joins when asked for, and also when no other expert is present, so an example
  # with nothing observed gets exactly the prior (never 0/0 = NaN), even with prior=False.
  prior_B = jnp.logical_or(jnp.asarray(prior, bool), ~jnp.any(mask_MxB, axis=0))
  mask_MxB = jnp.concatenate([mask_MxB, prior_B[None]], axis=0)
  mus_MxBxZ = jnp.concatenate([mus_MxBxZ, jnp.zeros_like(mus_MxBxZ[:1])], axis=0)
  logvars_MxBxZ = jnp.concatenate([logvars_MxBxZ, jnp.zeros_like(logvars_MxBxZ[:1])], axis=0)
  present_MxBx1 = mask_MxB[..., None]
  # log precision of each expert; -inf drops it from the logsumexp and from the softmax weights.
  log_prec_MxBxZ = jnp.where(present_MxBx1, -logvars_MxBxZ, -jnp.inf)
  logvar_BxZ = -jax.nn.logsumexp(log_prec_MxBxZ, axis=0)
  # mu = sum_m T_m mu_m / sum_m T_m, the weights being a softmax of the log precisions.
  weight_MxBxZ = jax.nn.softmax(log_prec_MxBxZ, axis=0)
  mu_BxZ = jnp.sum(weight_MxBxZ * jnp.where(present_MxBx1, mus_MxBxZ, 0.0), axis=0)
  return mu_BxZ, logvar_BxZ


def subsets(modalities: tuple[str, ...], include_empty=False) -> list[tuple[str, ...]]:
  """Every subset of `modalities`, ordered by size and then by the order of `modalities`."""
  modalities = tuple(modalities)
  if len(set(modalities)) != len(modalities):
    raise ValueError(f"modalities must be distinct, got {modalities}")
  first = 0 if include_empty else 1
  return [s for r in range(first, len(modalities) + 1) for s in itertools.combinations(modalities, r)]


def subset_masks(subsets_S, modalities: tuple[str, ...]) -> np.ndarray:
  """[S, M] bool: entry (s, m) says whether modality m belongs to subset s."""
  return np.array([[m in s for m in modalities] for s in subsets_S], bool).reshape(len(subsets_S), len(modalities))


def subset_products(mus_MxBxZ, logvars_MxBxZ, masks_SxM, mask_MxB=None, prior=True):
  """The product of experts of every subset (MoPoE), as (mus_SxBxZ, logvars_SxBxZ)."""
  mus_MxBxZ = jnp.asarray(mus_MxBxZ)
  if mask_MxB is None:
    mask_MxB = jnp.ones(mus_MxBxZ.shape[:2], bool)
  # An expert counts for subset s when it is in s and observed for the example.
  masks_SxMxB = jnp.logical_and(jnp.asarray(masks_SxM, bool)[:, :, None], jnp.asarray(mask_MxB, bool)[None])
  return jax.vmap(lambda m: product_of_experts(mus_MxBxZ, logvars_MxBxZ, m, prior))(masks_SxMxB)


def _log_weights(weights_M, num_components):
  """Normalised log mixture weights (uniform when weights_M is None)."""
  if weights_M is None:
    return jnp.full((num_components,), -math.log(num_components))
  weights_M = jnp.asarray(weights_M, jnp.float32)
  return jnp.log(weights_M) - jnp.log(jnp.sum(weights_M))


def mixture_sample(key, mus_MxBxZ, logvars_MxBxZ, weights_M=None):
  """One reparameterised draw per example from the mixture, as (z_BxZ, component_B)."""
  mus_MxBxZ, logvars_MxBxZ = jnp.asarray(mus_MxBxZ), jnp.asarray(logvars_MxBxZ)
  num_components, batch, latent = mus_MxBxZ.shape
  component_key, noise_key = jax.random.split(key)
  component_B = jax.random.categorical(component_key, _log_weights(weights_M, num_components), shape=(batch,))
  index_1xBx1 = component_B[None, :, None]
  mu_BxZ = jnp.take_along_axis(mus_MxBxZ, index_1xBx1, axis=0)[0]
  logvar_BxZ = jnp.take_along_axis(logvars_MxBxZ, index_1xBx1, axis=0)[0]
  eps_BxZ = jax.random.normal(noise_key, (batch, latent), mus_MxBxZ.dtype)
  return mu_BxZ + jnp.exp(0.5 * logvar_BxZ) * eps_BxZ, component_B


def stratified_samples(keys_B, mus_MxBxZ, logvars_MxBxZ, k: int):
  """k reparameterised draws from each component (MMVAE's stratified sampling), as z_MxKxBxZ.

  Example b's noise comes from keys_B[b] alone, so it does not depend on how the batch is split over
  devices; pass keys reserved for this draw (split or fold_in an example key that feeds other noise).
  """
  mus_MxBxZ, logvars_MxBxZ = jnp.asarray(mus_MxBxZ), jnp.asarray(logvars_MxBxZ)
  num_components, _, latent = mus_MxBxZ.shape
  draw = lambda key: jax.random.normal(key, (num_components, k, latent), mus_MxBxZ.dtype)
  eps_MxKxBxZ = jnp.moveaxis(jax.vmap(draw)(keys_B), 0, 2)
  return mus_MxBxZ[:, None] + jnp.exp(0.5 * logvars_MxBxZ)[:, None] * eps_MxKxBxZ


def log_normal(z_xZ, mu_xZ, logvar_xZ):
  """log N(z; mu, diag(exp(logvar))) summed over the last (latent) axis; broadcasts the rest."""
  return -0.5 * jnp.sum(math.log(2 * math.pi) + logvar_xZ + (z_xZ - mu_xZ)**2 * jnp.exp(-logvar_xZ), axis=-1)


def log_mixture(z_xBxZ, mus_MxBxZ, logvars_MxBxZ, weights_M=None):
  """log sum_m w_m N(z; mu_m, var_m) per example; z may carry leading sample axes ([..., B, Z] -> [..., B])."""
  z_xMxBxZ = jnp.expand_dims(z_xBxZ, -3)
  log_w_M1 = _log_weights(weights_M, mus_MxBxZ.shape[0])[:, None]
  return jax.nn.logsumexp(log_normal(z_xMxBxZ, mus_MxBxZ, logvars_MxBxZ) + log_w_M1, axis=-2)


def iwae_bound(log_w_KxB):
  """The importance-weighted bound log (1/K) sum_k w_k per example ([B]); the value to report."""
  return jax.nn.logsumexp(log_w_KxB, axis=0) - math.log(log_w_KxB.shape[0])


def dreg_surrogate(log_w_KxB):
  """sum_k stop_gradient(w_tilde_k^2) log w_k per example ([B]): the DReG inference-network surrogate.

  Tucker et al. (2019). Its gradient along the sample path z_k(phi) is DReG's estimate of the IWAE
  gradient w.r.t. the encoder phi, provided log w_k = log p(x, z_k) - log q(z_k | x) is computed with
  the parameters of q under stop_gradient (only z_k carries the gradient). Its VALUE is not the bound:
  log iwae_bound(log_w) for reporting. Through the decoder theta it weights by w_tilde^2, whereas the
  IWAE gradient weights by w_tilde: for a correct theta gradient either add iwae_bound of log w computed
  from stop_gradient(z) and take theta's gradient only from there, or use scale_grad (MMVAE's hook):

    w_tilde_KxB = jax.nn.softmax(jax.lax.stop_gradient(log_w_fn(z_KxBxZ)), axis=0)
    log_w_KxB = log_w_fn(scale_grad(z_KxBxZ, w_tilde_KxB[..., None]))
    surrogate_B = jnp.sum(w_tilde_KxB * log_w_KxB, axis=0)   # theta: w_tilde, z path: w_tilde^2
  """
  w_tilde_KxB = jax.nn.softmax(jax.lax.stop_gradient(log_w_KxB), axis=0)
  return jnp.sum(w_tilde_KxB**2 * log_w_KxB, axis=0)


@jax.custom_vjp
def scale_grad(x, scale):
  """x unchanged; its cotangent is multiplied by `scale` (broadcast to x), which gets none: MMVAE's DReG hook."""
  return x


def _scale_grad_fwd(x, scale):
  return x, scale


def _scale_grad_bwd(scale, g):
  return g * scale, jnp.zeros_like(scale)


scale_grad.defvjp(_scale_grad_fwd, _scale_grad_bwd)
