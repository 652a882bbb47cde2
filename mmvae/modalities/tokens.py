"""`tokens`: text as int32 token ids [L] (0 = padding) over the manifest's `vocab`; categorical likelihood.

Encoders: 'bow' (token counts over the vocabulary, then the MLP) and 'conv' (a sequence encoder:
embeddings, a width-3 convolution over positions, a mean over the non-padding positions, then a
linear map to the posterior). The decoder head gives logits [L, V] per example.
"""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmvae import layers, likelihoods, modalities
from mmvae.modalities import base

ENCODERS = ("bow", "conv")
DEFAULT_SIGMA = None  # a categorical likelihood has no scale
EMBED = 64


def vocab_size(m) -> int:
  vocab = m.get("vocab")
  if not vocab:
    raise ValueError(f"modality {m.name!r} of kind 'tokens' needs a 'vocab' list in its manifest entry")
  return len(vocab)


def inputs(m, stored, frame_N=None):
  del m, frame_N
  return np.asarray(stored, np.int32)


class BagOfWords(nnx.Module):
  """Token counts (padding excluded) through the MLP encoder."""

  def __init__(self, vocab, hidden, latent_dim, dtype, rngs: nnx.Rngs):
    self.vocab = vocab
    self.mlp = layers.MLPEncoder((vocab,), hidden, latent_dim, dtype, rngs)

  def __call__(self, ids_BxL):
    counts_BxV = jax.nn.one_hot(ids_BxL, self.vocab, dtype=jnp.float32).sum(axis=1).at[:, 0].set(0.0)
    return self.mlp(counts_BxV)


class SequenceConv(nnx.Module):
  """Embeddings, a width-3 convolution over positions, a masked mean, then (mu, logvar)."""

  def __init__(self, vocab, width, latent_dim, dtype, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, EMBED, dtype=dtype, rngs=rngs)
    self.conv = nnx.Conv(EMBED, width, (3,), padding="SAME", dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(width, 2 * latent_dim, dtype=dtype, rngs=rngs)

  def __call__(self, ids_BxL):
    mask_BxL = (ids_BxL > 0).astype(jnp.float32)
    h_BxLxH = nnx.relu(self.conv(self.embed(ids_BxL)))
    pooled_BxH = (h_BxLxH * mask_BxL[..., None]).sum(1) / jnp.maximum(mask_BxL.sum(1, keepdims=True), 1.0)
    mu_BxZ, logvar_BxZ = jnp.split(self.head(pooled_BxH).astype(jnp.float32), 2, axis=-1)
    return mu_BxZ, logvar_BxZ


def encoder(choice, m, mc, dtype, rngs):
  if choice == "conv":
    return SequenceConv(vocab_size(m), modalities.encoder_hidden(mc, m)[0], mc.latent_dim, dtype, rngs)
  return BagOfWords(vocab_size(m), modalities.encoder_hidden(mc, m), mc.latent_dim, dtype, rngs)


def head(in_dim, m, decoder, mc, dtype, rngs):
  del decoder, mc
  return layers.MLPHead(in_dim, (math.prod(m.shape), vocab_size(m)), dtype, rngs)


def nll(logits_BxLxV, ids_BxL, log_sigma=None):
  del log_sigma
  return likelihoods.categorical_nll(logits_BxLxV, ids_BxL)


def to_data(logits):
  """The most likely token at each position."""
  return np.asarray(np.argmax(np.asarray(logits), axis=-1), np.int32)


model_shape, frames, activate, augment = base.model_shape, base.frames, base.activate, base.augment


WORD_START = "\u2581"  # "▁": a subword piece that starts a word (data_prep/subword.py's tokenizers)


def _entries(vocab, ids_L) -> list[str]:
  """The vocabulary entry of each id, padding (id 0) left out, an id outside the vocabulary as <id>."""
  return [vocab[i] if 0 <= i < len(vocab) else f"<{i}>" for i in (int(t) for t in np.ravel(ids_L)) if i != 0]


def pieces_to_text(vocab, ids_L) -> str:
  """Subword ids -> text: the pieces joined, WORD_START a space; padding (id 0) left out, an id outside the
  vocabulary as <id>."""
  return " ".join("".join(_entries(vocab, ids_L)).replace(WORD_START, " ").split())


def to_text(m, ids_L) -> str:
  """Token ids -> words (padding, id 0, left out; an id outside the vocabulary as <id>); subword pieces joined."""
  vocab = list(m.get("vocab") or ())
  if m.get("tokenizer"):
    return pieces_to_text(vocab, ids_L)
  return " ".join(_entries(vocab, ids_L))


def classifier_features(m, ids_NxL):
  """Bag-of-words counts [N, V] over the vocabulary (its size from the data without one; padding, id 0, left out)."""
  vocab = m.get("vocab")
  size = len(vocab) if vocab else int(np.max(ids_NxL, initial=0)) + 1
  ids = np.asarray(ids_NxL, np.int64).reshape(len(ids_NxL), -1)
  counts = np.zeros((len(ids), size), np.float32)
  rows = np.repeat(np.arange(len(ids)), ids.shape[1])
  np.add.at(counts, (rows, np.clip(ids.ravel(), 0, size - 1)), 1.0)
  counts[:, 0] = 0.0
  return counts


modalities.register("tokens", sys.modules[__name__])
