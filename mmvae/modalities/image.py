"""`image`: K stored frames [K, S, S, C] uint8 per example; the model sees one [S, S, C] in [0, 1]; Gaussian likelihood."""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from mmvae import layers, likelihoods, modalities
from mmvae.modalities import base

ENCODERS = ("mlp", "conv")
DEFAULT_SIGMA = 0.1  # pixels in [0, 1]
FIGURE = "image_grid"  # generated images beside the real ones, one identity per row
classifier_features = base.pixel_features  # pixels in [0, 1] (every stored frame is a training example)


def model_shape(m):
  return m.shape[1:]


def frames(m):
  return m.shape[0]


def to_float(pixels_uint8) -> np.ndarray:
  """uint8 pixels -> float32 in [0, 1]."""
  return np.asarray(pixels_uint8, np.float32) / np.float32(255.0)


def inputs(m, stored, frame_N=None):
  """One frame per example ([N, K, S, S, C] -> [N, S, S, C], frame 0 unless given) in [0, 1]."""
  del m
  stored = np.asarray(stored)
  if stored.ndim == 5:
    stored = stored[np.arange(len(stored)), 0 if frame_N is None else frame_N]
  return to_float(stored) if stored.dtype == np.uint8 else np.asarray(stored, np.float32)


def encoder(choice, m, mc, dtype, rngs):
  if choice == "conv":
    return layers.ConvEncoder(model_shape(m), mc.conv_channels, mc.latent_dim, dtype, rngs, pool_time=False)
  return layers.MLPEncoder(model_shape(m), modalities.encoder_hidden(mc, m), mc.latent_dim, dtype, rngs)


def head(in_dim, m, decoder, mc, dtype, rngs):
  if decoder == "conv":
    return layers.ConvHead(in_dim, model_shape(m), mc.conv_channels, dtype, rngs)
  return layers.MLPHead(in_dim, model_shape(m), dtype, rngs)


def activate(raw):
  return jax.nn.sigmoid(raw)  # pixels live in [0, 1]


nll = likelihoods.gaussian_nll  # -log N(target | output, sigma^2 I), nats

def to_data(output):
  return np.asarray(output, np.float32)


def augment(x_BxSxSxC, flip_B, train_cfg, keys_B=None):
  """Each image mirrored left-right where flip_B (train.face_flip)."""
  del keys_B
  if not train_cfg.get("face_flip", False):
    return x_BxSxSxC
  return jnp.where(flip_B[:, None, None, None], x_BxSxSxC[:, :, ::-1, :], x_BxSxSxC)


modalities.register("image", sys.modules[__name__])
