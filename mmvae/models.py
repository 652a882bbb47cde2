"""The MS-VAE: per-modality Gaussian encoders and one shared decoder with a head per modality."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mmvae import modalities

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  """The JAX dtype of config.model.dtype."""
  if name not in _DTYPES:
    raise ValueError(f"config.model.dtype={name!r} is not supported; use one of {sorted(_DTYPES)}")
  return _DTYPES[name]


class MLPEncoder(nnx.Module):
  """Flattens the input and maps it through an MLP to (mu, logvar) of q(z|x)."""

  def __init__(self, in_shape, hidden, latent_dim, dtype, rngs: nnx.Rngs):
    widths = (math.prod(in_shape),) + tuple(hidden)
    self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    self.head = nnx.Linear(widths[-1], 2 * latent_dim, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x_BxD):
    h_BxH = x_BxD.reshape(x_BxD.shape[0], -1).astype(self.dtype)
    for layer in self.layers:
      h_BxH = nnx.relu(layer(h_BxH))
    mu_BxZ, logvar_BxZ = jnp.split(self.head(h_BxH).astype(jnp.float32), 2, axis=-1)
    return mu_BxZ, logvar_BxZ


class ConvEncoder(nnx.Module):
  """Stride-2 3x3 convolutions over an image [H, W, C] (or a spectrogram [T, F] as one channel)."""

  def __init__(self, in_shape, channels, latent_dim, dtype, rngs: nnx.Rngs, pool_time: bool):
    if len(in_shape) not in (2, 3):
      raise ValueError(f"a conv encoder needs a [T, F] spectrogram or an [S, S, C] image, got shape {in_shape}; "
                       "set config.model.audio_encoder='mlp' (or face_encoder) for vector inputs")
    self.add_channel = len(in_shape) == 2
    h, w, c = (*in_shape, 1) if self.add_channel else in_shape
    convs = []
    for ch in channels:
      convs.append(nnx.Conv(c, ch, (3, 3), strides=(2, 2), padding="SAME", dtype=dtype, rngs=rngs))
      h, w, c = -(-h // 2), -(-w // 2), ch
    self.convs = nnx.List(convs)
    # Spectrograms are averaged over time (as in VGGVox) so the head does not grow with the clip length.
    self.pool_time = pool_time
    flat = (w * c) if pool_time else (h * w * c)
    self.head = nnx.Linear(flat, 2 * latent_dim, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x_BxHxW):
    h = x_BxHxW.astype(self.dtype)
    if self.add_channel:
      h = h[..., None]
    for conv in self.convs:
      h = nnx.relu(conv(h))
    if self.pool_time:
      h = h.mean(axis=1)
    mu_BxZ, logvar_BxZ = jnp.split(self.head(h.reshape(h.shape[0], -1)).astype(jnp.float32), 2, axis=-1)
    return mu_BxZ, logvar_BxZ


class MLPHead(nnx.Module):
  """One linear map from the shared trunk to a flattened output of `out_shape`."""

  def __init__(self, in_dim, out_shape, dtype, rngs: nnx.Rngs):
    self.out_shape = tuple(out_shape)
    self.linear = nnx.Linear(in_dim, math.prod(out_shape), dtype=dtype, rngs=rngs)

  def __call__(self, h_BxH):
    return self.linear(h_BxH).astype(jnp.float32).reshape((h_BxH.shape[0],) + self.out_shape)


class ConvHead(nnx.Module):
  """Transposed convolutions from a small grid up to [H, W, C], cropped to size (T=297 is no power of 2)."""

  def __init__(self, in_dim, out_shape, channels, dtype, rngs: nnx.Rngs):
    self.out_shape = tuple(out_shape)
    self.squeeze = len(out_shape) == 2
    h, w, c = (*out_shape, 1) if self.squeeze else out_shape
    n = len(channels)
    self.grid = (-(-h // 2**n), -(-w // 2**n), channels[-1])
    # The audio encoders pool over time, so z carries no timing: a spectrogram head maps z to one
    # frequency profile, broadcast over time plus a learned time-frequency bias (a full [T, F, C]
    # linear would hold ~80M weights for 297x512).
    self.time_invariant = self.squeeze
    out = math.prod(self.grid[1:]) if self.time_invariant else math.prod(self.grid)
    self.linear = nnx.Linear(in_dim, out, dtype=dtype, rngs=rngs)
    if self.time_invariant:
      # Zero on purpose, like any bias: the head starts as the plain broadcast profile.
      self.grid_bias = nnx.Param(jnp.zeros(self.grid, jnp.float32))
    outs = tuple(reversed(channels[:-1])) + (c,)
    ins = tuple(reversed(channels))
    self.deconvs = nnx.List([nnx.ConvTranspose(a, b, (3, 3), strides=(2, 2), padding="SAME", dtype=dtype, rngs=rngs)
                             for a, b in zip(ins, outs)])
    self.hw = (h, w)

  def __call__(self, h_BxH):
    if self.time_invariant:
      g = self.linear(h_BxH).reshape((h_BxH.shape[0], 1) + self.grid[1:]) + self.grid_bias[...].astype(h_BxH.dtype)
    else:
      g = self.linear(h_BxH).reshape((h_BxH.shape[0],) + self.grid)
    g = nnx.relu(g)
    for i, deconv in enumerate(self.deconvs):
      g = deconv(g)
      if i < len(self.deconvs) - 1:
        g = nnx.relu(g)
    g = g[:, :self.hw[0], :self.hw[1]].astype(jnp.float32)
    return g[..., 0] if self.squeeze else g


class SharedDecoder(nnx.Module):
  """A shared MLP trunk from z, then one head per modality, so any latent decodes to both."""

  def __init__(self, latent_dim, out_shapes, hidden, channels, kind, dtype, rngs: nnx.Rngs):
    widths = (latent_dim,) + tuple(reversed(hidden))
    self.trunk = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    heads = {}
    for m in modalities.MODALITIES:
      spatial = len(out_shapes[m]) >= 2
      if kind == "conv" and spatial:
        heads[m] = ConvHead(widths[-1], out_shapes[m], channels, dtype, rngs)
      else:  # a time-averaged audio vector has no grid to deconvolve into
        heads[m] = MLPHead(widths[-1], out_shapes[m], dtype, rngs)
    self.heads = nnx.Dict(heads)
    # A learned factor on each modality's likelihood scale. Zero on purpose, not from an initialiser:
    # log-offset 0 means training starts at exactly the config's sigma.
    self.log_sigma_offset = nnx.Dict({m: nnx.Param(jnp.zeros((), jnp.float32)) for m in modalities.MODALITIES})
    self.dtype = dtype

  def __call__(self, z_BxZ):
    h_BxH = z_BxZ.astype(self.dtype)
    for layer in self.trunk:
      h_BxH = nnx.relu(layer(h_BxH))
    out = {m: self.heads[m](h_BxH) for m in modalities.MODALITIES}
    out[modalities.FACE] = jax.nn.sigmoid(out[modalities.FACE])  # faces live in [0, 1]
    return out


class MSVAE(nnx.Module):
  """Per-modality encoders (in an nnx.Dict), one shared decoder and an optional identity head on the latent."""

  can_generate = True  # the shared decoder maps any modality's latent to every modality

  def __init__(self, encoders: dict, decoder: SharedDecoder, identity_head=None):
    self.encoders = nnx.Dict(encoders)
    self.decoder = decoder
    self.identity_head = identity_head

  def identity_logits(self, mu_BxZ):
    """Identity logits of latent means (the optional cross-entropy objective)."""
    return self.identity_head(mu_BxZ).astype(jnp.float32)

  def encode(self, modality: str, x):
    """(mu_BxZ, logvar_BxZ) of q(z | x) for one modality."""
    return self.encoders[modality](x)

  def decode(self, z_BxZ):
    """{'audio': ..., 'face': ...} reconstructed from one latent."""
    return self.decoder(z_BxZ)


def build_encoder(kind, modality, shape, mc, dtype, rngs):
  """The encoder of one modality: `kind` 'mlp' or 'conv' (a conv encoder pools a spectrogram over time)."""
  if kind == "mlp":
    return MLPEncoder(shape, mc.hidden, mc.latent_dim, dtype, rngs)
  if kind == "conv":
    if modality == modalities.AUDIO and len(shape) != 2:
      raise ValueError(f"config.model.audio_encoder='conv' needs [T, F] spectrograms but audio has shape {shape}; "
                       "set config.data.time_average=False (and re-prepare the data) or audio_encoder='mlp'")
    return ConvEncoder(shape, mc.conv_channels, mc.latent_dim, dtype, rngs, pool_time=modality == modalities.AUDIO)
  raise ValueError(f"config.model.{modality}_encoder={kind!r} is unknown; use 'mlp' or 'conv'")


def encoder_kinds(mc) -> dict:
  """{modality: 'mlp' | 'conv'} from config.model."""
  return {modalities.AUDIO: mc.audio_encoder, modalities.FACE: mc.face_encoder}


def input_shapes_of(input_shapes: dict) -> dict:
  """{modality: shape as a tuple of ints}; ValueError when a modality is missing."""
  missing = [m for m in modalities.MODALITIES if m not in input_shapes]
  if missing:
    raise ValueError(f"input_shapes lacks {missing}; expected keys {modalities.MODALITIES}")
  return {m: tuple(int(d) for d in input_shapes[m]) for m in modalities.MODALITIES}


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
  """The MS-VAE for `config.model` and input shapes {'audio': (F,) or (T, F), 'face': (S, S, C)}.

  num_classes: training identities, for the identity head (built when config.loss.identity_weight > 0).
  """
  mc = config.model
  shapes = input_shapes_of(input_shapes)
  check_model_config(mc)
  if config.loss.get("identity_weight", 0.0) > 0 and num_classes < 2:
    raise ValueError(f"config.loss.identity_weight > 0 needs at least 2 training identities, got {num_classes}")
  dtype = compute_dtype(mc.dtype)
  kinds = encoder_kinds(mc)

  def build(rngs: nnx.Rngs):
    # Draw order (encoders, decoder, head) fixes every parameter's key: keep it.
    encoders = {m: build_encoder(kinds[m], m, shapes[m], mc, dtype, rngs) for m in modalities.MODALITIES}
    decoder = SharedDecoder(mc.latent_dim, shapes, mc.hidden, mc.conv_channels, mc.decoder, dtype, rngs)
    return MSVAE(encoders, decoder, identity_head(config, num_classes, rngs))

  return init_module(build, seed)


# XLA's default CPU optimisation passes take seconds to compile the random-number programs of a
# large model; for a one-off initialisation the unoptimised program runs in a fraction of that.
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def init_module(build, seed: int):
  """The module `build(rngs)` returns, each parameter drawn by its own layer's Flax initialiser.

  Every parameter kind starts as its layer declares (by default: Linear/Conv kernels LeCun-normal,
  biases zero, LayerNorm/BatchNorm scales one), and a parameter a module creates from a value (the
  zero log-sigma offsets, the zero grid bias) keeps that value. Keys come from nnx.Rngs(params=seed),
  so the draw depends on the seed and the module's structure, not on the device set.

  Start-up stays fast: the structure is traced once abstractly (config errors surface there, nothing
  allocated) and all initialisers run in one jitted program, compiled once instead of once per shape.
  """
  if isinstance(jnp.zeros(()), jax.core.Tracer):  # inside an eval_shape or jit: part of that program
    return build(nnx.Rngs(params=seed))
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(params=seed))))
  options = _INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
  state = jax.jit(lambda: nnx.state(build(nnx.Rngs(params=seed))), compiler_options=options)()
  return nnx.merge(graphdef, state)
