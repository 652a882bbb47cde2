"""`video`: a short clip [T, S, S, C] uint8 per example; the model sees all T frames in [0, 1]; Gaussian likelihood.

Encoder 'frames': one MLP shared by every frame (widths modalities.encoder_hidden), the mean and the max
of its outputs over time concatenated, then a linear map to (mu, logvar). The decoder head gives the
whole clip.
"""

import math
import sys

import jax
import numpy as np

from mmvae import layers, likelihoods, modalities
from mmvae.modalities import base, image

ENCODERS = ("frames",)
DEFAULT_SIGMA = 0.1  # pixels in [0, 1]


def inputs(m, stored, frame_N=None):
  """The whole clip of every example ([N, T, S, S, C]) in [0, 1]."""
  del m, frame_N
  stored = np.asarray(stored)
  return image.to_float(stored) if stored.dtype == np.uint8 else np.asarray(stored, np.float32)


def encoder(choice, m, mc, dtype, rngs):
  del choice
  if len(m.shape) != 4:
    raise ValueError(f"modality {m.name!r} of kind 'video' needs a stored shape [T, S, S, C], got {list(m.shape)}")
  return layers.SetEncoder(math.prod(m.shape[1:]), modalities.encoder_hidden(mc, m), ("mean", "max"), (),
                           mc.latent_dim, dtype, rngs)


def head(in_dim, m, decoder, mc, dtype, rngs):
  del decoder, mc
  return layers.MLPHead(in_dim, m.shape, dtype, rngs)


def activate(raw):
  return jax.nn.sigmoid(raw)  # pixels live in [0, 1]


nll = likelihoods.gaussian_nll  # -log N(target | output, sigma^2 I), nats

model_shape, frames, augment, to_data = base.model_shape, base.frames, base.augment, base.to_data


modalities.register("video", sys.modules[__name__])
