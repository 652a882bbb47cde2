"""Augmented audio views (data.audio_views): the augmentations, their determinism, prep's [V, D] storage, and
that training draws views while evaluation encodes view 0 only."""

import collections
import json

import numpy as np
import pytest

from data_prep import audio, example, prepare
from test_voxceleb1_prep import make_small_root  # noqa: E402  (this folder is on the path)
from mmvae import config as config_lib
from mmvae import data, inference, modalities

SR = 16000


def _cfg(**changes):
  cfg = config_lib.load("voxceleb1")
  for k, v in changes.items():
    cfg.data[k] = v
  return cfg


def _power(x):
  return float(np.mean(np.asarray(x, np.float64) ** 2))


def _band_db(x, y, lo, hi):
  """10 log10 of y's energy over x's between lo and hi Hz (FFT of the Hann-windowed signals: no edge leakage)."""
  f = np.fft.rfftfreq(len(x), 1 / SR)
  band, window = (f >= lo) & (f < hi), np.hanning(len(x))
  ex, ey = np.abs(np.fft.rfft(x * window)) ** 2, np.abs(np.fft.rfft(y * window)) ** 2
  return 10 * np.log10(ey[band].sum() / ex[band].sum())


def _speech_like(seconds=2.0, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * SR)) / SR
  return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
          + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


# --- the augmentations ---


@pytest.mark.parametrize("colour", audio.NOISE_COLOURS)
@pytest.mark.parametrize("snr", [0.0, 5.0, 17.3])
def test_noise_at_snr_measures_that_snr(snr, colour):
  x = _speech_like()
  y = audio.add_noise(x, snr, np.random.default_rng(1), colour)
  assert y.shape == x.shape and y.dtype == np.float32
  noise = y.astype(np.float64) - x.astype(np.float64)
  measured = 10 * np.log10(_power(x) / _power(noise))
  assert abs(measured - snr) < 0.5, measured


def test_pink_noise_has_more_power_at_low_frequencies():
  x = np.zeros(SR * 2, np.float32)
  x[::100] = 1.0  # flat spectrum, so the noise's own spectrum shows
  noise = audio.add_noise(x, 0.0, np.random.default_rng(2), "pink") - x
  white = audio.add_noise(x, 0.0, np.random.default_rng(2), "white") - x
  f = np.fft.rfftfreq(len(x), 1 / SR)

  def low_over_high(n):  # 1/f power: 100-200 Hz over 3200-6400 Hz is 32 for pink noise, 1 for white
    p = np.abs(np.fft.rfft(n)) ** 2
    return p[(f > 100) & (f < 200)].mean() / p[(f > 3200) & (f < 6400)].mean()
  assert 20 < low_over_high(noise) < 50 and 0.7 < low_over_high(white) < 1.4


def test_telephone_band_removes_energy_outside_300_to_3400_hz():
  x = np.random.default_rng(3).standard_normal(SR * 4).astype(np.float32)
  y = audio.telephone(x, SR)
  assert y.shape == x.shape and y.dtype == np.float32
  assert _band_db(x, y, 0, 300) < -15 and _band_db(x, y, 3400, SR / 2) < -15
  assert _band_db(x, y, 0, 200) < -40 and _band_db(x, y, 4000, SR / 2) < -35
  assert abs(_band_db(x, y, 500, 3000)) < 0.5  # the band itself passes


def test_telephone_refuses_a_rate_without_the_band():
  with pytest.raises(ValueError, match="sample_rate"):
    audio.telephone(np.zeros(1000, np.float32), 6000)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_resamples_length_and_pitch_by_the_factor(factor):
  t = np.arange(SR * 2) / SR
  x = np.sin(2 * np.pi * 500 * t).astype(np.float32)
  y = audio.speed(x, factor, SR)
  assert y.dtype == np.float32
  assert abs(len(y) - len(x) / factor) <= 1
  f = np.fft.rfftfreq(len(y), 1 / SR)
  peak = f[np.argmax(np.abs(np.fft.rfft(y * np.hanning(len(y)))))]
  assert abs(peak - 500 * factor) < 2, peak
  assert np.array_equal(audio.speed(x, 1.0, SR), x)


def test_reverb_of_an_impulse_is_the_rir_and_keeps_the_length():
  rir = audio.room_impulse(0.3, SR, np.random.default_rng(4))
  assert rir.dtype == np.float32 and len(rir) == int(0.3 * SR) and rir[0] == 1.0
  impulse = np.zeros(SR, np.float32)
  impulse[0] = 1
  y = audio.reverb(impulse, rir)
  assert y.shape == impulse.shape and y.dtype == np.float32
  np.testing.assert_allclose(y[:len(rir)], rir, atol=1e-6)
  assert np.abs(y[len(rir):]).max() < 1e-6
  x = np.random.default_rng(5).standard_normal(800).astype(np.float32)
  short = rir[:300]
  brute = np.array([sum(x[n - k] * short[k] for k in range(min(n + 1, len(short)))) for n in range(len(x))])
  np.testing.assert_allclose(audio.reverb(x, short), brute, atol=1e-4)


def test_room_impulse_decays_60_db_in_rt60():
  rt60 = 0.5
  rir = audio.room_impulse(rt60, SR, np.random.default_rng(6)).astype(np.float64)
  window = int(0.05 * SR)

  def level(t):  # the tail's RMS in dB around time t
    i = int(t * SR)
    return 10 * np.log10(np.mean(rir[max(i - window, 1):i + window] ** 2))
  drop = level(0.1) - level(0.4)  # 0.3 s of a 60 dB per 0.5 s decay: 36 dB
  assert abs(drop - 36.0) < 4.0, drop


def test_views_are_deterministic_in_seed_id_and_view():
  cfg = _cfg(audio_views=3).data
  x = _speech_like(3.0)
  a = audio.augment_wave(x, cfg, audio.view_rng(0, "id1/v/00001.wav", 1))
  again = audio.augment_wave(x, cfg, audio.view_rng(0, "id1/v/00001.wav", 1))
  assert np.array_equal(a, again) and a.dtype == np.float32
  for other in ((1, "id1/v/00001.wav", 1), (0, "id1/v/00002.wav", 1), (0, "id1/v/00001.wav", 2)):
    b = audio.augment_wave(x, cfg, audio.view_rng(*other))
    assert len(b) != len(a) or not np.array_equal(a, b), other
  # the views of an example: the same whatever was computed before, in whichever order
  first = audio.utterance_views(x, cfg, True, np.random.default_rng(0), "id1/v/00001.wav")
  audio.utterance_views(_speech_like(2.0, 1), cfg, True, np.random.default_rng(3), "other")
  second = audio.utterance_views(x, cfg, True, np.random.default_rng(0), "id1/v/00001.wav")
  assert first.shape == (3, 40) and np.array_equal(first, second)
  np.testing.assert_array_equal(first[0], audio.utterance_features(x, cfg, True, np.random.default_rng(0)))
  held = audio.utterance_views(x, cfg, False, np.random.default_rng(0), "id1/v/00001.wav")
  assert all(np.array_equal(held[v], held[0]) for v in range(3))


def test_each_augmentation_alone_and_all_off_keep_the_length():
  x = _speech_like(1.0)
  off = dict(audio_noise_snr="", audio_telephone=0.0, audio_reverb=0.0, audio_speed="")
  assert np.array_equal(audio.augment_wave(x, _cfg(audio_views=2, **off).data, audio.view_rng(0, "a", 1)), x)
  for key, value in (("audio_noise_snr", "10,10"), ("audio_telephone", 1.0), ("audio_reverb", 1.0)):
    y = audio.augment_wave(x, _cfg(audio_views=2, **dict(off, **{key: value})).data, audio.view_rng(0, "a", 1))
    assert y.shape == x.shape and y.dtype == np.float32 and not np.array_equal(x, y), key
  y = audio.augment_wave(x, _cfg(audio_views=2, **dict(off, audio_speed="1.1,1.1")).data, audio.view_rng(0, "a", 1))
  assert abs(len(y) - len(x) / 1.1) <= 1


@pytest.mark.parametrize("changes, match", [
    (dict(audio_views=2, time_average=False, short_clips="pad"), "audio_views"),
    (dict(audio_views=0), "audio_views"),
    (dict(audio_views=2, audio_noise_snr="20,5"), "audio_noise_snr"),
    (dict(audio_views=2, audio_noise_snr="loud"), "audio_noise_snr"),
    (dict(audio_views=2, audio_speed="0,1.1"), "audio_speed"),
    (dict(audio_views=2, audio_speed="0.9,1.1,1.2"), "audio_speed"),
    (dict(audio_views=2, audio_telephone=1.5), "audio_telephone"),
    (dict(audio_views=2, audio_reverb=-0.1), "audio_reverb"),
])
def test_bad_view_settings_are_refused_in_one_line(changes, match):
  with pytest.raises(ValueError, match=match) as e:
    example.checked_config(_cfg(**changes))
  assert "\n" not in str(e.value)


def test_one_view_ignores_the_augmentation_keys_and_leaves_them_out_of_the_manifest():
  cfg = _cfg(audio_noise_snr="nonsense")  # not read with one view
  assert example.checked_config(cfg)[1] == (40,)
  assert not set(example.VIEW_KEYS) & set(example.data_config(cfg.data))
  assert example.checked_config(_cfg(audio_views=3))[1] == (3, 40)
  assert set(example.VIEW_KEYS) <= set(example.data_config(_cfg(audio_views=3).data))


# --- the model side ---


def _views_modality(v=3, d=4):
  return modalities.from_dict({"name": "audio", "kind": "vector", "shape": [v, d], "dtype": "float32", "views": True})


def test_a_vector_with_views_is_one_view_to_the_model():
  m = _views_modality()
  assert m.model_shape == (4,) and m.frames == 3 and m.frames_are_views
  plain = modalities.from_dict({"name": "x", "kind": "vector", "shape": [4], "dtype": "float32"})
  assert plain.model_shape == (4,) and plain.frames == 1 and not plain.frames_are_views
  stored = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
  np.testing.assert_array_equal(m.kind_module.inputs(m, stored, np.array([2, 1])), stored[[0, 1], [2, 1]])
  np.testing.assert_array_equal(m.kind_module.inputs(m, stored), stored[:, 0])


def test_encode_split_takes_view_0_of_views_and_averages_real_frames():
  stored = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)

  def encode(_):
    return lambda x: (np.asarray(x) * 2.0, np.asarray(x) * 0.0 + np.asarray(x).sum(1, keepdims=True))
  views = inference.encode_split(encode, {"audio": stored}, {"audio": _views_modality()})
  np.testing.assert_array_equal(views["audio_mu"], 2.0 * stored[:, 0])
  np.testing.assert_array_equal(views["audio_logvar"], np.broadcast_to(stored[:, 0].sum(1, keepdims=True), (5, 4)))
  frames = modalities.from_dict({"name": "face", "kind": "image", "shape": [3, 2, 2, 1], "dtype": "float32"})
  pixels = stored.reshape(5, 3, 2, 2, 1)
  averaged = inference.encode_split(lambda _: lambda x: (np.asarray(x).reshape(len(x), -1),) * 2,
                                    {"face": pixels}, {"face": frames})
  np.testing.assert_allclose(averaged["face_mu"], stored.mean(1), rtol=1e-6)


# --- prep ---

SUBSET = {"id10001": {"1zcIwhmdeo4": 2, "Y8hIVOBuels": 1, "utrA-v8pPm4": 1},
          "id10118": {"03ZaSobFZTs": 2, "UsHbVNFrjVQ": 1, "bZyPBCVCYxw": 1}}


def _check_views(plain_dir, views_dir, v):
  """View 0 is the plain prep's audio bit for bit; train views differ from it, validation and test copy it."""
  plain, views = data.Dataset(plain_dir), data.Dataset(views_dir)
  entry = views.manifest["modalities"][0]
  assert entry == {"name": "audio", "kind": "vector", "shape": [v, 40], "dtype": "float32", "views": True}
  assert plain.manifest["modalities"][0]["kind"] == "spectrogram"
  assert views.manifest["audio_normalisation"] == plain.manifest["audio_normalisation"]
  for split in plain.splits:
    a, b = plain.arrays(split), views.arrays(split)
    assert b["audio"].shape == (len(a["audio"]), v, 40) and b["audio"].dtype == np.float32
    assert list(b["id"]) == list(a["id"])
    np.testing.assert_array_equal(b["audio"][:, 0], a["audio"])
    for k in range(1, v):
      same = np.all(b["audio"][:, k] == b["audio"][:, 0], axis=1)
      assert (not same.any()) if split == "train" else same.all(), (split, k)


@pytest.fixture(scope="module")
def small_views(shared_data, tmp_path_factory):
  """8 utterances of the mini set prepared as they are and with 2 views (one worker each): (folder, manifests)."""
  out = tmp_path_factory.mktemp("small_views")
  root = make_small_root(shared_data / "voxceleb1-mini", out / "root", frames=1, subset=SUBSET)
  return out, {name: prepare.prepare_voxceleb1(root, out / name, config=_cfg(**changes), workers=1)
               for name, changes in (("plain", {}), ("one", {"audio_views": 2}))}


def test_prep_stores_views_and_training_draws_them(small_views):
  out, manifests = small_views
  assert manifests["one"]["fingerprint"] != manifests["plain"]["fingerprint"]
  assert "audio_views" not in manifests["plain"]["data_config"] and manifests["one"]["data_config"]["audio_views"] == 2
  _check_views(out / "plain", out / "one", 2)
  # training draws views: every batch row is one of its example's stored views, and not always view 0
  ds = data.Dataset(out / "one")
  stored = dict(zip(ds.arrays("train")["id"], ds.arrays("train")["audio"]))
  drawn = collections.Counter()
  for step in range(6):
    batch = data.batch_at(ds, "train", 4, seed=0, step=step)
    for row in batch["audio"]:
      hits = [(i, k) for i, views in stored.items() for k in range(2) if np.array_equal(views[k], row)]
      assert len(hits) == 1
      drawn[hits[0][1]] += 1
  assert drawn[0] and drawn[1]


def test_prep_with_views_has_the_same_fingerprint_on_two_workers(small_views, tmp_path):
  out, manifests = small_views
  two = prepare.prepare_voxceleb1(out / "root", tmp_path / "two", config=_cfg(audio_views=2), workers=2)
  assert two["fingerprint"] == manifests["one"]["fingerprint"]


@pytest.fixture(scope="module")
def mini_views(shared_data, tmp_path_factory):
  """The real mini set prepared with voxceleb1 as it is and with 3 views (one worker each)."""
  out = tmp_path_factory.mktemp("vox_views")
  mini = shared_data / "voxceleb1-mini"
  prepare.prepare_voxceleb1(mini, out / "plain", config=_cfg(), workers=1)
  prepare.prepare_voxceleb1(mini, out / "views", config=_cfg(audio_views=3), workers=1)
  return out


def test_mini_prep_with_three_views(mini_views):
  _check_views(mini_views / "plain", mini_views / "views", 3)


def test_training_on_views_runs_and_analysis_encodes_view_0(mini_views, tmp_path):
  import jax.numpy as jnp
  from mmvae.analysis import report
  from mmvae.train import checkpoints, entry
  cfg = config_lib.load("voxceleb1:tiny")
  cfg.data.audio_views = 3
  workdir = tmp_path / "run"
  entry.train(cfg, mini_views / "views", workdir)
  report.analyze(workdir, split="train")  # train: the split whose views differ
  with np.load(workdir / "report" / "latents.npz") as f:
    latents = {k: f[k] for k in f.files}
  model = checkpoints.load_run(workdir, which="best")[0]
  stored = data.Dataset(mini_views / "views").arrays("train")["audio"]
  order = np.argsort(data.Dataset(mini_views / "views").arrays("train")["id"])
  assert np.array_equal(order, np.arange(len(order)))  # latents follow the arrays' (id) order
  view0 = np.asarray(model.encode("audio", jnp.asarray(stored[:, 0]))[0])
  np.testing.assert_allclose(latents["audio_mu"], view0, rtol=1e-4, atol=1e-5)
  mean_of_views = np.mean([np.asarray(model.encode("audio", jnp.asarray(stored[:, k]))[0]) for k in range(3)], 0)
  assert not np.allclose(latents["audio_mu"], mean_of_views, rtol=1e-4, atol=1e-5)
  assert json.loads((workdir / "report" / "metrics.json").read_text())  # the analysis completed
