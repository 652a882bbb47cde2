"""Audio pipeline vs an independent per-frame loop, real WAV files and bad-input handling."""

import math

import ml_collections
import numpy as np
import pytest
import soundfile

from data_prep import audio
from experiments.configs.common import base_config

SEG = 47760


def _cfg(**kw):
  c = base_config().data
  c.update(kw)
  return c


def _loop_highpass(seg, alpha=0.99):
  """Mean removal, then the DC-removal recursion y[n] = x[n] - x[n-1] + alpha y[n-1] sample by sample."""
  x = np.asarray(seg, np.float64)
  x = x - x.mean()
  y = np.zeros_like(x)
  px = py = 0.0
  for n in range(x.shape[0]):
    py = x[n] - px + alpha * py
    px = x[n]
    y[n] = py
  return y


def _loop_spectrogram(seg, alpha=0.99, noise=None, log=False):
  """The recipe written plainly: explicit recursion, per-frame window and complex FFT."""
  y = _loop_highpass(seg, alpha)
  if noise is not None:
    y = y + noise
  win = np.array([0.54 - 0.46 * math.cos(2 * math.pi * n / 399) for n in range(400)])
  rows = []
  start = 0
  while start + 400 <= y.shape[0]:
    rows.append(np.abs(np.fft.fft(y[start:start + 400] * win, 1024))[:512])
    start += 160
  spec = np.array(rows)
  return np.log1p(spec) if log else spec


def _write(path, data, rate, subtype="PCM_16"):
  soundfile.write(str(path), data, rate, subtype=subtype)
  return path


def _speechlike(n, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(n) / 16000
  return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
          + 0.05 * rng.standard_normal(n)).astype(np.float32) + 0.02  # with a DC offset


@pytest.mark.parametrize("magnitude", ["linear", "log"])
def test_spectrogram_matches_loop_reference(magnitude):
  seg = _speechlike(SEG)
  spec = audio.spectrogram(seg, _cfg(dither=0.0, magnitude=magnitude), None)
  ref = _loop_spectrogram(seg, log=magnitude == "log")
  assert spec.shape == (297, 512) and spec.dtype == np.float32
  np.testing.assert_allclose(spec, ref, rtol=1e-3, atol=1e-4 * ref.max())


def test_seeded_dither_matches_reference_and_is_reproducible():
  seg = _speechlike(SEG)
  cfg = _cfg(dither=2e4)  # large enough (amplitude ~1e-2) to be visible in the test
  spec = audio.spectrogram(seg, cfg, np.random.default_rng(7))
  rng = np.random.default_rng(7)
  d = (rng.random(SEG, dtype=np.float32) + rng.random(SEG, dtype=np.float32) - 1).astype(np.float64)
  ref = _loop_spectrogram(seg, noise=2e4 * 1e-6 * d.std() * d)
  np.testing.assert_allclose(spec, ref, rtol=1e-3, atol=1e-4 * ref.max())
  assert not np.allclose(spec, _loop_spectrogram(seg), rtol=1e-3, atol=1e-4 * ref.max())
  np.testing.assert_array_equal(spec, audio.spectrogram(seg, cfg, np.random.default_rng(7)))
  assert not np.array_equal(spec, audio.spectrogram(seg, cfg, np.random.default_rng(8)))
  # The reference strength (dither=1) is tiny but still seeded.
  a = audio.spectrogram(seg, _cfg(), np.random.default_rng(1))
  assert np.array_equal(a, audio.spectrogram(seg, _cfg(), np.random.default_rng(1)))
  assert not np.array_equal(a, audio.spectrogram(seg, _cfg(), np.random.default_rng(2)))


def test_normalise_per_bin_against_loop():
  spec = np.random.default_rng(0).gamma(2.0, 3.0, size=(50, 6)).astype(np.float32)
  spec[:, 3] = 5.0  # a constant bin must not divide by zero
  out = audio.normalise_per_bin(spec)
  for f in range(6):
    col = spec[:, f].astype(np.float64)
    sd = max(col.std(), 1e-5)
    np.testing.assert_allclose(out[:, f], (col - col.mean()) / sd, atol=1e-5)
  assert np.allclose(out.mean(0), 0, atol=1e-5)
  assert np.allclose(np.delete(out.std(0), 3), 1, atol=1e-4)


def test_utterance_features_real_path(tmp_path):
  wave = _speechlike(60000, seed=3)
  path = _write(tmp_path / "u.wav", wave, 16000)
  loaded = soundfile.read(str(path), dtype="float32")[0]
  start = (60000 - SEG) // 2
  ref = _loop_spectrogram(loaded[start:start + SEG])
  avg = audio.utterance_features(path, _cfg(dither=0.0, pooling="magnitude_mean"), train=False, rng=None)
  assert avg.shape == (512,) == audio.feature_shape(_cfg(pooling="magnitude_mean"))
  assert np.abs(avg).max() > 0
  np.testing.assert_allclose(avg, ref.mean(0), rtol=1e-3, atol=1e-4 * ref.max())
  # 'stats': log magnitude of the unit-RMS filtered segment (|FFT| is linear in the scale), then per-bin
  # mean over time minus its overall mean, and per-bin std over time.
  stats_feats = audio.utterance_features(path, _cfg(dither=0.0, pooling="stats"), train=False, rng=None)
  assert stats_feats.shape == (1024,) == audio.feature_shape(_cfg(pooling="stats"))
  rms = np.sqrt(np.mean(_loop_highpass(loaded[start:start + SEG])**2))
  logmag = np.log(ref / rms + audio.LOG_FLOOR)
  mean_f = logmag.mean(axis=0)
  np.testing.assert_allclose(stats_feats, np.r_[mean_f - mean_f.mean(), logmag.std(axis=0)], atol=2e-3)
  full = audio.utterance_features(path, _cfg(dither=0.0, time_average=False), False, None)
  assert full.shape == (297, 512) == audio.feature_shape(_cfg(time_average=False))
  norm = (ref - ref.mean(0)) / np.maximum(ref.std(0), 1e-5)
  np.testing.assert_allclose(full, norm, atol=2e-3)
  # Train crops come from the seeded generator: same seed, same crop.
  a = audio.utterance_features(path, _cfg(), True, np.random.default_rng(5))
  b = audio.utterance_features(path, _cfg(), True, np.random.default_rng(5))
  np.testing.assert_array_equal(a, b)


def test_real_voxceleb_utterance(shared_data):
  wavs = sorted((shared_data / "voxceleb1-mini" / "wav").glob("*/*/*.wav"))
  if not wavs:
    pytest.skip("no VoxCeleb1 wavs in shared data")
  wave = audio.load_wav(wavs[0])
  assert wave.dtype == np.float32 and wave.ndim == 1 and np.abs(wave).max() <= 1
  feats = audio.utterance_features(wavs[0], _cfg(time_average=False), True,
                                   np.random.default_rng(0))
  assert feats.shape == (297, 512) and np.isfinite(feats).all()


def test_resampling_keeps_the_frequency(tmp_path):
  t = np.arange(8000) / 8000  # 1 s of 1 kHz at 8 kHz
  path = _write(tmp_path / "s8k.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 8000)
  wave = audio.load_wav(path)
  assert wave.shape == (16000,)
  spec = audio.spectrogram(wave, _cfg(dither=0.0), None)
  assert int(np.argmax(spec[10:-10].mean(0))) == 1000 * 1024 // 16000  # bin 64
  t = np.arange(44100) / 44100
  path = _write(tmp_path / "s44.wav", 0.5 * np.sin(2 * np.pi * 2500 * t), 44100)
  wave = audio.load_wav(path)
  assert wave.shape == (16000,)
  assert int(np.argmax(np.abs(np.fft.rfft(wave)))) == 2500  # 1 s: bin k is k Hz


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_32", "FLOAT"])
def test_stereo_downmix_and_sample_formats(tmp_path, subtype):
  rng = np.random.default_rng(0)
  left, right = 0.4 * rng.uniform(-1, 1, 1000), 0.4 * rng.uniform(-1, 1, 1000)
  path = _write(tmp_path / "st.wav", np.stack([left, right], 1), 16000, subtype)
  tol = 1 / 32768 if subtype == "PCM_16" else 1e-6
  np.testing.assert_allclose(audio.load_wav(path), (left + right) / 2, atol=tol)


def test_crop_segment_modes():
  wave = np.arange(100, dtype=np.float32)
  start = np.random.default_rng(3).integers(0, 100 - 30 + 1)
  np.testing.assert_array_equal(
      audio.crop_segment(wave, 30, "random", np.random.default_rng(3)), wave[start:start + 30])
  np.testing.assert_array_equal(audio.crop_segment(wave, 30, "center"), wave[35:65])
  padded = audio.crop_segment(wave[:10] + 1, 15, "random", np.random.default_rng(0), "pad")
  np.testing.assert_array_equal(padded, np.r_[np.zeros(2), np.arange(1, 11), np.zeros(3)])
  with pytest.raises(audio.AudioError, match="shorter than the segment"):
    audio.crop_segment(wave, 101, "center", short_clips="skip")
  with pytest.raises(ValueError, match="crop mode"):
    audio.crop_segment(wave, 30, "middle")


def test_short_clip_through_utterance_features(tmp_path):
  path = _write(tmp_path / "short.wav", _speechlike(8000), 16000)
  assert audio.utterance_features(path, _cfg(), True, np.random.default_rng(0)).shape == audio.feature_shape(_cfg())
  assert audio.utterance_features(path, _cfg(pooling="stats"), True, np.random.default_rng(0)).shape == (1024,)
  assert audio.utterance_features(path, _cfg(pooling="magnitude_mean"), True, np.random.default_rng(0)).shape == (512,)
  with pytest.raises(audio.AudioError, match="short.wav.*shorter than the segment"):
    audio.utterance_features(path, _cfg(short_clips="skip"), True, np.random.default_rng(0))


def test_bad_files_raise_audio_error(tmp_path):
  corrupt = tmp_path / "corrupt.wav"
  corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" + bytes(range(256)))
  with pytest.raises(audio.AudioError, match="corrupt.wav: not a readable audio file"):
    audio.load_wav(corrupt)
  text = tmp_path / "notes.wav"
  text.write_text("this is not audio\n" * 20)
  with pytest.raises(audio.AudioError, match="notes.wav"):
    audio.load_wav(text)
  full = _write(tmp_path / "full.wav", _speechlike(16000), 16000)
  raw = full.read_bytes()
  cut = tmp_path / "cut.wav"
  cut.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(audio.AudioError, match="cut.wav: truncated WAV"):
    audio.load_wav(cut)
  with pytest.raises(audio.AudioError, match="empty audio clip"):
    audio.load_wav(_write(tmp_path / "empty.wav", np.zeros(0), 16000))
  with pytest.raises(audio.AudioError, match="silent.wav: silent"):
    audio.load_wav(_write(tmp_path / "silent.wav", np.zeros(16000), 16000))
  with pytest.raises(audio.AudioError, match="silent"):
    audio.load_wav(_write(tmp_path / "dc.wav", np.full(16000, 0.25), 16000))
  with pytest.raises(FileNotFoundError, match="missing.wav"):
    audio.load_wav(tmp_path / "missing.wav")


def test_truncated_real_voxceleb_file(shared_data, tmp_path):
  wavs = sorted((shared_data / "voxceleb1-mini" / "wav").glob("*/*/*.wav"))
  if not wavs:
    pytest.skip("no VoxCeleb1 wavs in shared data")
  cut = tmp_path / "half.wav"
  cut.write_bytes(wavs[0].read_bytes()[:wavs[0].stat().st_size // 2])
  with pytest.raises(audio.AudioError, match="truncated"):
    audio.load_wav(cut)


@pytest.mark.parametrize("key,value,msg", [
    ("n_bins", 600, "n_bins"), ("magnitude", "db", "magnitude"), ("n_fft", 256, "n_fft"),
    ("segment_samples", 100, "segment_samples"), ("hop_ms", 0.0, "hop_ms")])
def test_config_validation(key, value, msg):
  with pytest.raises(ValueError, match=msg):
    audio.feature_shape(_cfg(**{key: value}))


def test_plain_object_config():
  cfg = ml_collections.ConfigDict(base_config().data.to_dict())
  del cfg["short_clips"]
  with pytest.raises(ValueError, match="short_clips"):
    audio.utterance_features(_speechlike(SEG), cfg, False, np.random.default_rng(0))


def test_stats_pooling_is_invariant_to_gain(shared_data, tmp_path):
  wavs = sorted((shared_data / "voxceleb1-mini" / "wav").glob("*/*/*.wav"))
  if not wavs:
    pytest.skip("no VoxCeleb1 wavs in shared data")
  wave = soundfile.read(str(wavs[0]), dtype="float64")[0]
  wave = wave * (0.005 / np.abs(wave).max())  # a quiet recording: peak 0.005
  gains = (0.01, 0.1, 1.0, 10.0, 100.0)  # peaks from 5e-5 to 0.5
  paths = {g: _write(tmp_path / f"gain{g}.wav", (wave * g).astype(np.float32), 16000, "FLOAT") for g in gains}

  def features(pooling):
    return {g: audio.utterance_features(p, _cfg(pooling=pooling), True, np.random.default_rng(3))
            for g, p in paths.items()}

  def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))

  for pooling in [p for p in audio.POOLINGS if p != "magnitude_mean"]:  # 'stats' and, where present, 'mfcc_stats'
    pooled = features(pooling)
    assert pooled[1.0].shape == audio.feature_shape(_cfg(pooling=pooling)) and np.isfinite(pooled[1.0]).all()
    for g in gains:
      assert rel(pooled[g], pooled[1.0]) < 1e-3, (pooling, g)
  # The seed recipe is not invariant: its features scale with the gain.
  old = features("magnitude_mean")
  for g in gains:
    assert np.linalg.norm(old[g]) / np.linalg.norm(old[1.0]) == pytest.approx(g, rel=0.05), g
    if g != 1.0:
      assert rel(old[g], old[1.0]) > 0.5, g


def test_whole_short_clip_pools_only_its_own_frames(tmp_path):
  import warnings as warnings_lib
  wave = _speechlike(12000)
  path = _write(tmp_path / "short.wav", wave, 16000)
  cfg = _cfg(short_clips="whole", dither=0.0)
  with warnings_lib.catch_warnings():
    warnings_lib.simplefilter("error", audio.AudioWarning)  # nothing padded, so nothing to warn about
    got = audio.utterance_features(path, cfg, False)
  # The same statistics computed by hand on the clip as stored (no segment, no padding).
  own = audio.mfcc_stats(audio.spectrogram(audio.load_wav(path), cfg, None, unit_rms=True, magnitude="linear"), cfg)
  np.testing.assert_allclose(got, own, rtol=1e-6)
  padded = audio.utterance_features(path, _cfg(dither=0.0), False)
  assert np.abs(padded - own).max() > 1e-2  # padding does change them: silence enters the statistics
  with pytest.raises(ValueError, match="short_clips='whole'.*pooled"):
    audio.feature_shape(_cfg(short_clips="whole", time_average=False))


# The stored features of each recipe against the recipe written out from its formulas (no librosa): explicit
# DC-removal recursion, per-frame windowed complex FFT, HTK mel triangles filter by filter, a DCT-II matrix (the
# FSDD test takes its 8 -> 16 kHz wave from soxr / scipy directly; soxr itself is checked against ideal
# interpolation). `_close` is the bound: every element within 1e-4 of the array's largest magnitude.

def _close(got, ref, tol=1e-4):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape, (got.shape, ref.shape)
  err = float(np.abs(got - ref).max() / np.abs(ref).max())
  assert err <= tol, f"max |got - ref| is {err:.2e} of max |ref|"


def _recipe(name):
  from mmvae import config as mconfig
  return mconfig.load(name).data


def _frame_spectra(y, win_len, hop, n_fft, starts=None):
  """|FFT| [T, n_fft // 2 + 1] of symmetric-Hamming-windowed frames of y at `starts` (default every `hop`)."""
  win = np.array([0.54 - 0.46 * math.cos(2 * math.pi * n / (win_len - 1)) for n in range(win_len)])
  if starts is None:
    starts = range(0, y.shape[0] - win_len + 1, hop)
  return np.array([np.abs(np.fft.fft(y[s:s + win_len] * win, n_fft))[:n_fft // 2 + 1] for s in starts])


def _htk_mel(n_mels, n_fft, sr, fmin=20.0, fmax=None):
  """[n_mels, n_fft // 2 + 1] triangles spaced evenly on the HTK mel scale 2595 log10(1 + f / 700), peak 1."""
  fmax = 0.975 * sr / 2 if fmax is None else fmax
  mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)
  lo, hi = mel(fmin), mel(fmax)
  edges = [700.0 * (10.0**((lo + (hi - lo) * i / (n_mels + 1)) / 2595.0) - 1.0) for i in range(n_mels + 2)]
  fb = np.zeros((n_mels, n_fft // 2 + 1))
  for m in range(n_mels):
    left, centre, right = edges[m:m + 3]
    for k in range(n_fft // 2 + 1):
      f = k * sr / n_fft
      if left < f <= centre:
        fb[m, k] = (f - left) / (centre - left)
      elif centre < f < right:
        fb[m, k] = (right - f) / (right - centre)
  return fb


def _dct_ii(n):
  """Orthonormal DCT-II matrix: row k is sqrt((k ? 2 : 1) / n) cos(pi k (2 m + 1) / 2n)."""
  k, m = np.arange(n)[:, None], np.arange(n)[None, :]
  d = np.sqrt(2.0 / n) * np.cos(np.pi * k * (2 * m + 1) / (2 * n))
  d[0] /= np.sqrt(2.0)
  return d


def _dither(rng, n, amount):
  d = (rng.random(n, dtype=np.float32) + rng.random(n, dtype=np.float32) - 1).astype(np.float64)
  return amount * 1e-6 * d.std() * d


def _mfcc_stats_reference(seg, cfg, rng):
  """The 'mfcc_stats' recipe: high-pass, unit RMS, dither, |FFT|^2 through HTK mel filters, log, DCT, c1..c_n stats."""
  y = _loop_highpass(seg)
  y = y / np.sqrt(np.mean(y * y)) + _dither(rng, y.shape[0], cfg.dither)
  power = _frame_spectra(y, 400, 160, cfg.n_fft)[:, :cfg.n_bins] ** 2
  logmel = np.log(power @ _htk_mel(cfg.n_mels, cfg.n_fft, cfg.sample_rate)[:, :cfg.n_bins].T + 1e-6)
  mfcc = logmel @ _dct_ii(cfg.n_mels)[1:cfg.n_mfcc + 1].T
  return np.r_[mfcc.mean(0), mfcc.std(0)]


def _vox_wavs(shared_data):
  wavs = sorted((shared_data / "voxceleb1-mini" / "wav").glob("*/*/*.wav"))
  if not wavs:
    pytest.skip("no VoxCeleb1 wavs in shared data")
  return wavs


def test_reference_recipe_matches_formula(shared_data):
  """`reference`: the time-average of the VGGVox magnitude spectrogram of a seeded random 3 s crop."""
  cfg = _recipe("reference")
  assert (cfg.pooling, cfg.segment_samples, cfg.window_ms, cfg.hop_ms, cfg.n_fft, cfg.n_bins) == (
      "magnitude_mean", SEG, 25.0, 10.0, 1024, 512)
  wav = _vox_wavs(shared_data)[0]
  for train in (True, False):
    got = audio.utterance_features(wav, cfg, train, np.random.default_rng(3))
    x = soundfile.read(str(wav), dtype="float32")[0].astype(np.float64)
    rng = np.random.default_rng(3)
    start = int(rng.integers(0, x.shape[0] - SEG + 1)) if train else (x.shape[0] - SEG) // 2
    y = _loop_highpass(x[start:start + SEG]) + _dither(rng, SEG, cfg.dither)
    _close(got, _frame_spectra(y, 400, 160, 1024)[:, :512].mean(0))


def test_voxceleb1_recipe_matches_formula(shared_data):
  """`voxceleb1`: MFCC statistics (HTK mel, natural log, orthonormal DCT-II) of the whole clip, up to 6 s centred."""
  cfg = _recipe("voxceleb1")
  assert (cfg.pooling, cfg.segment_samples, cfg.short_clips, cfg.n_mels, cfg.n_mfcc) == (
      "mfcc_stats", 96000, "whole", 40, 20)
  wavs = _vox_wavs(shared_data)
  lengths = [soundfile.info(str(w)).frames for w in wavs]
  for wav in (wavs[int(np.argmin(lengths))], wavs[int(np.argmax(lengths))]):  # shorter than 6 s (whole) and 6 s
    got = audio.utterance_features(wav, cfg, False, np.random.default_rng(1))
    x = soundfile.read(str(wav), dtype="float32")[0].astype(np.float64)
    start = max(0, (x.shape[0] - 96000) // 2)
    ref = _mfcc_stats_reference(x[start:start + 96000], cfg, np.random.default_rng(1))
    assert got.shape == (40,)
    _close(got, ref)


def test_frame_sequence_recipe_matches_formula(shared_data):
  """`temporal` (audio_frames): per 40 ms video frame the log HTK-mel power of its Hamming window, z-scored per band."""
  cfg = _recipe("temporal")
  fps, n_mels = float(cfg.video_fps), int(cfg.n_mels)
  assert (fps, n_mels, cfg.sample_rate, cfg.n_fft) == (25.0, 40, 16000, 1024)
  for wav in _vox_wavs(shared_data)[:2]:
    x = soundfile.read(str(wav), dtype="float32")[0].astype(np.float64)
    got = audio.frame_features(audio.load_wav(wav, 16000), cfg, fps)
    steps = x.shape[0] * 25 // 16000
    y = _loop_highpass(x)
    y = y / np.sqrt(np.mean(y * y))
    power = _frame_spectra(y, 640, 640, 1024, starts=[640 * k for k in range(steps)]) ** 2
    logmel = np.log(power @ _htk_mel(n_mels, 1024, 16000).T + 1e-6)
    ref = (logmel - logmel.mean(0)) / np.maximum(logmel.std(0), 1e-5)
    assert got.shape == (steps, n_mels)
    _close(got, ref)


def _ideal_upsample(x, factor):
  """Band-limited interpolation of a periodic x: its spectrum zero-padded (exact for periodic, band-limited x)."""
  spec = np.fft.rfft(x)
  padded = np.zeros(x.shape[0] * factor // 2 + 1, complex)
  padded[:spec.shape[0]] = spec
  return np.fft.irfft(padded, x.shape[0] * factor) * factor


def test_soxr_resampling_is_band_limited_interpolation(tmp_path):
  """data.resampler 'soxr_hq' (the default) reproduces ideal interpolation; 'polyphase' (scipy's) is rougher."""
  n = 8000  # 1 s at 8 kHz, periodic, content between 60 Hz and 3.4 kHz
  rng = np.random.default_rng(0)
  spec = np.zeros(n // 2 + 1, complex)
  band = slice(60, 3400)
  spec[band] = rng.standard_normal(3340) + 1j * rng.standard_normal(3340)
  x = np.fft.irfft(spec, n)
  x *= 0.5 / np.abs(x).max()
  path = _write(tmp_path / "band8k.wav", x, 8000, "FLOAT")
  ideal = _ideal_upsample(x.astype(np.float32).astype(np.float64), 2)
  inner = slice(4000, -4000)  # away from the clip's ends, where the periodic signal is cut
  rms = np.sqrt(np.mean(ideal**2))
  errors = {}
  for name in audio.RESAMPLERS:
    with pytest.warns(audio.AudioWarning, match="resampled up from 8000 Hz"):
      wave = audio.load_wav(path, 16000, name)
    assert wave.shape == (16000,) and wave.dtype == np.float32
    errors[name] = float(np.abs(wave[inner] - ideal[inner]).max() / rms)
  assert errors["soxr_hq"] < 1e-4, errors
  assert errors["polyphase"] > 1e-3, errors  # the two are different recipes: a key, not a detail
  with pytest.raises(ValueError, match="data.resampler"):
    audio.load_wav(path, 16000, "kaiser_best")
  with pytest.raises(ValueError, match="data.resampler"):
    audio.feature_shape(_cfg(resampler="sinc"))


def test_avdigits_recipe_resamples_fsdd_with_the_configured_resampler(shared_data):
  """`avdigits`: an 8 kHz FSDD digit, resampled to 16 kHz (soxr HQ by default, scipy polyphase by key), padded to 1 s."""
  import scipy.signal
  import soxr
  wavs = sorted((shared_data / "fsdd" / "recordings").glob("*.wav"))
  if not wavs:
    pytest.skip("no FSDD recordings in shared data")
  cfg = _recipe("avdigits")
  assert (cfg.resampler, cfg.segment_samples, cfg.pooling, cfg.short_clips) == ("soxr_hq", 16000, "mfcc_stats", "pad")
  x = soundfile.read(str(wavs[0]), dtype="float32")[0]
  resampled = {"soxr_hq": soxr.resample(x, 8000, 16000, quality="HQ"),
               "polyphase": scipy.signal.resample_poly(x.astype(np.float64), 2, 1)}
  got = {}
  for name, wave in resampled.items():
    cfg.resampler = name
    with pytest.warns(audio.AudioWarning, match="resampled up"):
      got[name] = audio.utterance_features(wavs[0], cfg, False, np.random.default_rng(2))
    wave = np.clip(np.asarray(wave, np.float64), -1, 1)
    left = (16000 - wave.shape[0]) // 2
    seg = np.pad(wave, (left, 16000 - wave.shape[0] - left))
    _close(got[name], _mfcc_stats_reference(seg, cfg, np.random.default_rng(2)))
  assert np.abs(got["soxr_hq"] - got["polyphase"]).max() > 1e-2 * np.abs(got["polyphase"]).max()


def test_non_finite_wav_is_an_audio_error_before_resampling(tmp_path):
  """A float WAV holding NaN is named as such (librosa.resample would refuse it with its own exception)."""
  wave = _speechlike(8000)
  wave[100] = np.nan
  for rate in (8000, 16000):
    path = _write(tmp_path / f"nan{rate}.wav", wave, rate, "FLOAT")
    with pytest.raises(audio.AudioError, match=f"nan{rate}.wav: audio contains NaN or infinite samples"):
      audio.load_wav(path, 16000)
