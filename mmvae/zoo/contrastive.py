"""`contrastive`: per-modality encoders only, trained by a CLIP/VATT-style symmetric InfoNCE over every modality pair.

For every pair (m, n) of modalities, with u_m the posterior mean of the m encoder on the global batch:
  L = mean over pairs of InfoNCE(u_m, u_n)        (1) symmetric, cosine / loss.temperature
    + loss.identity_weight * identity CE           (2) optional, a linear head on every u_m
  + loss.sync_weight * within-clip sync InfoNCE    (3) sequence modalities with temporal encoders:
                                                     losses.sync_term over their frame windows
Positives (loss.infonce_positives): a row's own pair, or every row of its identity. InfoNCE is the
whole objective here, so loss.infonce_weight does not apply.
With config.model.frozen_target set (a `vector` or `sequence` modality of precomputed embeddings, e.g.
CLIP's), that modality's encoder is the identity (no parameters, no gradient) and (1) is replaced by
  (4) mean over the other modalities m of InfoNCE(u_m, target) (loss.adapter 'contrastive') or of
      |u_m - target|^2 ('regression'): each m trains an adapter into the pretrained space. There is no decoder: runs of this kind
are analysed by retrieval, t-SNE and DBSCAN only.
"""

import itertools
import sys

import jax.numpy as jnp
from flax import nnx

from mmvae import losses, models, modalities, zoo


ADAPTERS = ("contrastive", "regression")


def default_config() -> dict:
  """The config keys only this kind reads, at their defaults (mmvae.config_schema merges them into every config)."""
  # With model.frozen_target: 'contrastive' (InfoNCE) or 'regression' (squared error) into the frozen space.
  return {"loss": {"adapter": "contrastive"}}


class Contrastive(models.Multimodal):
  """One encoder per modality (an nnx.Dict) and an optional identity head; no decoder."""

  can_generate = False

  def __init__(self, specs: dict, encoders: dict, identity_head=None, frozen_target: str = ""):
    super().__init__(specs)
    self.frozen_target = frozen_target  # a modality whose precomputed embeddings define the space (no parameters)
    self.encoders = nnx.Dict(encoders)
    self.identity_head = identity_head

  def identity_logits(self, mu_BxZ):
    """Identity logits of embeddings (the optional cross-entropy objective)."""
    return self.identity_head(mu_BxZ).astype(jnp.float32)

  def encode(self, modality: str, x):
    """(mu_BxZ, logvar_BxZ): the embedding as the mean, and logvar 0, since the model learns no spread."""
    mu_BxZ, _ = self.encoders[modality](x)
    return mu_BxZ, jnp.zeros_like(mu_BxZ)

  def encode_with_frames(self, modality: str, x):
    """(encode(modality, x), its frame embeddings) from one run of the encoder."""
    (mu_BxZ, _), frames = super().encode_with_frames(modality, x)
    return (mu_BxZ, jnp.zeros_like(mu_BxZ)), frames


def build(config, specs: dict, seed: int, num_classes: int = 0) -> Contrastive:
  """The encoders of config.model (encoders, hidden, latent_dim) and the optional head."""
  mc = config.model
  specs = modalities.specs(specs)  # Modality values, or their manifest entries
  models.check_model_config(mc, decoder=False)
  dtype = models.compute_dtype(mc.dtype)

  target = mc.get("frozen_target", "") or ""
  if target and target not in specs:
    raise ValueError(f"config.model.frozen_target={target!r} is not a modality of this run (it has {list(specs)})")

  def build_module(rngs: nnx.Rngs):
    encoders = models.build_encoders(mc, specs, dtype, rngs)
    return Contrastive(specs, encoders, models.identity_head(config, num_classes, rngs), target)

  return models.init_module(build_module, seed)


def pairwise_info_nce(mu: dict, temperature: float, labels_B=None):
  """(1) The mean over every unordered modality pair of the symmetric InfoNCE between their embeddings."""
  pairs = list(itertools.combinations(mu, 2))
  return sum(losses.info_nce(mu[m], mu[n], temperature, labels_B) for m, n in pairs) / len(pairs)


def loss(model, batch, example_keys_B, step_key, step, loss_cfg, axis_name=None):
  """(total, {'loss', 'infonce'[, 'identity_ce']}); keys and step are unused (nothing is sampled)."""
  del example_keys_B, step_key, step
  by_identity = loss_cfg.infonce_positives == "identity"
  if (by_identity or loss_cfg.identity_weight > 0) and "label" not in batch:
    raise ValueError("config.loss.infonce_positives='identity' or identity_weight > 0 needs identity labels, "
                     "but the batch has no 'label'")
  post, frames = losses.encode_batch(model, batch, loss_cfg)
  mu_local = {m: post[m][0] for m in model.specs}
  # Negatives come from the whole global batch, so the loss is the same on any device count.
  mu = {m: losses.gather(v, axis_name) for m, v in mu_local.items()}
  labels = losses.gather(batch["label"], axis_name) if "label" in batch else None
  target = getattr(model, "frozen_target", "")
  if target:  # adapters into a frozen pretrained space: only the pairs (m, target) train
    metrics = adapter_terms(mu, target, loss_cfg, labels if by_identity else None)
  else:
    metrics = {"infonce": pairwise_info_nce(mu, loss_cfg.temperature, labels if by_identity else None)}
  total = sum(metrics.values())
  if loss_cfg.identity_weight > 0:  # (2): a per-example term, a mean over the local rows like msvae's
    metrics["identity_ce"] = losses.identity_ce(model, list(mu_local.values()), batch["label"])
    total = total + loss_cfg.identity_weight * metrics["identity_ce"]
  sync = losses.sync_term(frames, loss_cfg)
  if sync is not None:  # (3) frame-level synchronisation of sequence modalities
    metrics["sync"] = sync
    total = total + loss_cfg.sync_weight * sync
  metrics["loss"] = total
  return total, metrics


def adapter_terms(mu: dict, target: str, loss_cfg, labels_B=None) -> dict:
  """(4) Each other modality's adapter against the frozen target: InfoNCE ('contrastive') or squared error ('regression')."""
  others = [m for m in mu if m != target]
  if loss_cfg.get("adapter", "contrastive") == "regression":
    return {"regression": sum(jnp.mean(jnp.sum((mu[m] - mu[target]) ** 2, axis=-1)) for m in others) / len(others)}
  return {"infonce": sum(losses.info_nce(mu[m], mu[target], loss_cfg.temperature, labels_B) for m in others)
          / len(others)}


def check_config(config) -> None:
  """Raises ValueError naming the key to change in the model or loss section."""
  losses.check_loss_config(config.loss)
  models.check_model_config(config.model, decoder=False)
  if config.loss.get("adapter", "contrastive") not in ADAPTERS:
    raise ValueError(f"config.loss.adapter={config.loss.adapter!r} is unknown; use one of {ADAPTERS}")


zoo.register("contrastive", sys.modules[__name__])
