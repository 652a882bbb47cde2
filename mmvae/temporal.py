"""Temporal encoders of the `sequence` kind: a clip-level posterior and frame-level embeddings at several scales.

Input: [B, T, D + 1] float32, the last column the mask (1 = a real step, 0 = padding; real steps first).
Every encoder maps each step through an MLP (widths modalities.encoder_hidden) to H = its last width,
then mixes steps over time by `choice`:

  pool         nothing (each step alone): the time-pooled baseline
  gru, lstm    a bidirectional recurrent layer (Flax NNX cells) run over the real steps only
               (seq_lengths), merged back to H and added to the step features
  tconv        config.model.temporal_layers residual 1-D convolutions of width 3 over time, padding
               zeroed before each, so a step sees the same neighbours as in an unpadded sequence
  transformer  sinusoidal positions, then config.model.temporal_layers pre-norm self-attention blocks
               whose keys are the real steps only
  frozen       no parameters: the steps themselves (a frozen target space; see modalities.encoder_choice)

Clip level: the masked mean of the mixed steps, then a linear map to (mu, logvar) [2 * latent_dim].
Frame level (`frames`): for every window w of config.model.frame_windows, the mean of each w
consecutive mixed steps (stride 1, windows wholly inside the real steps), then one linear map shared by
all scales to latent_dim: {w: (emb [B, T - w + 1, Z], mask [B, T - w + 1])}. Padding never changes what a
real step or window gets: a padded and an unpadded batch give the same embeddings.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

CHOICES = ("gru", "lstm", "tconv", "transformer", "pool")
DEFAULT_WINDOWS = (1, 2, 4)


def split_mask(x_BxTxD1):
  """(steps [B, T, D], mask [B, T] float32) of a stored or model-input sequence."""
  return x_BxTxD1[..., :-1], (x_BxTxD1[..., -1] > 0).astype(jnp.float32)


def masked_mean(h_BxTxH, mask_BxT):
  """The mean over the real steps (a sequence with none gives zeros)."""
  total = jnp.sum(h_BxTxH * mask_BxT[..., None], axis=1)
  return total / jnp.maximum(jnp.sum(mask_BxT, axis=1, keepdims=True), 1.0)


def windows(h_BxTxH, mask_BxT, w: int):
  """(mean of each w consecutive steps [B, T - w + 1, H], 1 where all w steps are real [B, T - w + 1])."""
  t = h_BxTxH.shape[1] - w + 1
  if t < 1:
    raise ValueError(f"a frame window of {w} steps does not fit sequences of {h_BxTxH.shape[1]} steps; "
                     "shorten config.model.frame_windows")
  total = sum(h_BxTxH[:, k:k + t] for k in range(w))
  valid = jnp.prod(jnp.stack([mask_BxT[:, k:k + t] for k in range(w)]), axis=0)
  return total / w, valid


def sinusoids(t: int, width: int) -> np.ndarray:
  """[T, width] sinusoidal position codes (Vaswani et al.), a function of the position only."""
  pos = np.arange(t)[:, None]
  freq = np.exp(-math.log(10000.0) * np.arange(0, width, 2) / width)
  out = np.zeros((t, width), np.float32)
  out[:, 0::2] = np.sin(pos * freq)
  out[:, 1::2] = np.cos(pos * freq)[:, :width // 2]
  return out


class _Recurrent(nnx.Module):
  def __init__(self, cell, width, dtype, rngs):
    def rnn():
      return nnx.RNN(cell(width, width, dtype=dtype, rngs=rngs), rngs=False)
    self.both = nnx.Bidirectional(rnn(), rnn(), rngs=False)
    self.merge = nnx.Linear(2 * width, width, dtype=dtype, rngs=rngs)
    self.lstm = cell is not nnx.GRUCell  # an LSTM's carry is (c, h)

  def __call__(self, h, mask):
    lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    zero = jnp.zeros((h.shape[0], h.shape[-1]), h.dtype)  # the carry starts at zero: nothing random
    carry = (zero, zero) if self.lstm else zero
    return h + self.merge(self.both(h, seq_lengths=lengths, initial_carry=(carry, carry)))


class _TemporalConv(nnx.Module):
  def __init__(self, width, layers, dtype, rngs):
    self.convs = nnx.List([nnx.Conv(width, width, kernel_size=(3,), padding="SAME", dtype=dtype, rngs=rngs)
                           for _ in range(layers)])

  def __call__(self, h, mask):
    for conv in self.convs:
      h = h + nnx.relu(conv(h * mask[..., None]))
    return h


class _Transformer(nnx.Module):
  def __init__(self, width, layers, heads, dtype, rngs):
    if width % heads:
      raise ValueError(f"a transformer of width {width} needs config.model.temporal_heads dividing it, got {heads}")
    self.norms = nnx.List([nnx.LayerNorm(width, dtype=dtype, rngs=rngs) for _ in range(2 * layers)])
    self.attention = nnx.List([nnx.MultiHeadAttention(heads, width, dtype=dtype, decode=False, rngs=rngs)
                               for _ in range(layers)])
    self.mlp = nnx.List([nnx.Linear(width, width, dtype=dtype, rngs=rngs) for _ in range(layers)])
    self.width = width

  def __call__(self, h, mask):
    h = h + jnp.asarray(sinusoids(h.shape[1], self.width), h.dtype)
    keys = nnx.make_attention_mask(jnp.ones_like(mask), mask)  # [B, 1, T, T]: every query sees the real keys
    for i, (attend, mlp) in enumerate(zip(self.attention, self.mlp)):
      h = h + attend(self.norms[2 * i](h), mask=keys, deterministic=True)
      h = h + nnx.relu(mlp(self.norms[2 * i + 1](h)))
    return h


class TemporalEncoder(nnx.Module):
  """Steps -> per-step MLP -> temporal mixing (`choice`) -> clip posterior and multi-scale frame embeddings."""

  def __init__(self, choice, step_dim, hidden, latent_dim, dtype, rngs: nnx.Rngs, frame_windows=DEFAULT_WINDOWS,
               temporal_layers: int = 1, heads: int = 4):
    if choice not in CHOICES:
      raise ValueError(f"unknown temporal encoder {choice!r}; use one of {CHOICES}")
    widths = (int(step_dim),) + tuple(int(w) for w in hidden)
    self.steps = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    width = widths[-1]
    if choice in ("gru", "lstm"):
      self.mix = _Recurrent(nnx.GRUCell if choice == "gru" else nnx.OptimizedLSTMCell, width, dtype, rngs)
    elif choice == "tconv":
      self.mix = _TemporalConv(width, int(temporal_layers), dtype, rngs)
    elif choice == "transformer":
      self.mix = _Transformer(width, int(temporal_layers), int(heads), dtype, rngs)
    else:
      self.mix = None
    self.clip = nnx.Linear(width, 2 * latent_dim, dtype=dtype, rngs=rngs)
    self.frame = nnx.Linear(width, latent_dim, dtype=dtype, rngs=rngs)
    self.frame_windows = tuple(int(w) for w in frame_windows)
    self.dtype = dtype

  def mixed(self, x_BxTxD1):
    """(per-step features after temporal mixing [B, T, H], mask [B, T])."""
    steps, mask = split_mask(x_BxTxD1.astype(jnp.float32))
    h = steps.astype(self.dtype)
    for layer in self.steps:
      h = nnx.relu(layer(h))
    if self.mix is not None:
      h = self.mix(h, mask.astype(self.dtype))
    return h, mask

  def _clip(self, h, mask):
    mu, logvar = jnp.split(self.clip(masked_mean(h, mask.astype(h.dtype))).astype(jnp.float32), 2, axis=-1)
    return mu, logvar

  def _frames(self, h, mask) -> dict:
    out = {}
    for w in self.frame_windows:
      mean, valid = windows(h, mask.astype(h.dtype), w)
      out[w] = (self.frame(mean).astype(jnp.float32), valid.astype(jnp.float32))
    return out

  def __call__(self, x_BxTxD1):
    return self._clip(*self.mixed(x_BxTxD1))

  def frames(self, x_BxTxD1) -> dict:
    """{w: (embeddings [B, T - w + 1, Z] float32, mask [B, T - w + 1])} for each frame window w."""
    return self._frames(*self.mixed(x_BxTxD1))

  def encode_and_frames(self, x_BxTxD1):
    """((mu, logvar), frames) from one pass of the step MLP and the temporal mixing (training needs both)."""
    h, mask = self.mixed(x_BxTxD1)
    return self._clip(h, mask), self._frames(h, mask)


class Frozen(nnx.Module):
  """No parameters: a frozen target's own values are its embedding (a sequence's: the mean of its real steps)."""

  def __init__(self, sequence: bool, dim: int, latent_dim: int, name: str, frame_windows=DEFAULT_WINDOWS):
    if dim != latent_dim:
      raise ValueError(f"the frozen target {name!r} has {dim} dimensions, config.model.latent_dim is {latent_dim}: "
                       f"set --config.model.latent_dim={dim} so the adapters map into its space")
    self.sequence = sequence
    self.frame_windows = tuple(int(w) for w in frame_windows)

  def __call__(self, x):
    x = jax.lax.stop_gradient(x.astype(jnp.float32))
    mu = masked_mean(*split_mask(x)) if self.sequence else x.reshape(x.shape[0], -1)
    return mu, jnp.zeros_like(mu)

  def frames(self, x) -> dict:
    if not self.sequence:
      raise ValueError("a frozen vector target has no frames")
    steps, mask = split_mask(jax.lax.stop_gradient(x.astype(jnp.float32)))
    return {w: windows(steps, mask, w) for w in self.frame_windows}

  def encode_and_frames(self, x):
    return self(x), self.frames(x)
