"""What every model kind builds on: a module that keeps its modalities, per-modality encoders, the identity head."""

from flax import nnx

from mmvae import modalities
from mmvae.layers import compute_dtype, init_module  # noqa: F401  (the model zoo's entry points to them)


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
