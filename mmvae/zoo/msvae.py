"""`msvae`: per-modality Gaussian encoders, one shared decoder, per-encoder ELBOs plus alignment terms.

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
With more than two modalities the ELBOs cover every (m, n) and (4)-(6) are averaged over every pair.
Every term is a mean over the batch; batch-level terms (sliced, InfoNCE, triplet) see the whole
global batch so 1 and 4 devices give the same loss. The terms' maths is in mmvae/losses.py.
"""

import itertools
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from mmvae import layers, losses, models, modalities, zoo
from mmvae.likelihoods import reconstruction
from mmvae.zoo import experts

WASSERSTEIN_VARIANTS = ("w2_gaussian", "sample_l2", "sliced")


def default_config() -> dict:
  """The config keys only this kind reads, at their defaults (mmvae.config_schema merges them into every config)."""
  return {"loss": {
      "wasserstein": "w2_gaussian",  # 'w2_gaussian' | 'sample_l2' | 'sliced'
      "self_recon_weight": 1.0,
      "cross_recon_weight": 1.0,
      "wasserstein_weight": 1.0,
      "sliced_projections": 64,
      # A further alignment objective (weight 0 = off) over the global batch of posterior means.
      "infonce_weight": 0.0,  # symmetric InfoNCE (CLIP/VATT); loss.temperature, loss.infonce_positives
  }}


class SharedDecoder(models.Multimodal):
  """A shared MLP trunk from z, then one head per modality (from its kind), so any latent decodes to every modality."""

  def __init__(self, latent_dim, specs: dict, mc, dtype, rngs: nnx.Rngs):
    widths = (latent_dim,) + layers.decoder_widths(mc)
    self.trunk = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    super().__init__(specs)
    self.heads = nnx.Dict({name: m.kind_module.head(widths[-1], m, mc.decoder, mc, dtype, rngs)
                           for name, m in specs.items()})
    # A learned factor on each Gaussian modality's likelihood scale. Zero on purpose, not from an
    # initialiser: log-offset 0 means training starts at exactly the config's sigma.
    self.log_sigma_offset = nnx.Dict({name: nnx.Param(jnp.zeros((), jnp.float32)) for name, m in specs.items()
                                      if m.kind_module.DEFAULT_SIGMA is not None})
    self.linear = modalities.linear_outputs(specs, mc)  # heads whose raw values are the output (model.output)
    self.dtype = dtype

  def __call__(self, z_BxZ):
    h_BxH = z_BxZ.astype(self.dtype)
    for layer in self.trunk:
      h_BxH = nnx.relu(layer(h_BxH))
    return {name: modalities.decoded(m, self.heads[name](h_BxH), self.linear) for name, m in self.specs.items()}


class MSVAE(models.Multimodal):
  """Per-modality encoders (in an nnx.Dict), one shared decoder and an optional identity head on the latent."""

  can_generate = True  # the shared decoder maps any modality's latent to every modality

  def __init__(self, encoders: dict, decoder: SharedDecoder, identity_head=None):
    super().__init__(decoder.specs)
    self.encoders = nnx.Dict(encoders)
    self.decoder = decoder
    self.identity_head = identity_head

  def identity_logits(self, mu_BxZ):
    """Identity logits of latent means (the optional cross-entropy objective)."""
    return self.identity_head(mu_BxZ).astype(jnp.float32)

  def encode(self, modality: str, x):
    """(mu_BxZ, logvar_BxZ) of q(z | x) for one modality."""
    return self.encoders[modality](x)

  def joint_posterior(self, inputs: dict):
    """(mu_BxZ, logvar_BxZ) of the given modalities: the product of their posteriors and the N(0, I) prior expert.

    The MS-VAE trains no joint posterior; this is MVAE's combination of its encoders (precision-weighted,
    so the sharper modality leads; the prior keeps it proper), offered for the test likelihood and joint
    latents. One modality gives PoE(p(z), q_m), a little narrower than q_m itself.
    """
    names = [n for n in self.specs if n in inputs]
    if not names or any(n not in self.specs for n in inputs if n != "label"):
      raise ValueError(f"joint_posterior takes modalities of {list(self.specs)}, got {list(inputs)}")
    pairs = [self.encode(n, inputs[n]) for n in names]
    return experts.product_of_experts(jnp.stack([mu for mu, _ in pairs]), jnp.stack([lv for _, lv in pairs]))

  def decode(self, z_BxZ):
    """{modality: output} decoded from one latent."""
    return self.decoder(z_BxZ)


def build(config, specs: dict, seed: int, num_classes: int = 0) -> MSVAE:
  """The MS-VAE for `config.model` and the modalities {name: Modality}.

  num_classes: training identities, for the identity head (built when config.loss.identity_weight > 0).
  """
  mc = config.model
  specs = modalities.specs(specs)  # Modality values, or their manifest entries
  models.check_model_config(mc)
  if config.loss.get("identity_weight", 0.0) > 0 and num_classes < 2:
    raise ValueError(f"config.loss.identity_weight > 0 needs at least 2 training identities, got {num_classes}")
  dtype = models.compute_dtype(mc.dtype)

  def build_module(rngs: nnx.Rngs):
    # Draw order (encoders, decoder, head) fixes every parameter's key: keep it.
    encoders = models.build_encoders(mc, specs, dtype, rngs)
    decoder = SharedDecoder(mc.latent_dim, specs, mc, dtype, rngs)
    return MSVAE(encoders, decoder, models.identity_head(config, num_classes, rngs))

  return models.init_module(build_module, seed)


def check_config(config) -> None:
  """Raises ValueError naming the key to change in the model or loss section."""
  lc = config.loss
  if lc.wasserstein not in WASSERSTEIN_VARIANTS:
    raise ValueError(f"config.loss.wasserstein={lc.wasserstein!r} is unknown; use one of {WASSERSTEIN_VARIANTS}")
  for name in ("self_recon_weight", "cross_recon_weight", "wasserstein_weight", "infonce_weight"):
    if lc[name] < 0:
      raise ValueError(f"config.loss.{name}={lc[name]} must be >= 0")
  if lc.sliced_projections < 1:
    raise ValueError(f"config.loss.sliced_projections={lc.sliced_projections} must be >= 1")
  losses.check_loss_config(lc)
  models.check_model_config(config.model)


def _alignment(post, z, labels_B, step_key, loss_cfg, axis_name) -> dict:
  """(4)-(6): the alignment terms that have a weight, each a mean over every modality pair (one pair: that pair)."""
  names = list(post)
  pairs = list(itertools.combinations(names, 2))
  gather = losses.gather
  out = {}
  if loss_cfg.wasserstein_weight > 0 or loss_cfg.wasserstein == "w2_gaussian":
    def distance(a, v):
      if loss_cfg.wasserstein == "w2_gaussian":  # (4)
        return jnp.mean(losses.w2_gaussian(*post[a], *post[v]))
      if loss_cfg.wasserstein == "sample_l2":
        return jnp.mean(losses.sample_l2(z[a], z[v]))
      # A batch-level distance: on the whole global batch so it is the same on any device count.
      return losses.sliced_w2(gather(z[a], axis_name), gather(z[v], axis_name), step_key, loss_cfg.sliced_projections)
    out["wasserstein"] = _mean([distance(a, v) for a, v in pairs])
  if loss_cfg.infonce_weight > 0 or loss_cfg.triplet_weight > 0:
    mu = {m: gather(post[m][0], axis_name) for m in names}
    labels = gather(labels_B, axis_name)
    if loss_cfg.infonce_weight > 0:  # (5)
      pos_labels = labels if loss_cfg.infonce_positives == "identity" else None
      out["infonce"] = _mean([losses.info_nce(mu[a], mu[v], loss_cfg.temperature, pos_labels) for a, v in pairs])
    if loss_cfg.triplet_weight > 0:  # (6)
      m_first, m_other, m_x = loss_cfg.triplet_margins
      triplet = losses.triplet
      within = sum(triplet(mu[m], mu[m], labels, m_first if i == 0 else m_other, True) for i, m in enumerate(names))
      across = _mean([0.5 * (triplet(mu[a], mu[v], labels, m_x, False) + triplet(mu[v], mu[a], labels, m_x, False))
                      for a, v in pairs])
      out["triplet"] = within + across
  return out


def _mean(values: list):
  """The mean of a list of terms; a single term is returned as it is (bitwise)."""
  return values[0] if len(values) == 1 else sum(values) / len(values)


def decode_each(model, z: dict) -> dict:
  """{m: model.decode(z[m])} for each modality's latent, decoded in one call on their concatenation.

  One shared decoder serves every latent, so one call reads its weights once per step instead of once
  per modality and its matmuls are taller (per row the same function of z).
  """
  names = list(z)
  size = z[names[0]].shape[0]
  out = model.decode(jnp.concatenate([z[m] for m in names]))
  return {m: {n: v[i * size:(i + 1) * size] for n, v in out.items()} for i, m in enumerate(names)}


def loss(model, batch, example_keys_B, step_key, step, loss_cfg, axis_name=None):
  """The MS-VAE loss of a batch: (total, {term: value}); keys give each example its own noise."""
  specs = model.specs
  names = list(specs)
  needs = [name for name, on in (("identity_weight", loss_cfg.identity_weight > 0),
                                 ("triplet_weight", loss_cfg.triplet_weight > 0),
                                 ("infonce_positives='identity'",
                                  loss_cfg.infonce_weight > 0 and loss_cfg.infonce_positives == "identity")) if on]
  if needs and "label" not in batch:
    raise ValueError(f"config.loss {', '.join(needs)} needs identity labels, but the batch has no 'label'")
  post, frames = losses.encode_batch(model, batch, loss_cfg)
  # Noise per example and modality from its own key, so it does not depend on the device layout.
  eps_keys = jax.vmap(lambda k: jax.random.split(k, len(names)))(example_keys_B)
  z = {}
  for i, m in enumerate(names):
    mu_BxZ, logvar_BxZ = post[m]
    eps_BxZ = jax.vmap(lambda k: jax.random.normal(k, mu_BxZ.shape[1:]))(eps_keys[:, i])
    z[m] = mu_BxZ + jnp.exp(0.5 * logvar_BxZ) * eps_BxZ

  log_sigma = losses.log_sigmas(model, loss_cfg)
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
    terms[f"kl_{m}"] = losses.gaussian_kl(*post[m])  # (3)
  per_encoder = 1.0 / len(names)  # the logged bound is the mean of the encoders' ELBOs
  elbo_B = (-per_encoder * sum(nll[(n, m)] for n in names for m in names)
            - per_encoder * sum(terms[f"kl_{m}"] for m in names))

  metrics = {name: jnp.mean(value) for name, value in terms.items()}
  metrics.update(_alignment(post, z, batch["label"] if "label" in batch else None, step_key, loss_cfg, axis_name))
  beta = losses.kl_weight(loss_cfg, step)
  total = (loss_cfg.self_recon_weight * sum(metrics[f"recon_{m}_from_{m}"] for m in names)
           + loss_cfg.cross_recon_weight * sum(metrics[f"recon_{n}_from_{m}"] for m in names for n in names if n != m)
           + beta * sum(metrics[f"kl_{m}"] for m in names))
  for name, weight in (("wasserstein", loss_cfg.wasserstein_weight), ("infonce", loss_cfg.infonce_weight),
                       ("triplet", loss_cfg.triplet_weight)):
    if name in metrics:
      total = total + weight * metrics[name]
  if loss_cfg.identity_weight > 0:  # (7)
    metrics["identity_ce"] = losses.identity_ce(model, [post[m][0] for m in names], batch["label"])
    total = total + loss_cfg.identity_weight * metrics["identity_ce"]
  sync = losses.sync_term(frames, loss_cfg)
  if sync is not None:  # frame-level synchronisation of sequence modalities (temporal encoders)
    metrics["sync"] = sync
    total = total + loss_cfg.sync_weight * sync
  metrics["loss"] = total
  metrics["elbo"] = jnp.mean(elbo_B)
  metrics["kl_scale"] = beta
  for m, value in log_sigma.items():
    metrics[f"sigma_{m}"] = jnp.exp(value)
  return total, metrics


zoo.register("msvae", sys.modules[__name__])
