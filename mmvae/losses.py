"""The MS-VAE objective: per-encoder ELBOs (self and cross reconstruction, KL to N(0, I)) plus alignment terms.

For each modality m of a pair (x_audio, x_face), with z_m ~ q_m(z | x_m), the shared decoder gives
one ELBO on log p(x_audio, x_face) per encoder:
  ELBO_m = E_q_m[log p(x_m | z_m)]          (1) self reconstruction
         + E_q_m[log p(x_n | z_m)]          (2) cross reconstruction, n the other modality
         - KL(q_m(z | x_m) || N(0, I))      (3)
with p(x_n | z) = N(dec_n(z), sigma_n^2 I): a Gaussian with a per-modality scale sigma_n (fixed by
config, or learned), so -log p is a negative log-likelihood in nats and the loss with unit weights
is -(ELBO_audio + ELBO_face). The logged `elbo` is the mean of the two bounds per example.
`loss.likelihood='sse'` keeps the seed report's summed squared error (twice the unit-variance NLL
up to a constant) to reproduce it.
Alignment of the two posteriors of a pair, each with its own weight and combinable:
  (4) a Wasserstein term: exact W2^2 between the Gaussians, L2 between samples, or sliced W2,
  (5) symmetric InfoNCE between the posterior means of the global batch (CLIP/VATT),
  (6) the M-CVS triplet loss (within each modality and across, batch-hard, global batch),
  (7) identity cross-entropy of a linear head on both posterior means.
Every term is a mean over the batch; batch-level terms (sliced, InfoNCE, triplet) see the whole
global batch so 1 and 4 devices give the same loss.
"""

import itertools

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mmvae import modalities
from mmvae.likelihoods import gaussian_nll, reconstruction  # noqa: F401  (the loss terms' likelihoods)

WASSERSTEIN_VARIANTS = ("w2_gaussian", "sample_l2", "sliced")
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
  """Raises ValueError naming the key to change when the loss section is unusable."""
  if loss_cfg.wasserstein not in WASSERSTEIN_VARIANTS:
    raise ValueError(f"config.loss.wasserstein={loss_cfg.wasserstein!r} is unknown; use one of {WASSERSTEIN_VARIANTS}")
  for name in ("self_recon_weight", "cross_recon_weight", "kl_weight", "wasserstein_weight", "kl_anneal_steps"):
    if loss_cfg[name] < 0:
      raise ValueError(f"config.loss.{name}={loss_cfg[name]} must be >= 0")
  if loss_cfg.sliced_projections < 1:
    raise ValueError(f"config.loss.sliced_projections={loss_cfg.sliced_projections} must be >= 1")
  if loss_cfg.likelihood not in LIKELIHOODS:
    raise ValueError(f"config.loss.likelihood={loss_cfg.likelihood!r} is unknown; use one of {LIKELIHOODS}")
  if loss_cfg.infonce_positives not in POSITIVES:
    raise ValueError(f"config.loss.infonce_positives={loss_cfg.infonce_positives!r} is unknown; use one of {POSITIVES}")
  for name in ("infonce_weight", "triplet_weight", "identity_weight"):
    if loss_cfg[name] < 0:
      raise ValueError(f"config.loss.{name}={loss_cfg[name]} must be >= 0")
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


def _alignment(post, z, labels_B, step_key, loss_cfg, axis_name) -> dict:
  """(4)-(6): the alignment terms that have a weight, each a mean over every modality pair (one pair: that pair)."""
  names = list(post)
  pairs = list(itertools.combinations(names, 2))
  out = {}
  if loss_cfg.wasserstein_weight > 0 or loss_cfg.wasserstein == "w2_gaussian":
    def distance(a, v):
      if loss_cfg.wasserstein == "w2_gaussian":  # (4)
        return jnp.mean(w2_gaussian(*post[a], *post[v]))
      if loss_cfg.wasserstein == "sample_l2":
        return jnp.mean(sample_l2(z[a], z[v]))
      # A batch-level distance: on the whole global batch so it is the same on any device count.
      return sliced_w2(gather(z[a], axis_name), gather(z[v], axis_name), step_key, loss_cfg.sliced_projections)
    out["wasserstein"] = _mean([distance(a, v) for a, v in pairs])
  if loss_cfg.infonce_weight > 0 or loss_cfg.triplet_weight > 0:
    mu = {m: gather(post[m][0], axis_name) for m in names}
    labels = gather(labels_B, axis_name)
    if loss_cfg.infonce_weight > 0:  # (5)
      pos_labels = labels if loss_cfg.infonce_positives == "identity" else None
      out["infonce"] = _mean([info_nce(mu[a], mu[v], loss_cfg.temperature, pos_labels) for a, v in pairs])
    if loss_cfg.triplet_weight > 0:  # (6)
      m_first, m_other, m_x = loss_cfg.triplet_margins
      within = sum(triplet(mu[m], mu[m], labels, m_first if i == 0 else m_other, True) for i, m in enumerate(names))
      across = _mean([0.5 * (triplet(mu[a], mu[v], labels, m_x, False) + triplet(mu[v], mu[a], labels, m_x, False))
                      for a, v in pairs])
      out["triplet"] = within + across
  return out


def _mean(values: list):
  """The mean of a list of terms; a single term is returned as it is (bitwise)."""
  return values[0] if len(values) == 1 else sum(values) / len(values)


def identity_ce(model, mus_BxZ: list, labels_B):
  """(7) Identity cross-entropy of the model's identity head, averaged over the given posterior means."""
  ce = sum(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.identity_logits(mu_BxZ), labels_B))
           for mu_BxZ in mus_BxZ)
  return (1.0 / len(mus_BxZ)) * ce  # as a product: bitwise the 0.5 * ce the two-modality loss always used


def decode_each(model, z: dict) -> dict:
  """{m: model.decode(z[m])} for each modality's latent, decoded in one call on their concatenation.

  One shared decoder serves every latent, so one call reads its weights once per step instead of once
  per modality and its matmuls are taller (per row the same function of z).
  """
  names = list(z)
  size = z[names[0]].shape[0]
  out = model.decode(jnp.concatenate([z[m] for m in names]))
  return {m: {n: v[i * size:(i + 1) * size] for n, v in out.items()} for i, m in enumerate(names)}


def msvae_loss(model, batch, example_keys_B, step_key, step, loss_cfg, axis_name=None):
  """The MS-VAE loss of a batch: (total, {term: value}); keys give each example its own noise."""
  specs = model.specs
  names = list(specs)
  needs = [name for name, on in (("identity_weight", loss_cfg.identity_weight > 0),
                                 ("triplet_weight", loss_cfg.triplet_weight > 0),
                                 ("infonce_positives='identity'",
                                  loss_cfg.infonce_weight > 0 and loss_cfg.infonce_positives == "identity")) if on]
  if needs and "label" not in batch:
    raise ValueError(f"config.loss {', '.join(needs)} needs identity labels, but the batch has no 'label'")
  post, frames = encode_batch(model, batch, loss_cfg)
  # Noise per example and modality from its own key, so it does not depend on the device layout.
  eps_keys = jax.vmap(lambda k: jax.random.split(k, len(names)))(example_keys_B)
  z = {}
  for i, m in enumerate(names):
    mu_BxZ, logvar_BxZ = post[m]
    eps_BxZ = jax.vmap(lambda k: jax.random.normal(k, mu_BxZ.shape[1:]))(eps_keys[:, i])
    z[m] = mu_BxZ + jnp.exp(0.5 * logvar_BxZ) * eps_BxZ

  log_sigma = log_sigmas(model, loss_cfg)
  terms, nll = {}, {}
  decoded = decode_each(model, z)
  for m in names:
    out = decoded[m]
    for n in names:
      kind = specs[n].kind_module
      nll[(n, m)] = kind.nll(out[n], batch[n], log_sigma.get(n))  # (1) n == m, (2) n != m
      # The optimised reconstruction term: the NLL, or the seed recipe's summed squared error.
      sse = loss_cfg.likelihood == "sse" and n in log_sigma
      terms[f"recon_{n}_from_{m}"] = reconstruction(out[n], batch[n]) if sse else nll[(n, m)]
    terms[f"kl_{m}"] = gaussian_kl(*post[m])  # (3)
  per_encoder = 1.0 / len(names)  # the logged bound is the mean of the encoders' ELBOs
  elbo_B = (-per_encoder * sum(nll[(n, m)] for n in names for m in names)
            - per_encoder * sum(terms[f"kl_{m}"] for m in names))

  metrics = {name: jnp.mean(value) for name, value in terms.items()}
  metrics.update(_alignment(post, z, batch["label"] if "label" in batch else None, step_key, loss_cfg, axis_name))
  beta = kl_weight(loss_cfg, step)
  total = (loss_cfg.self_recon_weight * sum(metrics[f"recon_{m}_from_{m}"] for m in names)
           + loss_cfg.cross_recon_weight * sum(metrics[f"recon_{n}_from_{m}"] for m in names for n in names if n != m)
           + beta * sum(metrics[f"kl_{m}"] for m in names))
  for name, weight in (("wasserstein", loss_cfg.wasserstein_weight), ("infonce", loss_cfg.infonce_weight),
                       ("triplet", loss_cfg.triplet_weight)):
    if name in metrics:
      total = total + weight * metrics[name]
  if loss_cfg.identity_weight > 0:  # (7)
    metrics["identity_ce"] = identity_ce(model, [post[m][0] for m in names], batch["label"])
    total = total + loss_cfg.identity_weight * metrics["identity_ce"]
  sync = sync_term(frames, loss_cfg)
  if sync is not None:  # frame-level synchronisation of sequence modalities (temporal encoders)
    metrics["sync"] = sync
    total = total + loss_cfg.sync_weight * sync
  metrics["loss"] = total
  metrics["elbo"] = jnp.mean(elbo_B)
  metrics["kl_scale"] = beta
  for m, value in log_sigma.items():
    metrics[f"sigma_{m}"] = jnp.exp(value)
  return total, metrics
