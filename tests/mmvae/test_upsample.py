"""The conv decoder heads' upsampling variants (config.model.upsample): shapes, against independent computations."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from mmvae import config as config_lib
from mmvae import config_schema, layers


def _rand(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("mode", layers.UPSAMPLES)
@pytest.mark.parametrize("out_shape", [(37, 20), (12, 12, 3), (16, 8, 1)])
def test_head_output_shape_and_finite_gradients(mode, out_shape):
  head = layers.ConvHead(6, out_shape, (4, 8), jnp.float32, nnx.Rngs(0), upsample=mode)
  h = _rand(3, 6)
  assert head(h).shape == (3, *out_shape)
  graphdef, params = nnx.split(head)
  grads = jax.grad(lambda p: jnp.sum(jnp.square(nnx.merge(graphdef, p)(h))))(params)
  leaves = jax.tree.leaves(grads)
  assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_depth_to_space_places_channels_into_pixels():
  b, h, w, r, c = 2, 3, 4, 2, 5
  x = np.random.default_rng(1).normal(size=(b, h, w, r * r * c)).astype(np.float32)
  want = np.zeros((b, r * h, r * w, c), np.float32)
  for n in range(b):
    for i in range(h):
      for j in range(w):
        for di in range(r):
          for dj in range(r):
            for k in range(c):
              want[n, r * i + di, r * j + dj, k] = x[n, i, j, (di * r + dj) * c + k]
  np.testing.assert_array_equal(np.asarray(layers.depth_to_space(jnp.asarray(x), r)), want)


def test_subpixel_layer_is_conv_then_brute_force_depth_to_space():
  head = layers.ConvHead(5, (8, 6, 2), (3,), jnp.float32, nnx.Rngs(2), upsample="subpixel")
  g = _rand(2, 4, 3, 3, seed=3)
  conv = head.deconvs[0]
  y = np.asarray(jax.lax.conv_general_dilated(g, conv.kernel[...], (1, 1), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv.bias[...])
  want = np.zeros((2, 8, 6, 2), np.float32)
  for i in range(4):
    for j in range(3):
      for di in range(2):
        for dj in range(2):
          want[:, 2 * i + di, 2 * j + dj] = y[:, i, j, (2 * di + dj) * 2:(2 * di + dj + 1) * 2]
  np.testing.assert_allclose(np.asarray(head._up(conv, g)), want, rtol=1e-5, atol=1e-5)


def test_resize_layer_is_jax_image_resize_then_conv():
  head = layers.ConvHead(5, (10, 6, 2), (3,), jnp.float32, nnx.Rngs(4), upsample="resize")
  g = _rand(2, 5, 3, 3, seed=5)
  conv = head.deconvs[0]
  up = jax.image.resize(g, (2, 10, 6, 3), "nearest")
  want = jax.lax.conv_general_dilated(up, conv.kernel[...], (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv.bias[...]
  np.testing.assert_allclose(np.asarray(head._up(conv, g)), np.asarray(want), rtol=1e-5, atol=1e-5)


def _brute_force_up(x, k, b, mode):
  """The x2 layer by loops over pixels and taps: 'transpose' places x[h, w] @ k[i, j] at output (2h+2-i, 2w+2-j)
  (Flax's stride-2 SAME ConvTranspose, the last row and column cropped); 'resize' is a zero-padded 3x3 correlation
  of the grid with every pixel repeated 2x2."""
  x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
  n, h, w, _ = x.shape
  out = np.zeros((n, 2 * h + 2, 2 * w + 2, k.shape[-1]))
  if mode == "transpose":
    for r in range(h):
      for c in range(w):
        for i in range(3):
          for j in range(3):
            out[:, 2 * r + 2 - i, 2 * c + 2 - j] += x[:, r, c] @ k[i, j]
  else:
    up = np.pad(x.repeat(2, 1).repeat(2, 2), ((0, 0), (1, 1), (1, 1), (0, 0)))
    for r in range(2 * h):
      for c in range(2 * w):
        for i in range(3):
          for j in range(3):
            out[:, r, c] += up[:, r + i, c + j] @ k[i, j]
  return out[:, :2 * h, :2 * w] + np.asarray(b, np.float64)


@pytest.mark.parametrize("mode", ["transpose", "resize"])
@pytest.mark.parametrize("out_channels", [1, 3, 6])  # 1 and 3: one wide convolution; 6: four phase convolutions
def test_upsampling_by_phases_is_the_layer_to_float_rounding(mode, out_channels):
  """On a CPU ConvHead computes 'transpose' and 'resize' one phase at a time at the input's resolution: the layer's
  output against loops over pixels and taps, and its gradients (kernel, bias, input) against the same layer through
  XLA's own transposed convolution or resize-then-convolve (layers.UPSAMPLE_BY_PHASES emptied)."""
  head = layers.ConvHead(5, (10, 14, out_channels), (4,), jnp.float32, nnx.Rngs(11), upsample=mode)
  conv = head.deconvs[0]
  conv.bias.value = _rand(out_channels, seed=12)
  g = _rand(2, 5, 7, 4, seed=13)
  np.testing.assert_allclose(np.asarray(head._up(conv, g)), _brute_force_up(g, conv.kernel[...], conv.bias[...], mode),
                             rtol=1e-5, atol=1e-5)
  graphdef, params = nnx.split(conv)

  def grads():
    def loss(p, x):
      return jnp.sum(jnp.sin(head._up(nnx.merge(graphdef, p), x)))
    return jax.tree.leaves(jax.grad(loss, argnums=(0, 1))(params, g))

  phases = grads()
  saved = layers.UPSAMPLE_BY_PHASES
  layers.UPSAMPLE_BY_PHASES = frozenset()
  try:
    native = grads()
  finally:
    layers.UPSAMPLE_BY_PHASES = saved
  assert len(phases) == 3
  for a, b in zip(phases, native):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_subpixel_starts_as_nearest_resize_of_one_shared_kernel():
  """ICNR: the four sub-pixel kernels are one draw at initialisation, so the layer's output is the convolution with
  that kernel (the first `out` channels) followed by a nearest-neighbour x2 resize (jax.image.resize)."""
  head = layers.ConvHead(5, (8, 6, 2), (3,), jnp.float32, nnx.Rngs(7), upsample="subpixel")
  conv = head.deconvs[0]
  k = np.asarray(conv.kernel[...])
  assert k.shape == (3, 3, 3, 8) and np.std(k[..., :2]) > 0
  g = _rand(2, 4, 3, 3, seed=8)
  small = jax.lax.conv_general_dilated(g, k[..., :2], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  want = jax.image.resize(small, (2, 8, 6, 2), "nearest") + conv.bias[...][:2]
  np.testing.assert_allclose(np.asarray(head._up(conv, g)), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_every_variant_starts_with_the_transposed_heads_output_spread():
  """The output std of a fresh 3-layer head, over 8 initialisations and a batch of inputs, is within 1.6x of the
  transposed convolution's for 'resize' and 'subpixel' (at Flax's default initialisation they started ~6x above
  here: the spread that made 'resize' collapse on AV-digits)."""
  h = _rand(32, 16, seed=9)

  def spread(mode):
    stds = []
    for seed in range(8):
      head = layers.ConvHead(16, (32, 32, 3), (8, 16, 32), jnp.float32, nnx.Rngs(seed), upsample=mode)
      stds.append(float(jnp.std(head(h))))
    return float(np.mean(stds))

  base = spread("transpose")
  for mode in ("resize", "subpixel"):
    assert 1 / 1.6 < spread(mode) / base < 1.6, mode


def test_transpose_keeps_its_parameter_names_and_shapes():
  """A stored 'transpose' run's checkpoint holds deconvs.N.kernel of ConvTranspose shape [3, 3, in, out]."""
  head = layers.ConvHead(5, (8, 8, 3), (4, 6), jnp.float32, nnx.Rngs(0), upsample="transpose")
  assert isinstance(head.deconvs[0], nnx.ConvTranspose)
  assert [tuple(d.kernel.shape) for d in head.deconvs] == [(3, 3, 6, 4), (3, 3, 4, 3)]


def test_upsample_choice_per_modality_and_for_old_configs():
  mc = config_schema.base_config().model
  assert layers.upsample_of(mc, "face") == layers.DEFAULT_UPSAMPLE
  mc.upsample["face"] = "resize"
  assert layers.upsample_of(mc, "face") == "resize"
  assert layers.upsample_of(mc, "audio") == layers.DEFAULT_UPSAMPLE
  old = config_schema.base_config().model.to_dict()
  del old["upsample"]  # a config.json written before the key existed: its heads were transposed convolutions
  assert layers.upsample_of(ml_collections.ConfigDict(old), "face") == "transpose"
  mc.upsample["face"] = "bilinear"
  with pytest.raises(ValueError, match=r"config.model.upsample.face='bilinear'"):
    layers.upsample_of(mc, "face")


def test_override_names_any_modality_and_old_config_json_still_loads(tmp_path):
  cfg = config_lib.load("conv", ["model.upsample.audio=transpose"])
  assert layers.upsample_of(cfg.model, "audio") == "transpose"
  assert layers.upsample_of(cfg.model, "face") == cfg.model.upsample.get("face", layers.DEFAULT_UPSAMPLE)
  old = config_lib.to_dict(config_schema.base_config())
  del old["model"]["upsample"]
  path = tmp_path / "config.json"
  path.write_text(json.dumps(old))
  assert "upsample" not in config_lib.stored(path)["model"]
