"""Loss terms the model kinds share: Gaussian KL and Wasserstein distances, InfoNCE, triplet, sync, identity CE.

Each kind's objective (mmvae/zoo/<kind>.py) assembles these. Per-example terms return [B]; batch-level
terms (sliced W2, InfoNCE, triplet) take the global batch, gathered with `gather` under pmap, so 1 and 4
devices give the same loss.
"""

import itertools

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mmvae import modalities
from mmvae.likelihoods import gaussian_nll, reconstruction  # noqa: F401  (the loss terms' likelihoods)

LIKELIHOODS = ("gaussian", "sse")
POSITIVES = ("pair", "identity")


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


def _unit(x_BxZ):
  # rsqrt of the clamped squared norm, not norm(): its gradient at a zero vector (a padded window) is 0, not NaN.
  return x_BxZ * lax.rsqrt(jnp.maximum(jnp.sum(x_BxZ * x_BxZ, axis=-1, keepdims=True), 1e-24))


def info_nce(u_BxZ, v_BxZ, temperature, labels_B=None):
  """Symmetric InfoNCE on cosine similarity / temperature: mean of the u->v and v->u cross-entropies.

  Positives of row i: its own pair (labels None), or every item with the same label (then the
  log-probability of the positive set, so same-identity items in the batch are not pushed apart).
  """
  logits_BxB = _unit(u_BxZ) @ _unit(v_BxZ).T / temperature
  if labels_B is None:
    pos_BxB = jnp.eye(u_BxZ.shape[0], dtype=bool)
  else:
    pos_BxB = labels_B[:, None] == labels_B[None, :]

  def one_way(l_BxB, p_BxB):
    log_all_B = jax.nn.logsumexp(l_BxB, axis=1)
    log_pos_B = jax.nn.logsumexp(jnp.where(p_BxB, l_BxB, -jnp.inf), axis=1)
    return jnp.mean(log_all_B - log_pos_B)

  return 0.5 * (one_way(logits_BxB, pos_BxB) + one_way(logits_BxB.T, pos_BxB.T))


def triplet(anchor_BxZ, other_BxZ, labels_B, margin, same_set: bool):
  """Batch-hard triplet loss on unit vectors: max(0, margin + d(a, hardest p) - d(a, hardest n)), mean over anchors.

  d is the squared Euclidean distance of the l2-normalised vectors (2 - 2 cos). same_set: the
  other set is the anchors' own modality, so an anchor is not its own positive. Anchors without a
  positive or a negative in the batch do not count.
  """
  a, o = _unit(anchor_BxZ), _unit(other_BxZ)
  d_BxB = jnp.maximum(2.0 - 2.0 * a @ o.T, 0.0)
  same_BxB = labels_B[:, None] == labels_B[None, :]
  pos_BxB = same_BxB & ~jnp.eye(len(labels_B), dtype=bool) if same_set else same_BxB
  neg_BxB = ~same_BxB
  hardest_pos_B = jnp.max(jnp.where(pos_BxB, d_BxB, -jnp.inf), axis=1)
  hardest_neg_B = jnp.min(jnp.where(neg_BxB, d_BxB, jnp.inf), axis=1)
  valid_B = pos_BxB.any(axis=1) & neg_BxB.any(axis=1)
  hinge_B = jnp.where(valid_B, jnp.maximum(0.0, margin + hardest_pos_B - hardest_neg_B), 0.0)
  return jnp.sum(hinge_B) / jnp.maximum(jnp.sum(valid_B), 1)


def sync_nce(u_BxTxZ, v_BxTxZ, valid_BxT, temperature):
  """Within-clip synchronisation InfoNCE: step t of u against every real step of v in the same clip, and back.

  A per-example term: each clip's mean over its real steps of the symmetric cross-entropy whose
  positive is the same step t (the other steps of the clip are the negatives), then the mean over clips
  with a real step. Depends on no other row, so any device count gives the same value.
  """
  logits_BxTxT = jnp.einsum("btz,bsz->bts", _unit(u_BxTxZ), _unit(v_BxTxZ)) / temperature
  keys_BxTxT = (valid_BxT[:, None, :] > 0) & (valid_BxT[:, :, None] > 0)
  logits_BxTxT = jnp.where(keys_BxTxT, logits_BxTxT, -1e9)
  diag_BxT = jnp.diagonal(logits_BxTxT, axis1=1, axis2=2)
  ce_BxT = 0.5 * (jax.nn.logsumexp(logits_BxTxT, axis=2) + jax.nn.logsumexp(logits_BxTxT, axis=1)) - diag_BxT
  count_B = jnp.sum(valid_BxT, axis=1)
  per_clip_B = jnp.sum(ce_BxT * valid_BxT, axis=1) / jnp.maximum(count_B, 1.0)
  has_B = (count_B > 0).astype(jnp.float32)
  return jnp.sum(per_clip_B * has_B) / jnp.maximum(jnp.sum(has_B), 1.0)


def encode_batch(model, batch, loss_cfg) -> tuple[dict, dict]:
  """({m: (mu, logvar)} of every modality, {m: frame embeddings} of those sync_term needs), each encoder run once.

  Frames are computed only when loss.sync_weight > 0, for the model's frame-level modalities
  (model.encode_with_frames: the clip posterior and the frames from one pass of the temporal encoder).
  """
  framed = model.frame_modalities() if float(loss_cfg.get("sync_weight", 0.0)) > 0 else ()
  post, frames = {}, {}
  for m in model.specs:
    if m in framed:
      post[m], frames[m] = model.encode_with_frames(m, batch[m])
    else:
      post[m] = model.encode(m, batch[m])
  return post, frames


def sync_term(frames: dict, loss_cfg):
  """The mean of sync_nce over every pair of frame-level modalities and their common windows (the caller weighs
  it by loss.sync_weight); None with fewer than two such modalities. frames: encode_batch's."""
  names = list(frames)
  if len(names) < 2:
    return None
  values = [sync_nce(frames[m][w][0], frames[n][w][0], frames[m][w][1] * frames[n][w][1],
                     float(loss_cfg.get("sync_temperature", loss_cfg.temperature)))
            for m, n in itertools.combinations(names, 2) for w in frames[m] if w in frames[n]]
  return sum(values) / len(values)


def kl_weight(loss_cfg, step):
  """The annealed KL weight: a linear ramp from 0 to kl_weight over kl_anneal_steps (0 = off)."""
  if loss_cfg.kl_anneal_steps <= 0:
    return jnp.asarray(loss_cfg.kl_weight, jnp.float32)
  ramp = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / loss_cfg.kl_anneal_steps)
  return loss_cfg.kl_weight * ramp


def check_loss_config(loss_cfg) -> None:
  """Raises ValueError naming the key to change among the loss keys kinds share (each kind checks its own)."""
  for name in ("kl_weight", "kl_anneal_steps", "triplet_weight", "identity_weight"):
    if loss_cfg[name] < 0:
      raise ValueError(f"config.loss.{name}={loss_cfg[name]} must be >= 0")
  if loss_cfg.likelihood not in LIKELIHOODS:
    raise ValueError(f"config.loss.likelihood={loss_cfg.likelihood!r} is unknown; use one of {LIKELIHOODS}")
  if loss_cfg.infonce_positives not in POSITIVES:
    raise ValueError(f"config.loss.infonce_positives={loss_cfg.infonce_positives!r} is unknown; use one of {POSITIVES}")
  if not loss_cfg.temperature > 0:
    raise ValueError(f"config.loss.temperature={loss_cfg.temperature} must be > 0")
  if not loss_cfg.min_sigma > 0 or any(not v > 0 for v in loss_cfg.sigma.values()):
    raise ValueError(f"config.loss.sigma ({dict(loss_cfg.sigma)}) and min_sigma={loss_cfg.min_sigma} must be > 0")
  if len(loss_cfg.triplet_margins) != 3:
    raise ValueError(f"config.loss.triplet_margins={loss_cfg.triplet_margins} needs 3 margins: within the first "
                     "modality, within each other modality, across modalities")


def gather(x, axis_name):
  """The whole global batch's rows when running under pmap (a no-op under jit, where x is global)."""
  return x if axis_name is None else lax.all_gather(x, axis_name, tiled=True)


def log_sigmas(model, loss_cfg) -> dict:
  """log sigma of each Gaussian modality's likelihood: the config's value, times the model's learned factor."""
  out = {}
  for name, m in model.specs.items():
    initial = modalities.sigma(loss_cfg, m)
    if initial is None:  # e.g. tokens: a categorical likelihood
      continue
    log_s = jnp.log(jnp.float32(initial))
    if loss_cfg.learn_sigma:
      log_s = log_s + model.decoder.log_sigma_offset[name][...]
    out[name] = jnp.maximum(log_s, jnp.log(jnp.float32(loss_cfg.min_sigma)))
  return out


def identity_ce(model, mus_BxZ: list, labels_B):
  """(7) Identity cross-entropy of the model's identity head, averaged over the given posterior means."""
  ce = sum(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.identity_logits(mu_BxZ), labels_B))
           for mu_BxZ in mus_BxZ)
  return (1.0 / len(mus_BxZ)) * ce  # as a product: bitwise the 0.5 * ce the two-modality loss always used
