"""`vector`: a precomputed feature vector [D] (float32, e.g. from a pretrained model); Gaussian likelihood."""

import sys

import numpy as np

from mmvae import layers, likelihoods, modalities, temporal
from mmvae.modalities import base

ENCODERS = ("mlp", "frozen")  # frozen: the vector itself, a pretrained space the other modalities adapt to
DEFAULT_SIGMA = 1.0


def encoder(choice, m, mc, dtype, rngs):
  if choice == "frozen":
    return temporal.Frozen(False, int(np.prod(m.shape)), int(mc.latent_dim), m.name)
  return layers.MLPEncoder(m.shape, modalities.encoder_hidden(mc, m), mc.latent_dim, dtype, rngs)


def head(in_dim, m, decoder, mc, dtype, rngs):
  del decoder, mc
  return layers.MLPHead(in_dim, m.shape, dtype, rngs)


nll = likelihoods.gaussian_nll  # -log N(target | output, sigma^2 I), nats

model_shape, frames, activate, augment = base.model_shape, base.frames, base.activate, base.augment
inputs, to_data = base.float_inputs, base.to_data
FIGURE = "spectra"  # a vector drawn as a spectrum; the classifier sees it as it is (base.classifier_features)


modalities.register("vector", sys.modules[__name__])
