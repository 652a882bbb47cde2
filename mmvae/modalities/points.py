"""`points`: a point cloud [P, 3] float32 per example; Gaussian likelihood on the stored point order.

Encoder 'pointnet' (PointNet's shape): one MLP shared by every point, 3 -> 64 -> 128 (POINT_WIDTHS), a max
over the points, which makes the embedding independent of their order, then an MLP of widths
modalities.encoder_hidden and a linear map to (mu, logvar). The decoder head gives the P points in the
stored order (data_prep/mmdigits.py stores them in a canonical order for that reason). Train-time
augmentation (train.rotate_points): each cloud turned about y by a random angle.
"""

import sys

import jax
import jax.numpy as jnp

from mmvae import layers, likelihoods, modalities
from mmvae.modalities import base

ENCODERS = ("pointnet",)
DEFAULT_SIGMA = 0.1  # coordinates in about [-1, 1]
POINT_WIDTHS = (64, 128)  # the per-point MLP


def encoder(choice, m, mc, dtype, rngs):
  del choice
  if len(m.shape) != 2 or m.shape[1] != 3:
    raise ValueError(f"modality {m.name!r} of kind 'points' needs a stored shape [P, 3], got {list(m.shape)}")
  return layers.SetEncoder(3, POINT_WIDTHS, ("max",), modalities.encoder_hidden(mc, m), mc.latent_dim, dtype, rngs)


def head(in_dim, m, decoder, mc, dtype, rngs):
  del decoder, mc
  return layers.MLPHead(in_dim, m.shape, dtype, rngs)


nll = likelihoods.gaussian_nll  # -log N(target | output, sigma^2 I), nats

model_shape, frames, activate = base.model_shape, base.frames, base.activate


def augment(x_BxPx3, flip_B, train_cfg, keys_B=None):
  """Each cloud turned about the vertical (y) axis by its own uniform angle (train.rotate_points), from its key."""
  del flip_B
  if not train_cfg.get("rotate_points", False) or keys_B is None:
    return x_BxPx3
  theta_B = jax.vmap(lambda k: jax.random.uniform(k, (), minval=0.0, maxval=2 * jnp.pi))(keys_B)
  c, s = jnp.cos(theta_B)[:, None], jnp.sin(theta_B)[:, None]
  x, y, z = x_BxPx3[..., 0], x_BxPx3[..., 1], x_BxPx3[..., 2]
  return jnp.stack([c * x + s * z, y, -s * x + c * z], axis=-1).astype(x_BxPx3.dtype)
inputs, to_data = base.float_inputs, base.to_data


modalities.register("points", sys.modules[__name__])
