"""`vector`: a precomputed feature vector [D] (float32, e.g. from a pretrained model); Gaussian likelihood.

With `"views": true` in its manifest entry it is stored as [V, D]: V augmented views of one example (prep's
data.audio_views; view 0 the clean one). The model sees one view [D]: training draws one per step, as an image's
frames; evaluation uses view 0 only (Modality.frames_are_views).
"""

import sys

import numpy as np

from mmvae import layers, likelihoods, modalities, temporal
from mmvae.modalities import base

ENCODERS = ("mlp", "frozen")  # frozen: the vector itself, a pretrained space the other modalities adapt to
DEFAULT_SIGMA = 1.0


def model_shape(m):
  """[D]; of a [V, D] modality with views, one view."""
  return m.shape[1:] if m.get("views") else m.shape


def frames(m):
  """V stored views with views, else 1."""
  return m.shape[0] if m.get("views") else 1


def inputs(m, stored, frame_N=None):
  """float32 model input: with views one view per example ([N, V, D] -> [N, D], view 0 unless given)."""
  stored = np.asarray(stored)
  if m.get("views") and stored.ndim == len(m.shape) + 1:
    stored = stored[np.arange(len(stored)), 0 if frame_N is None else frame_N]
  return np.asarray(stored, np.float32)


def encoder(choice, m, mc, dtype, rngs):
  if choice == "frozen":
    return temporal.Frozen(False, int(np.prod(model_shape(m))), int(mc.latent_dim), m.name)
  return layers.MLPEncoder(model_shape(m), modalities.encoder_hidden(mc, m), mc.latent_dim, dtype, rngs)


def head(in_dim, m, decoder, mc, dtype, rngs):
  del decoder, mc
  return layers.MLPHead(in_dim, model_shape(m), dtype, rngs)


nll = likelihoods.gaussian_nll  # -log N(target | output, sigma^2 I), nats

activate, augment, to_data = base.activate, base.augment, base.to_data
FIGURE = "spectra"  # a vector drawn as a spectrum; the classifier sees it as it is (base.classifier_features)


modalities.register("vector", sys.modules[__name__])
