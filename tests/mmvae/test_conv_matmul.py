"""2-D convolutions as patches @ kernel (layers.conv2d, layers.apply_conv; XLA CPU runs them on every core) against
a loop over output pixels and taps, and against XLA's own convolution (layers.CONV_AS_MATMUL emptied)."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmvae import layers


def _rand(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@contextlib.contextmanager
def _xla_convolutions():
  """Within the block conv2d and apply_conv call XLA's convolution on every backend."""
  saved = layers.CONV_AS_MATMUL
  layers.CONV_AS_MATMUL = frozenset()
  try:
    yield
  finally:
    layers.CONV_AS_MATMUL = saved


def _brute_force(x, k, strides, pads):
  """y[b, p, q, o] = sum_{r, c, i} xpad[b, p*sh + r, q*sw + c, i] k[r, c, i, o], in float64."""
  x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
  x = np.pad(x, ((0, 0), *pads, (0, 0)))
  kh, kw, _, o = k.shape
  sh, sw = strides
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  y = np.zeros((x.shape[0], ho, wo, o))
  for p in range(ho):
    for q in range(wo):
      for r in range(kh):
        for c in range(kw):
          y[:, p, q] += x[:, p * sh + r, q * sw + c] @ k[r, c]
  return y


CASES = [  # (x shape, kernel shape, strides, padding)
    ((2, 9, 7, 3), (3, 3, 3, 5), (2, 2), "SAME"),  # odd sizes: SAME pads unevenly
    ((2, 8, 10, 1), (3, 3, 1, 4), (2, 2), "SAME"),
    ((1, 6, 5, 4), (3, 3, 4, 2), (1, 1), "SAME"),
    ((2, 6, 5, 4), (2, 2, 4, 3), (1, 1), ((1, 0), (1, 0))),  # the 'transpose' phases' windows
    ((2, 6, 5, 4), (1, 2, 4, 3), (1, 1), ((0, 0), (0, 1))),
    ((2, 7, 6, 2), (3, 2, 2, 3), (2, 1), "VALID"),
]


def _pads(x_shape, k_shape, strides, padding):
  if isinstance(padding, str):
    return jax.lax.padtype_to_pads(x_shape[1:3], k_shape[:2], strides, padding)
  return padding


@pytest.mark.parametrize("x_shape,k_shape,strides,padding", CASES)
def test_conv2d_is_the_convolution_and_has_its_gradients(x_shape, k_shape, strides, padding):
  x, k = _rand(*x_shape, seed=1), _rand(*k_shape, seed=2)
  want = _brute_force(x, k, strides, _pads(x_shape, k_shape, strides, padding))
  got = layers.conv2d(x, k, strides, padding)
  assert got.shape == want.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)

  def grads():
    return jax.grad(lambda x, k: jnp.sum(jnp.sin(layers.conv2d(x, k, strides, padding))), argnums=(0, 1))(x, k)

  mine = grads()
  with _xla_convolutions():
    np.testing.assert_allclose(np.asarray(layers.conv2d(x, k, strides, padding)), want, rtol=1e-5, atol=1e-5)
    xla = grads()
  for a, b in zip(mine, xla):
    assert float(jnp.abs(b).max()) > 0
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_conv2d_refuses_a_negative_pad():
  """XLA CPU's own convolution gets a negative (cropping) pad wrong (openxla/xla#48713), so conv2d takes none."""
  with pytest.raises(ValueError, match=">= 0"):
    layers.conv2d(_rand(1, 5, 5, 2), _rand(2, 2, 2, 3), (1, 1), ((0, 0), (-1, 1)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_apply_conv_is_the_layer(dtype):
  """apply_conv(conv, x) equals the nnx.Conv layer itself (XLA's convolution), its dtype promotion and bias included,
  for the encoder's stride-2 layer and the sub-pixel head's stride-1 layer."""
  for strides in ((2, 2), 1):
    conv = nnx.Conv(3, 6, (3, 3), strides=strides, padding="SAME", dtype=dtype, rngs=nnx.Rngs(3))
    conv.bias.value = _rand(6, seed=4)
    x = _rand(2, 11, 8, 3, seed=5)
    got = layers.apply_conv(conv, x)
    want = conv(x)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tol, atol=tol)


def test_apply_conv_leaves_other_convolutions_to_the_layer():
  """A grouped or dilated convolution is not a plain patches @ kernel: apply_conv calls the layer."""
  x = _rand(2, 9, 9, 4, seed=6)
  for conv in (nnx.Conv(4, 4, (3, 3), feature_group_count=2, rngs=nnx.Rngs(7)),
               nnx.Conv(4, 4, (3, 3), kernel_dilation=2, rngs=nnx.Rngs(8))):
    np.testing.assert_allclose(np.asarray(layers.apply_conv(conv, x)), np.asarray(conv(x)), rtol=1e-6, atol=1e-6)


def test_conv_encoder_is_the_same_function_either_way():
  """The conv encoder (stride-2 3x3 layers, a spectrogram as one channel) gives the same posterior and parameter
  gradients through patches @ kernel as through XLA's convolution."""
  enc = layers.ConvEncoder((13, 10), (4, 6), 3, jnp.float32, nnx.Rngs(9), pool_time=True)
  x = _rand(2, 13, 10, seed=10)
  graphdef, params = nnx.split(enc)

  def run():
    out = enc(x)
    g = jax.grad(lambda p: jnp.sum(jnp.square(nnx.merge(graphdef, p)(x)[0])))(params)
    return [*out, *jax.tree.leaves(g)]

  mine = run()
  with _xla_convolutions():
    xla = run()
  assert len(mine) == len(xla) == 2 + 6
  for a, b in zip(mine, xla):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_conv_model_is_the_same_function_either_way():
  """A whole conv:tiny MS-VAE (conv encoders for a spectrogram and an RGB face, conv heads): every posterior, every
  decoded output and every parameter gradient through matmuls equals the same through XLA's convolutions."""
  from mmvae import config as config_lib
  from mmvae import modalities
  from mmvae.zoo import msvae
  shapes = {"audio": (29, 24), "face": (16, 16, 3)}
  specs = {"audio": modalities.Modality("audio", "spectrogram", shapes["audio"], "float32"),
           "face": modalities.Modality("face", "image", (1, *shapes["face"]), "uint8")}
  model = msvae.build(config_lib.load("conv:tiny"), specs, seed=0)
  xs = {m: _rand(3, *s, seed=20 + n) for n, (m, s) in enumerate(shapes.items())}
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def scalar(p):
    mdl = nnx.merge(graphdef, p, rest)
    total = 0.0
    for m, x in xs.items():
      mu, logvar = mdl.encode(m, x)
      total += jnp.sum(jnp.sin(mu)) + jnp.sum(logvar ** 2)
      total += sum(jnp.sum(jnp.cos(y)) for y in mdl.decode(mu).values())
    return total

  def run():
    value, grads = jax.value_and_grad(scalar)(params)
    return [value, *jax.tree.leaves(grads)]

  mine = run()
  with _xla_convolutions():
    xla = run()
  assert len(mine) == len(xla) > 10
  for a, b in zip(mine, xla):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-4)
