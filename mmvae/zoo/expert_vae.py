"""What the MVAE, MMVAE and MoPoE kinds share: a Gaussian expert per modality and a decoder per modality.

Each modality m has an encoder (its kind's, config.model.encoders) giving the expert q_m(z | x_m), and
its own decoder p(x_m | z): an MLP trunk from z (config.model.decoder_hidden; by default hidden reversed) and its kind's head. The
decoders share no layers, as in Wu & Goodman (2018), Shi et al. (2019) and Sutter et al. (2021), so
one modality's likelihood cannot claim capacity from another's. A kind subclasses ExpertVAE to say how
the experts combine (`joint_posterior`) and which posterior `encode` reports.

Gaussian likelihoods use the MS-VAE's scales (config.loss.sigma, learned when config.loss.learn_sigma,
read by losses.log_sigmas from `decoder.log_sigma_offset`); tokens use their categorical likelihood.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from mmvae import layers, losses, models, modalities


class Decoders(models.Multimodal):
  """One decoder per modality: its own MLP trunk from z, then its kind's head."""

  def __init__(self, latent_dim, specs: dict, mc, dtype, rngs: nnx.Rngs):
    super().__init__(specs)
    widths = (latent_dim,) + layers.decoder_widths(mc)
    trunks, heads = {}, {}
    for name, m in specs.items():  # draw order: each modality's trunk, then its head
      trunks[name] = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
      heads[name] = m.kind_module.head(widths[-1], m, mc.decoder, mc, dtype, rngs)
    self.trunks = nnx.Dict(trunks)
    self.heads = nnx.Dict(heads)
    # Zero on purpose, as in models.SharedDecoder: training starts at exactly the config's sigma.
    self.log_sigma_offset = nnx.Dict({name: nnx.Param(jnp.zeros((), jnp.float32)) for name, m in specs.items()
                                      if m.kind_module.DEFAULT_SIGMA is not None})
    self.linear = modalities.linear_outputs(specs, mc)  # heads whose raw values are the output (model.output)
    self.latent_dim = latent_dim
    self.dtype = dtype

  def __call__(self, z_BxZ, names=None):
    """{name: output} of the named modalities' decoders (all when names is None)."""
    out = {}
    for name in self.specs if names is None else names:
      h_BxH = z_BxZ.astype(self.dtype)
      for layer in self.trunks[name]:
        h_BxH = nnx.relu(layer(h_BxH))
      out[name] = modalities.decoded(self.specs[name], self.heads[name](h_BxH), self.linear)
    return out


class ExpertVAE(models.Multimodal):
  """Per-modality Gaussian experts (an nnx.Dict of encoders), per-modality decoders, an optional identity head."""

  can_generate = True  # every modality's decoder reads the one latent space

  def __init__(self, encoders: dict, decoder: Decoders, identity_head=None):
    super().__init__(decoder.specs)
    self.encoders = nnx.Dict(encoders)
    self.decoder = decoder
    self.identity_head = identity_head
    self.latent_dim = decoder.latent_dim

  def identity_logits(self, mu_BxZ):
    """Identity logits of latent means (the optional cross-entropy objective)."""
    return self.identity_head(mu_BxZ).astype(jnp.float32)

  def present(self, inputs: dict) -> list[str]:
    """The modalities of `inputs`, in the dataset's order; ValueError for a name the model lacks or none."""
    unknown = [n for n in inputs if n not in self.specs and n != "label"]
    names = [n for n in self.specs if n in inputs]
    if unknown or not names:
      raise ValueError(f"joint_posterior takes modalities of {list(self.specs)}, got {list(inputs)}")
    return names

  def experts(self, inputs: dict):
    """(mus_MxBxZ, logvars_MxBxZ): the expert of each modality of `inputs`, stacked in the dataset's order."""
    pairs = [self.encoders[n](inputs[n]) for n in self.present(inputs)]
    return jnp.stack([mu for mu, _ in pairs]), jnp.stack([lv for _, lv in pairs])

  def encode(self, modality: str, x):
    """(mu_BxZ, logvar_BxZ) of the modality's expert q_m(z | x_m)."""
    return self.encoders[modality](x)

  def decode(self, z_BxZ):
    """{modality: output} decoded from one latent."""
    return self.decoder(z_BxZ)


def build(model_cls, config, specs: dict, seed: int, num_classes: int = 0):
  """An initialised `model_cls` (an ExpertVAE) for config.model and the modalities {name: Modality}."""
  mc = config.model
  specs = modalities.specs(specs)  # Modality values, or their manifest entries
  models.check_model_config(mc)
  dtype = models.compute_dtype(mc.dtype)

  def build_module(rngs: nnx.Rngs):
    # Draw order (encoders, decoders, head) fixes every parameter's key: keep it.
    encoders = models.build_encoders(mc, specs, dtype, rngs)
    decoder = Decoders(mc.latent_dim, specs, mc, dtype, rngs)
    return model_cls(encoders, decoder, models.identity_head(config, num_classes, rngs))

  return models.init_module(build_module, seed)


def check_config(config, kind: "Kind") -> None:
  """Raises ValueError naming the key to change; a key only another expert kind reads is refused off its default."""
  losses.check_loss_config(config.loss)
  models.check_model_config(config.model)
  lc = config.loss
  if lc.likelihood != "gaussian":
    raise ValueError(f"config.loss.likelihood={lc.likelihood!r}: the {kind.name} kind optimises a true ELBO in nats; "
                     "use 'gaussian' ('sse' is the MS-VAE seed recipe only)")
  if num_samples(lc) < 1:
    raise ValueError(f"config.loss.num_samples={lc.num_samples} must be >= 1")
  if kind.check is not None:
    kind.check(lc)
  # msvae's alignment terms: this family's objective has none, so a weight set here would be ignored silently.
  for key in ("infonce_weight", "triplet_weight"):
    if lc.get(key, 0.0) != 0:
      raise ValueError(f"config.loss.{key}={lc[key]!r}: the {kind.name} kind has no InfoNCE or triplet term "
                       "(msvae's alignment objectives); set it to 0.0")
  # The family's keys (each Kind's `keys`), found through the registry: a sibling's key set here would be ignored.
  from mmvae import zoo
  siblings = [k for k in (zoo.get(name) for name in zoo.kinds()) if isinstance(k, Kind) and k is not kind]
  for other in siblings:
    for key, default in other.keys.items():
      if key not in kind.keys and lc.get(key, default) != default:
        raise ValueError(f"config.loss.{key}={lc[key]!r} applies to model.kind={other.name!r} only; "
                         f"set it to {default!r}")


def num_samples(loss_cfg) -> int:
  """config.loss.num_samples (K draws per posterior), 1 for configs written before the key existed."""
  return int(loss_cfg.get("num_samples", 1))


def example_streams(example_keys_B, n: int):
  """n independent keys per example ([n, B]), split from each example's own key (device-independent)."""
  return jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, n))(example_keys_B), 0, 1)


def normal_draws(keys_B, lead: tuple, dim: int):
  """Standard normal noise [*lead, B, dim]: example b's rows come from keys_B[b] alone."""
  eps_Bx = jax.vmap(lambda k: jax.random.normal(k, (*lead, dim)))(keys_B)
  return jnp.moveaxis(eps_Bx, 0, len(lead))


def log_likelihoods(model, z_xBxZ, batch: dict, log_sigma: dict, names=None) -> dict:
  """{name: log p(x_m | z) [..., B]} for latents with leading sample axes, decoded as one flat batch."""
  lead, dim = z_xBxZ.shape[:-1], z_xBxZ.shape[-1]
  names = list(model.specs) if names is None else list(names)
  out = model.decoder(z_xBxZ.reshape(-1, dim), names)
  copies = z_xBxZ.reshape(-1, *z_xBxZ.shape[-2:]).shape[0]  # latents per example
  result = {}
  for name in names:
    x = jnp.asarray(batch[name])
    target = jnp.broadcast_to(x[None], (copies,) + x.shape).reshape((-1,) + x.shape[1:])
    nll = model.specs[name].kind_module.nll(out[name], target, log_sigma.get(name))
    result[name] = -nll.reshape(lead)
  return result


def finish(model, batch, total, metrics: dict, loss_cfg, beta, log_sigma: dict):
  """Adds the optional identity CE on the unimodal posterior means, the KL weight and the scales; (total, metrics)."""
  if loss_cfg.get("identity_weight", 0.0) > 0:
    if "label" not in batch:
      raise ValueError("config.loss.identity_weight > 0 needs identity labels, but the batch has no 'label'")
    means = [model.encode(m, batch[m])[0] for m in model.specs]
    metrics["identity_ce"] = losses.identity_ce(model, means, batch["label"])
    total = total + loss_cfg.identity_weight * metrics["identity_ce"]
  metrics["loss"] = total
  metrics["kl_scale"] = beta
  for m, value in log_sigma.items():
    metrics[f"sigma_{m}"] = jnp.exp(value)
  return total, metrics


class Kind:
  """A registered expert-VAE kind: its model class, and loss = objective(noise drawn from the example keys).

  keys: the loss keys only this kind reads, {key: default} (its `default_config` adds loss.num_samples, which
  every expert kind reads); check(loss_cfg): raises ValueError when one of them is unusable.
  """

  def __init__(self, name: str, model_cls, noise, objective, keys: dict | None = None, check=None):
    self.name, self.model_cls, self.noise, self.objective = name, model_cls, noise, objective
    self.keys, self.check = dict(keys or {}), check

  def default_config(self) -> dict:
    """The config keys this kind reads beyond the shared schema, at their defaults."""
    # K reparameterised draws per posterior: per ELBO term, mixture component or subset.
    return {"loss": {"num_samples": 1, **self.keys}}

  def build(self, config, specs: dict, seed: int, num_classes: int = 0):
    """Per-modality encoders and decoders of config.model (and the identity head when loss.identity_weight > 0)."""
    return build(self.model_cls, config, specs, seed, num_classes)

  def loss(self, model, batch, example_keys_B, step_key, step, loss_cfg, axis_name=None):
    """(total, metrics) of the kind's objective; every term is per example, so pmap's mean of means is right."""
    del step_key, axis_name
    draws = self.noise(example_keys_B, len(model.specs), loss_cfg, num_samples(loss_cfg), model.latent_dim)
    return self.objective(model, batch, draws, step, loss_cfg)

  def check_config(self, config) -> None:
    """Raises ValueError naming the key to change in the model or loss section."""
    check_config(config, self)
