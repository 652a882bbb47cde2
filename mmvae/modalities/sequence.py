"""`sequence`: frames over time [T, D + 1] float32 per example, variable length, with the mask stored in the last column.

Stored layout (what `mmvae prep` writes and `pack` makes): row t holds step t's D values (one step of
shape `step_shape`, flattened row-major) followed by 1.0; rows after the sequence's length are all
zeros (the mask column 0). Real steps come first. A manifest entry:

  {"name": "face_frames", "kind": "sequence", "shape": [T, D + 1], "dtype": "float32",
   "step_shape": [S, S, C], "step_seconds": 0.04}

`step_seconds` (time per step) lets two sequences be compared step by step (synchronisation needs the
same rate). Steps are spectrogram frames, face frames or precomputed per-second features alike.
"""

import sys

import jax.numpy as jnp
import numpy as np

from mmvae import layers, modalities, temporal
from mmvae.modalities import base


def pack(steps, max_steps: int) -> np.ndarray:
  """[T, D + 1] float32: the first min(L, T) of `steps` ([L, ...] any step shape, L >= 1) flattened, mask 1; zeros after."""
  steps = np.asarray(steps, np.float32)
  if steps.ndim < 1 or len(steps) < 1:
    raise ValueError(f"a sequence needs at least one step, got shape {list(steps.shape)}")
  if max_steps < 1:
    raise ValueError(f"a sequence needs max_steps >= 1, got {max_steps}")
  flat = steps.reshape(len(steps), -1)[:max_steps]
  out = np.zeros((int(max_steps), flat.shape[1] + 1), np.float32)
  out[:len(flat), :-1] = flat
  out[:len(flat), -1] = 1.0
  return out


def unpack(stored, step_shape=None) -> np.ndarray:
  """The real steps of one stored sequence [T, D + 1] -> [L, D] (or [L, *step_shape])."""
  stored = np.asarray(stored)
  steps = stored[stored[:, -1] > 0, :-1]
  return steps.reshape(len(steps), *step_shape) if step_shape is not None else steps


def lengths(stored) -> np.ndarray:
  """Real steps per example of stored sequences [..., T, D + 1]."""
  return (np.asarray(stored)[..., -1] > 0).sum(-1)


ENCODERS = (*temporal.CHOICES, "frozen")  # gru (the default), lstm, tconv, transformer, pool; frozen: a target space
DEFAULT_SIGMA = 1.0
_LOG_2PI = float(np.log(2.0 * np.pi))


def _check(m) -> int:
  if len(m.shape) != 2 or m.shape[1] < 2:
    raise ValueError(f"modality {m.name!r} of kind 'sequence' needs a stored shape [T, D + 1] (steps, then the "
                     f"mask column), got {list(m.shape)}")
  return int(m.shape[1]) - 1


def encoder(choice, m, mc, dtype, rngs):
  """A temporal encoder (mmvae/temporal.py) of `choice` over m's steps; `frozen`: the steps themselves."""
  step_dim = _check(m)
  windows = tuple(mc.get("frame_windows", temporal.DEFAULT_WINDOWS))
  if choice == "frozen":
    return temporal.Frozen(True, step_dim, int(mc.latent_dim), m.name, windows)
  return temporal.TemporalEncoder(choice, step_dim, modalities.encoder_hidden(mc, m), int(mc.latent_dim), dtype, rngs,
                                  frame_windows=windows, temporal_layers=int(mc.get("temporal_layers", 1)),
                                  heads=int(mc.get("temporal_heads", 4)))


def head(in_dim, m, decoder, mc, dtype, rngs):
  """Every step's values [T, D] from the trunk (the mask is the target's)."""
  del decoder, mc
  return layers.MLPHead(in_dim, (m.shape[0], _check(m)), dtype, rngs)


def nll(output_BxTxD, target_BxTxD1, log_sigma):
  """-log N(real steps of the target | output, sigma^2 I) per example (nats): padded steps do not count."""
  steps, mask = target_BxTxD1[..., :-1], target_BxTxD1[..., -1:]
  sse_B = jnp.sum(((output_BxTxD - steps) * mask) ** 2, axis=(1, 2))
  dims_B = jnp.sum(mask, axis=(1, 2)) * steps.shape[-1]
  return 0.5 * sse_B * jnp.exp(-2.0 * log_sigma) + dims_B * (log_sigma + 0.5 * _LOG_2PI)


def to_data(output) -> np.ndarray:
  """Decoded steps [..., T, D] in the stored layout [..., T, D + 1] (every step real)."""
  output = np.asarray(output, np.float32)
  return np.concatenate([output, np.ones(output.shape[:-1] + (1,), np.float32)], axis=-1)


model_shape, frames, activate, augment = base.model_shape, base.frames, base.activate, base.augment
inputs = base.float_inputs


modalities.register("sequence", sys.modules[__name__])
