"""`image`: K stored frames [K, S, S, C] uint8 per example; the model sees one [S, S, C] in [0, 1]; Gaussian likelihood.

Train-time augmentation (`augment`, all off by default): train.face_flip, face_crop_scale (framing), face_blur
(focus), face_color_jitter (lighting), drawn per example from its key. Evaluation never augments: validation and
analysis encode every stored frame and average the posteriors (inference.encode_split). JPEG re-compression is not
offered: it cannot run inside jit.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmvae import layers, likelihoods, modalities
from mmvae.modalities import base

ENCODERS = ("mlp", "conv")
DEFAULT_SIGMA = 0.1  # pixels in [0, 1]
FIGURE = "image_grid"  # generated images beside the real ones, one identity per row
SHOWS_ATTRIBUTES = True  # a face shows gender and the like: coherence scores generated faces for them too
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
    return layers.ConvHead(in_dim, model_shape(m), mc.conv_channels, dtype, rngs, layers.upsample_of(mc, m.name))
  return layers.MLPHead(in_dim, model_shape(m), dtype, rngs)


def activate(raw):
  return jax.nn.sigmoid(raw)  # pixels live in [0, 1]


nll = likelihoods.gaussian_nll  # -log N(target | output, sigma^2 I), nats

def to_data(output):
  return np.asarray(output, np.float32)


# Train-time face augmentations (train.face_*): each off at its default; draws come from the example's key only.
_COLOR, _CROP, _BLUR = 0, 1, 2  # tags folded into an example's key: one stream per augmentation
BLUR_TRUNCATE = 4.0  # the blur kernel reaches this many of train.face_blur's sigmas (scipy's default truncate)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 grey of RGB


def grey(x_SxSxC):
  """Each pixel's grey level [S, S, 1]: ITU-R 601 luma of RGB, the channel mean otherwise (one channel: itself)."""
  if x_SxSxC.shape[-1] == 3:
    return jnp.tensordot(x_SxSxC, jnp.asarray(_LUMA, x_SxSxC.dtype), axes=1)[..., None]
  return x_SxSxC.mean(-1, keepdims=True)


def color_adjust(x_SxSxC, brightness, contrast, saturation):
  """Brightness, then contrast, then saturation by the given factors (1: unchanged), clipped to [0, 1] after each.

  brightness scales every pixel; contrast blends with the image's mean grey level; saturation with each pixel's
  grey level (no change to a one-channel image).
  """
  x = jnp.clip(x_SxSxC * brightness, 0.0, 1.0)
  x = jnp.clip(contrast * x + (1.0 - contrast) * grey(x).mean(), 0.0, 1.0)
  return jnp.clip(saturation * x + (1.0 - saturation) * grey(x), 0.0, 1.0)


def crop_resize(x_SxSxC, side, top, left):
  """The square window of side `side` (a fraction of each edge) whose corner is (top, left) (fractions of the
  height and width), resized back to the image's size with bilinear interpolation (jittable in all three)."""
  h, w = x_SxSxC.shape[0], x_SxSxC.shape[1]
  scale = jnp.full((2,), 1.0 / side, jnp.float32)
  translation = -jnp.stack([top * h, left * w]).astype(jnp.float32) * scale
  return jax.image.scale_and_translate(x_SxSxC, x_SxSxC.shape, (0, 1), scale, translation, "linear",
                                       antialias=False)


def blur_radius(max_sigma: float, size: int) -> int:
  """The static kernel radius of a Gaussian blur of sigma up to max_sigma: BLUR_TRUNCATE sigmas, below `size`."""
  return max(0, min(int(BLUR_TRUNCATE * float(max_sigma) + 0.5), size - 1))


def gaussian_blur(x_SxSxC, sigma, radius: int):
  """A separable Gaussian blur of standard deviation sigma pixels (jittable in sigma; ~0: unchanged) over a kernel
  of 2 * radius + 1 taps per axis, the edges mirrored (numpy 'symmetric', scipy.ndimage 'reflect')."""
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-0.5 * (taps / jnp.maximum(sigma, 1e-6)) ** 2)  # normalised below, once cut to the axis
  for axis in (0, 1):
    r = min(radius, x_SxSxC.shape[axis] - 1)
    k = kernel[radius - r:radius + r + 1] / kernel[radius - r:radius + r + 1].sum()
    pad = [(0, 0)] * x_SxSxC.ndim
    pad[axis] = (r, r)
    padded = jnp.pad(x_SxSxC, pad, mode="symmetric")
    n = x_SxSxC.shape[axis]
    x_SxSxC = sum(k[i] * lax.slice_in_dim(padded, i, i + n, axis=axis) for i in range(2 * r + 1))
  return x_SxSxC


def augment(x_BxSxSxC, flip_B, train_cfg, keys_B=None):
  """Train-time face augmentation, each off by default and drawn from the example's key in keys_B only:

  train.face_flip: mirrored left-right where flip_B;
  train.face_crop_scale < 1: a random square crop of area fraction in [scale, 1], resized back (framing);
  train.face_blur > 0: a Gaussian blur of sigma uniform in [0, face_blur] pixels (focus);
  train.face_color_jitter > 0: brightness, contrast and saturation factors uniform in [1 - s, 1 + s] (lighting).
  Applied in that order; pixels stay in [0, 1]. With every key off, x itself.
  """
  x = x_BxSxSxC
  if train_cfg.get("face_flip", False):
    x = jnp.where(flip_B[:, None, None, None], x[:, :, ::-1, :], x)
  jitter = float(train_cfg.get("face_color_jitter", 0.0))
  crop = float(train_cfg.get("face_crop_scale", 1.0))
  blur = float(train_cfg.get("face_blur", 0.0))
  if jitter == 0.0 and crop == 1.0 and blur == 0.0:
    return x
  if keys_B is None:
    raise ValueError("train.face_color_jitter / face_crop_scale / face_blur need one key per example (keys_B)")
  dtype = x.dtype
  x = x.astype(jnp.float32)
  draw = lambda tag, n, lo, hi: jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, tag), (n,), jnp.float32,
                                                                      lo, hi))(keys_B)
  if crop != 1.0:
    u_Bx3 = draw(_CROP, 3, 0.0, 1.0)
    side_B = jnp.sqrt(crop + (1.0 - crop) * u_Bx3[:, 0])
    top_B, left_B = (1.0 - side_B) * u_Bx3[:, 1], (1.0 - side_B) * u_Bx3[:, 2]
    x = jnp.clip(jax.vmap(crop_resize)(x, side_B, top_B, left_B), 0.0, 1.0)
  if blur != 0.0:
    sigma_B = draw(_BLUR, 1, 0.0, blur)[:, 0]
    radius = blur_radius(blur, min(x.shape[1], x.shape[2]))
    x = jnp.clip(jax.vmap(lambda xi, s: gaussian_blur(xi, s, radius))(x, sigma_B), 0.0, 1.0)
  if jitter != 0.0:
    f_Bx3 = draw(_COLOR, 3, 1.0 - jitter, 1.0 + jitter)
    x = jax.vmap(color_adjust)(x, f_Bx3[:, 0], f_Bx3[:, 1], f_Bx3[:, 2])
  return x.astype(dtype)


modalities.register("image", sys.modules[__name__])
