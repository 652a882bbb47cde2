"""`spectrogram`: a [T, F] spectrogram or its pooled [F] vector (float32); Gaussian likelihood."""

import sys

from mmvae import layers, likelihoods, modalities
from mmvae.modalities import base

ENCODERS = ("mlp", "conv")  # conv needs [T, F] and averages over time (VGGVox-style)
DEFAULT_SIGMA = 1.0  # features are standardised per bin


def encoder(choice, m, mc, dtype, rngs):
  if choice == "conv":
    if len(m.shape) != 2:
      raise ValueError(f"config.model.encoders.{m.name}='conv' needs [T, F] spectrograms but {m.name} has shape "
                       f"{m.shape}; set config.data.time_average=False (and re-prepare the data) or use 'mlp'")
    return layers.ConvEncoder(m.shape, mc.conv_channels, mc.latent_dim, dtype, rngs, pool_time=True)
  return layers.MLPEncoder(m.shape, modalities.encoder_hidden(mc, m), mc.latent_dim, dtype, rngs)


def head(in_dim, m, decoder, mc, dtype, rngs):
  if decoder == "conv" and len(m.shape) >= 2:
    return layers.ConvHead(in_dim, m.shape, mc.conv_channels, dtype, rngs, layers.upsample_of(mc, m.name))
  return layers.MLPHead(in_dim, m.shape, dtype, rngs)  # a pooled vector has no grid to deconvolve into


nll = likelihoods.gaussian_nll  # -log N(target | output, sigma^2 I), nats

model_shape, frames, activate, augment = base.model_shape, base.frames, base.activate, base.augment
inputs, to_data = base.float_inputs, base.to_data
classifier_features = base.time_stats  # per-bin mean and std over time
FIGURE = "spectra"


modalities.register("spectrogram", sys.modules[__name__])
