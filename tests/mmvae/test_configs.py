"""Every experiment config: the tiny variant trains one step, the full variant builds (abstractly) with sane shapes."""

import functools
import math

import jax
import numpy as np
import pytest
from flax import nnx

from data_prep import audio
from mmvae import config as config_lib
from mmvae import modalities
from mmvae.train import step as step_lib
from mmvae.zoo import msvae


def input_shapes(cfg) -> dict:
  """The shapes data_prep produces for cfg.data, computed here from the spectrogram recipe."""
  d = cfg.data
  win = int(d.sample_rate * d.window_ms / 1000)
  hop = int(d.sample_rate * d.hop_ms / 1000)
  frames = 1 + (d.segment_samples - win) // hop
  pooled = {"magnitude_mean": d.n_bins, "stats": 2 * d.n_bins, "mfcc_stats": 2 * d.n_mfcc}
  audio = (pooled[d.pooling],) if d.time_average else (frames, d.n_bins)
  return {"audio": audio, "face": (d.face_size, d.face_size, 1 if d.grayscale else 3)}


def voice_face(shapes: dict) -> dict:
  """The modalities a dataset of these model shapes declares: audio a spectrogram, face one image frame."""
  return {"audio": modalities.Modality("audio", "spectrogram", shapes["audio"], "float32"),
          "face": modalities.Modality("face", "image", (1, *shapes["face"]), "uint8")}


def test_reference_frames():
  """The library's [T, F] for the conv config, against the recipe's numbers worked out by hand."""
  d = config_lib.load("conv").data
  # 16 kHz, 25 ms windows (400 samples) every 10 ms (160 samples) over 47760-sample segments, 512 bins:
  assert (d.sample_rate, d.window_ms, d.hop_ms, d.segment_samples, d.n_bins) == (16000, 25.0, 10.0, 47760, 512)
  assert not d.time_average
  frames = 1 + (47760 - 400) // 160
  assert frames == 297 and (47760 - 400) % 160 == 0  # the segment holds exactly 297 windows
  assert tuple(audio.feature_shape(d)) == (frames, 512)


CONFIGS = [f"{name}{variant}" for name in config_lib.available() for variant in ("", ":tiny")]


@pytest.mark.parametrize("spec", CONFIGS)
def test_input_shapes_helper_matches_the_library(spec):
  """The other tests here build models for `input_shapes`: it must be what data_prep produces."""
  cfg = config_lib.load(spec)
  assert input_shapes(cfg)["audio"] == tuple(audio.feature_shape(cfg.data))


# The voice-and-face configs of the msvae kind; mcvs (five modalities, its own kind) has its own test below.
MSVAE_CONFIGS = [n for n in config_lib.available() if config_lib.load(n).model.kind == "msvae"]


@pytest.mark.parametrize("name", MSVAE_CONFIGS)
def test_tiny_variant_runs_one_step(name):
  cfg = config_lib.load(f"{name}:tiny")
  shapes = input_shapes(cfg)
  model = msvae.build(cfg, voice_face(shapes), seed=0, num_classes=3)
  tx = step_lib.make_optimizer(cfg.train)
  graphdef, state = step_lib.init_state(model, tx)
  rng = np.random.default_rng(0)
  b = 2
  batch = {m: rng.uniform(size=(b,) + shapes[m]).astype(np.float32) for m in ("audio", "face")}
  batch["label"] = np.array([0, 2], np.int32)
  step = jax.jit(functools.partial(step_lib.train_step, graphdef, tx, cfg))
  new_state, metrics = step(state, batch, np.arange(b, dtype=np.int32))
  assert int(new_state["step"]) == 1
  assert all(np.isfinite(float(v)) for v in metrics.values())


@pytest.mark.parametrize("name", MSVAE_CONFIGS)
def test_full_variant_builds_abstractly(name):
  cfg = config_lib.load(name)
  shapes = input_shapes(cfg)
  abstract = nnx.eval_shape(lambda: msvae.build(cfg, voice_face(shapes), seed=0, num_classes=3))
  params = nnx.state(abstract, nnx.Param)
  sizes = {".".join(map(str, p)): v.shape for p, v in params.flat_state()}
  z = cfg.model.latent_dim
  for m in ("audio", "face"):
    head = f"encoders.{m}.head.kernel"
    assert sizes[head][-1] == 2 * z, head  # mean and log-variance
  assert sizes["decoder.trunk.0.kernel"][0] == z
  assert (sizes.get("identity_head.kernel") == (z, 3)) == (cfg.loss.identity_weight > 0), name
  total = sum(math.prod(s) for s in sizes.values())
  assert 10_000 < total < 30_000_000, (name, total)


@pytest.mark.parametrize("variant", ["", ":tiny"])
def test_mcvs_runs_one_step_of_every_stage_on_the_mmdigits_shapes(variant):
  from data_prep import digit_text
  from mmvae import zoo
  from mmvae.zoo import mcvs
  cfg = config_lib.load(f"mcvs{variant}")
  d = cfg.data
  specs = {"image": {"kind": "image", "shape": [1, d.face_size, d.face_size, 1], "dtype": "uint8"},
           "text": {"kind": "tokens", "shape": [digit_text.MAX_TOKENS], "dtype": "int32",
                    "vocab": list(digit_text.VOCAB)},
           "audio": {"kind": "spectrogram", "shape": list(audio.feature_shape(d)), "dtype": "float32"},
           "video": {"kind": "video", "shape": [d.video_frames, d.face_size, d.face_size, 1], "dtype": "uint8"},
           "pointcloud": {"kind": "points", "shape": [d.points, 3], "dtype": "float32"}}
  assert list(specs) == list(d.modalities) and [len(s) for s in mcvs.stages(cfg, list(specs))] == [2, 1, 1, 1]
  rng = np.random.default_rng(0)
  b = 4
  batch = {"image": rng.uniform(size=(b, d.face_size, d.face_size, 1)).astype(np.float32),
           "text": rng.integers(0, len(digit_text.VOCAB), (b, digit_text.MAX_TOKENS)).astype(np.int32),
           "audio": rng.normal(size=(b, *audio.feature_shape(d))).astype(np.float32),
           "video": rng.uniform(size=(b, d.video_frames, d.face_size, d.face_size, 1)).astype(np.float32),
           "pointcloud": rng.normal(size=(b, d.points, 3)).astype(np.float32), "label": np.array([0, 1, 0, 1], np.int32)}
  for stage, new in enumerate(mcvs.stages(cfg, list(specs)), start=1):
    cfg.model.stage = stage
    space = [m for s in mcvs.stages(cfg, list(specs))[:stage] for m in s]
    model = zoo.of(cfg).build(cfg, {m: specs[m] for m in space}, seed=0, num_classes=10)
    assert list(model.specs) == space and model.new() == new
    if variant:
      tx = step_lib.make_optimizer(cfg.train)
      graphdef, state = step_lib.init_state(model, tx)
      new_state, metrics = jax.jit(functools.partial(step_lib.train_step, graphdef, tx, cfg))(
          state, batch, np.arange(b, dtype=np.int32))
      assert int(new_state["step"]) == 1 and all(np.isfinite(float(v)) for v in metrics.values())
    else:  # the full model: the paper's 512-wide space and branches
      assert model.branches["image"].fc2.kernel.shape == (512, 512) and model.blocks["text__image"].w_e.kernel.shape == (512, 512)
