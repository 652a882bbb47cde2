"""The MS-VAE: per-modality Gaussian encoders and one shared decoder with a head per modality."""

import jax.numpy as jnp
from flax import nnx

from mmvae import layers, modalities
from mmvae.layers import compute_dtype, init_module  # noqa: F401  (the model zoo's entry points to them)
from mmvae.zoo import experts


class Multimodal(nnx.Module):
  """A module that keeps its modalities' specs (static, hashable: a tuple) and offers them as `specs`."""

  def __init__(self, specs: dict):
    self.modality_specs = tuple(specs.values())

  @property
  def specs(self) -> dict:
    """{name: Modality} in the dataset's order."""
    return {m.name: m for m in self.modality_specs}

  def frame_modalities(self) -> tuple[str, ...]:
    """The modalities whose encoder gives frame-level embeddings (temporal encoders of `sequence` modalities)."""
    encoders = getattr(self, "encoders", None)
    return tuple(n for n in self.specs if encoders is not None and n in encoders
                 and getattr(encoders[n], "frame_windows", None) and getattr(encoders[n], "sequence", True))

  def encode_frames(self, modality: str, x) -> dict:
    """{window w: (embeddings [B, T - w + 1, Z], mask [B, T - w + 1])} of a sequence modality (mmvae/temporal.py)."""
    if modality not in self.frame_modalities():
      raise ValueError(f"modality {modality!r} has no frame-level encoder (those with one: "
                       f"{list(self.frame_modalities())})")
    return self.encoders[modality].frames(x)

  def encode_with_frames(self, modality: str, x):
    """(encode(modality, x), encode_frames(modality, x)) from one run of the modality's encoder."""
    if modality not in self.frame_modalities():
      raise ValueError(f"modality {modality!r} has no frame-level encoder (those with one: "
                       f"{list(self.frame_modalities())})")
    return self.encoders[modality].encode_and_frames(x)


class SharedDecoder(Multimodal):
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
    self.dtype = dtype

  def __call__(self, z_BxZ):
    h_BxH = z_BxZ.astype(self.dtype)
    for layer in self.trunk:
      h_BxH = nnx.relu(layer(h_BxH))
    return {name: m.kind_module.activate(self.heads[name](h_BxH)) for name, m in self.specs.items()}


class MSVAE(Multimodal):
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


def build_encoders(mc, specs: dict, dtype, rngs) -> dict:
  """{name: encoder} of config.model.encoders (each kind's default when unnamed), in the modalities' order."""
  return {name: m.kind_module.encoder(modalities.encoder_choice(mc, m), m, mc, dtype, rngs)
          for name, m in specs.items()}


def check_model_config(mc, decoder: bool = True) -> None:
  """Raises ValueError naming the config.model key to change (decoder=False: the encoders' keys only)."""
  if decoder and mc.decoder not in ("mlp", "conv"):
    raise ValueError(f"config.model.decoder={mc.decoder!r} is unknown; use 'mlp' or 'conv'")
  if mc.latent_dim < 1 or not mc.hidden or not mc.conv_channels or min(*mc.hidden, *mc.conv_channels) < 1:
    raise ValueError(f"config.model needs latent_dim >= 1 and non-empty hidden and conv_channels of widths >= 1, "
                     f"got latent_dim={mc.latent_dim}, hidden={tuple(mc.hidden)}, "
                     f"conv_channels={tuple(mc.conv_channels)}")
  compute_dtype(mc.dtype)


def identity_head(config, num_classes: int, rngs: nnx.Rngs):
  """The linear identity head on the latent means when config.loss.identity_weight > 0, else None."""
  if not config.loss.get("identity_weight", 0.0) > 0:
    return None
  if num_classes < 2:
    raise ValueError(f"config.loss.identity_weight > 0 needs at least 2 training identities, got {num_classes}")
  return nnx.Linear(config.model.latent_dim, num_classes, dtype=compute_dtype(config.model.dtype), rngs=rngs)


def build_model(config, input_shapes: dict, seed: int, num_classes: int = 0) -> MSVAE:
  """The MS-VAE for `config.model` and the modalities {name: Modality} (or legacy {'audio': shape, 'face': shape}).

  num_classes: training identities, for the identity head (built when config.loss.identity_weight > 0).
  """
  mc = config.model
  specs = modalities.specs(input_shapes)
  check_model_config(mc)
  if config.loss.get("identity_weight", 0.0) > 0 and num_classes < 2:
    raise ValueError(f"config.loss.identity_weight > 0 needs at least 2 training identities, got {num_classes}")
  dtype = compute_dtype(mc.dtype)

  def build(rngs: nnx.Rngs):
    # Draw order (encoders, decoder, head) fixes every parameter's key: keep it.
    encoders = build_encoders(mc, specs, dtype, rngs)
    decoder = SharedDecoder(mc.latent_dim, specs, mc, dtype, rngs)
    return MSVAE(encoders, decoder, identity_head(config, num_classes, rngs))

  return init_module(build, seed)


