"""Train-time face augmentations of the image kind (train.face_color_jitter, face_crop_scale, face_blur): checked
against NumPy / SciPy computations written here, keyed per example, off by default."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from mmvae import config as config_lib
from mmvae.config_schema import train_section
from mmvae.modalities import image
from mmvae.train import step as step_lib
from mmvae.train import trainer

ALL_ON = {"face_color_jitter": 0.4, "face_crop_scale": 0.6, "face_blur": 1.5}
EACH = [{"face_color_jitter": 0.4}, {"face_crop_scale": 0.6}, {"face_blur": 1.5}, ALL_ON]


def _cfg(**keys):
  cfg = train_section()  # the schema's defaults: every augmentation off
  cfg.update(keys)
  return cfg


def _keys(n, seed=0):
  return jax.vmap(lambda p: jax.random.fold_in(jax.random.key(seed), p))(jnp.arange(n))


def _faces(n=16, s=10, c=3, seed=0):
  return np.random.default_rng(seed).uniform(size=(n, s, s, c)).astype(np.float32)


def _flips(n):
  return np.arange(n) % 3 == 0


_JITTED = jax.jit(image.augment, static_argnums=2)


def _jit_augment(x, flip_B, cfg, keys_B):
  """The hook under jit, as the train step runs it (far faster than op by op; compiled once per setting)."""
  return _JITTED(x, flip_B, ml_collections.FrozenConfigDict(cfg), keys_B)


def test_every_key_off_returns_the_input_and_flip_is_unchanged():
  x, flip = _faces(), _flips(16)
  cfg = _cfg()
  assert cfg.face_color_jitter == 0.0 and cfg.face_crop_scale == 1.0 and cfg.face_blur == 0.0
  assert image.augment(x, flip, cfg, _keys(16)) is x
  out = np.asarray(image.augment(x, flip, _cfg(face_flip=True), _keys(16)))
  want = np.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
  np.testing.assert_array_equal(out, want)
  # An old config without the new keys: the same.
  old = ml_collections.ConfigDict({"face_flip": True})
  np.testing.assert_array_equal(np.asarray(image.augment(x, flip, old, _keys(16))), want)


@pytest.mark.parametrize("keys,dtype", [(k, jnp.float32) for k in EACH] + [(ALL_ON, jnp.bfloat16)],
                         ids=lambda v: "+".join(v) if isinstance(v, dict) else jnp.dtype(v).name)
def test_shape_dtype_range_and_a_function_of_the_keys(keys, dtype):
  x = jnp.asarray(_faces(seed=1), dtype)
  x = x.at[0].set(1.0).at[1].set(0.0)  # extremes stay in range
  cfg = _cfg(face_flip=True, **keys)
  out = _jit_augment(x, _flips(16), cfg, _keys(16))
  assert out.shape == x.shape and out.dtype == x.dtype
  o = np.asarray(out, np.float32)
  assert o.min() >= 0.0 and o.max() <= 1.0
  assert not np.array_equal(o, np.asarray(_jit_augment(x, _flips(16), _cfg(face_flip=True), _keys(16)), np.float32))
  np.testing.assert_array_equal(o, np.asarray(_jit_augment(x, _flips(16), cfg, _keys(16)), np.float32))
  other = np.asarray(_jit_augment(x, _flips(16), cfg, _keys(16, seed=1)), np.float32)
  assert all(not np.array_equal(a, b) for a, b in zip(o[2:], other[2:]))  # each example its own draw
  eager = np.asarray(image.augment(x, _flips(16), cfg, _keys(16)), np.float32)  # op by op, as without jit
  np.testing.assert_allclose(eager, o, atol=1e-5 if dtype == jnp.float32 else 1e-2)


def _np_color(x, b, c, s):
  """torchvision's adjust_brightness, adjust_contrast, adjust_saturation on float images, in NumPy."""
  luma = lambda y: (y @ np.array([0.299, 0.587, 0.114]))[..., None] if y.shape[-1] == 3 else y.mean(-1, keepdims=True)
  x = np.clip(x.astype(np.float64) * b, 0, 1)
  x = np.clip(c * x + (1 - c) * luma(x).mean(), 0, 1)
  return np.clip(s * x + (1 - s) * luma(x), 0, 1)


@pytest.mark.parametrize("factors", [(1.3, 0.6, 1.5), (0.7, 1.4, 0.2), (1.0, 1.0, 1.0)])
@pytest.mark.parametrize("channels", [3, 1])
def test_color_adjust_with_fixed_factors_matches_numpy(factors, channels):
  x = _faces(n=1, c=channels, seed=2)[0]
  out = np.asarray(image.color_adjust(jnp.asarray(x), *factors))
  np.testing.assert_allclose(out, _np_color(x, *factors), atol=1e-6)
  if factors == (1.0, 1.0, 1.0):
    np.testing.assert_allclose(out, x, atol=1e-6)


def test_color_jitter_brightness_factors_span_their_range():
  # A constant one-channel image: contrast and saturation change nothing, so out / in is the brightness factor.
  x = np.full((256, 4, 4, 1), 0.5, np.float32)
  out = np.asarray(_jit_augment(x, _flips(256), _cfg(face_color_jitter=0.3), _keys(256)))
  b = out[:, 0, 0, 0] / 0.5
  np.testing.assert_allclose(out, np.broadcast_to(out[:, :1, :1], out.shape), atol=1e-6)
  assert b.min() >= 0.7 - 1e-6 and b.max() <= 1.3 + 1e-6
  assert b.min() < 0.75 and b.max() > 1.25 and len(np.unique(b)) > 200


def _np_bilinear(x, rows, cols):
  """x [H, W, C] sampled at continuous pixel-centre coordinates (rows [H'], cols [W']), edges clamped."""
  def taps(coord, n):
    lo = np.floor(coord).astype(int)
    frac = coord - lo
    return np.clip(lo, 0, n - 1), np.clip(lo + 1, 0, n - 1), frac
  r0, r1, fr = taps(rows, x.shape[0])
  c0, c1, fc = taps(cols, x.shape[1])
  x = x.astype(np.float64)
  top = x[r0][:, c0] * (1 - fc)[None, :, None] + x[r0][:, c1] * fc[None, :, None]
  bottom = x[r1][:, c0] * (1 - fc)[None, :, None] + x[r1][:, c1] * fc[None, :, None]
  return top * (1 - fr)[:, None, None] + bottom * fr[:, None, None]


def test_crop_at_full_scale_is_the_identity_and_a_window_matches_numpy_bilinear():
  x = _faces(n=1, s=12, seed=3)[0]
  np.testing.assert_allclose(np.asarray(image.crop_resize(jnp.asarray(x), 1.0, 0.0, 0.0)), x, atol=1e-6)
  side, top, left = 0.5, 0.25, 0.1
  out = np.asarray(image.crop_resize(jnp.asarray(x), side, top, left))
  # Output pixel i's centre (i + 0.5) sits at top * H + (i + 0.5) * side in the image; pixel centres are at j + 0.5.
  i = np.arange(12) + 0.5
  want = _np_bilinear(x, top * 12 + i * side - 0.5, left * 12 + i * side - 0.5)
  np.testing.assert_allclose(out, want, atol=1e-5)


def test_crop_draws_a_square_window_of_area_in_range_inside_the_image():
  # A ramp along the width and one along the height: each output's slopes are the window's side, its offsets the corner.
  s, n, scale = 16, 128, 0.5
  ramp = (np.arange(s) + 0.5) / s
  x = np.stack([np.broadcast_to(ramp[None, :], (s, s)), np.broadcast_to(ramp[:, None], (s, s)),
                np.zeros((s, s))], -1).astype(np.float32)[None].repeat(n, 0)
  out = np.asarray(_jit_augment(x, _flips(n), _cfg(face_crop_scale=scale), _keys(n)), np.float64)
  # Columns and rows 1 .. s-2 only: the outermost samples may fall up to half a pixel off the image.
  width_slope = (out[:, 5, s - 2, 0] - out[:, 5, 1, 0]) / ((s - 3) / s)
  height_slope = (out[:, s - 2, 5, 1] - out[:, 1, 5, 1]) / ((s - 3) / s)
  np.testing.assert_allclose(width_slope, height_slope, atol=1e-4)  # square
  side = width_slope
  assert side.min() >= np.sqrt(scale) - 1e-4 and side.max() <= 1 + 1e-4
  area = side ** 2
  assert area.min() < scale + 0.05 and area.max() > 0.95
  left = out[:, 5, 1, 0] - 1.5 / s * side  # value at output column 1's centre = left + 1.5 / s * side
  top = out[:, 1, 5, 1] - 1.5 / s * side
  for corner in (left, top):
    assert corner.min() >= -1e-4 and np.all(corner <= 1 - side + 1e-4)


def test_blur_of_a_constant_is_the_constant_and_matches_scipy_for_a_fixed_sigma():
  const = np.full((6, 9, 9, 3), 0.37, np.float32)
  const[3:] = 0.81
  out = np.asarray(_jit_augment(const, _flips(6), _cfg(face_blur=2.0), _keys(6)))
  np.testing.assert_allclose(out, const, atol=1e-6)
  x = _faces(n=1, s=14, seed=4)[0]
  for sigma in (1.3, 0.6):
    radius = image.blur_radius(2.0, 14)
    assert radius == 8
    got = np.asarray(jax.jit(image.gaussian_blur, static_argnums=2)(jnp.asarray(x), sigma, radius))
    # scipy's 'reflect' is numpy's 'symmetric' (d c b a | a b c d); truncated at the same radius.
    want = ndimage.gaussian_filter(x.astype(np.float64), sigma=(sigma, sigma, 0), mode="reflect",
                                   radius=(radius, radius, 0))
    np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(image.gaussian_blur(jnp.asarray(x), 0.0, 4)), x, atol=1e-7)


def test_blur_sigmas_are_drawn_in_range():
  # The blur of a centred point is the kernel; its spread is the drawn sigma.
  n, s, max_sigma = 128, 21, 2.0
  x = np.zeros((n, s, s, 1), np.float32)
  x[:, 10, 10] = 1.0
  out = np.asarray(_jit_augment(x, _flips(n), _cfg(face_blur=max_sigma), _keys(n)), np.float64)[..., 0]
  d = np.arange(s) - 10
  rows = out.sum(2)
  sd = np.sqrt((rows * d[None] ** 2).sum(1) / rows.sum(1))
  # A sampled Gaussian's sd is sigma for sigma >~ 0.7 (below, the centre tap holds most of the mass).
  assert sd.max() <= max_sigma + 0.01 and sd.max() > 1.8 and sd.min() < 0.3
  assert np.mean(sd > 1.0) == pytest.approx(0.5, abs=0.15)  # uniform on [0, 2]: half above 1


def test_augmentation_through_the_step_depends_on_global_position_not_the_shard():
  face = _faces(n=8, s=8, seed=5)
  from mmvae import modalities
  specs = {"face": modalities.Modality("face", "image", (1, 8, 8, 3), "uint8")}
  cfg = _cfg(face_flip=True, **ALL_ON)
  pos = np.arange(8, dtype=np.int32)
  run = jax.jit(lambda f, step, p: step_lib.augment({"face": f}, 0, step, p, cfg, specs)["face"])
  whole = np.asarray(run(face, 3, pos))
  np.testing.assert_array_equal(np.asarray(run(face[4:], 3, pos[4:])), whole[4:])
  assert not np.array_equal(np.asarray(run(face, 4, pos)), whole)


@pytest.mark.parametrize("key,value", [("face_color_jitter", -0.1), ("face_color_jitter", 1.5),
                                       ("face_crop_scale", 0.0), ("face_crop_scale", 1.2), ("face_blur", -1.0),
                                       ("face_blur", float("inf")), ("face_blur", float("nan"))])
def test_out_of_range_settings_are_one_line_errors_naming_the_key(key, value):
  with pytest.raises(ValueError, match=f"config.train.{key}=") as err:
    step_lib.check_augment(_cfg(**{key: value}))
  assert "\n" not in str(err.value)
  step_lib.check_augment(_cfg(**ALL_ON))
  step_lib.check_augment(ml_collections.ConfigDict({"face_flip": True}))  # an old config: all off
  cfg = config_lib.load("reference:tiny")
  cfg.train[key] = value
  with pytest.raises(ValueError, match=f"config.train.{key}="):
    trainer.check_config(cfg)
