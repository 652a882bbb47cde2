"""Audio pipeline: WAV file -> mono 16 kHz wave -> segment -> VGGVox-style spectrogram.

The recipe (the reference experiment, `config.data`):
  1. `load_wav`: decode with soundfile, downmix channels by their mean, resample to
     `sample_rate` with `librosa.resample` (`data.resampler`: 'soxr_hq', librosa's default, or
     'polyphase', scipy's resample_poly, the recipe before librosa), scale to [-1, 1] (no x 2**15
     int16 scaling: the per-bin normalisation that follows makes the overall scale irrelevant for
     'linear').
  2. `crop_segment`: `segment_samples` samples, at a random start (train) or centred
     (evaluation); shorter clips are zero-padded (centred) or rejected.
  3. `spectrogram`: subtract the mean, then VGGVox's DC-removal high-pass
     y[n] = x[n] - x[n-1] + alpha * y[n-1] (alpha = 0.99 at 16 kHz; at other rates alpha is
     chosen to keep the same ~25.6 Hz cut-off); add triangular dither
     `dither * 1e-6 * std(d) * d`, d = U[0,1) + U[0,1) - 1 drawn from the caller's generator
     (as the VGGVox Python port does); `librosa.stft` with frames of `window_ms` every `hop_ms`
     (no padding: a 47,760-sample segment gives 1 + (47760 - 400) // 160 = 297 frames); a symmetric
     Hamming window (np.hamming, 0.54 - 0.46 cos(2 pi n / (N - 1))); an `n_fft`-point FFT keeping
     the first `n_bins` bins; magnitude ('linear') or log1p(magnitude) ('log').
  4. `normalise_per_bin`: each frequency bin to zero mean, unit variance over time (VGGVox).

Pooling over time (`time_average`), chosen by `data.pooling`:
  - 'mfcc_stats' (speaker features, the default): the same unit-RMS segment's power spectrum through
    `n_mels` triangular mel filters (`librosa.filters.mel` with htk=True, norm=None: the HTK mel scale,
    peak 1, MEL_FMIN to 0.975 x Nyquist), log(. + MEL_FLOOR), `librosa.feature.mfcc` (orthonormal DCT-II),
    coefficients 1..n_mfcc (c0, the level, is dropped), pooled into their mean and standard
    deviation over time: [2 n_mfcc], the x-vector/i-vector front end in its simplest form. On the
    VoxCeleb1 mini set a linear probe names the speaker of unseen videos far more often from these
    40 numbers than from the 1024 of 'stats' (docs/ARCHITECTURE.md).
  - 'stats': the segment is scaled to unit RMS after DC removal
    (so gain, and the dither relative to it, cannot change anything), the log magnitude
    log(|X| + LOG_FLOOR) is taken, and each bin is pooled into the mean over time minus the
    utterance's mean over all bins and frames (its spectral shape) and the standard deviation over
    time (x-vector statistics pooling): a [2F] vector, invariant to the utterance's gain.
  - 'magnitude_mean' (the seed report's recipe, kept to reproduce it): the time-average of the
    UN-normalised magnitude. It scales with the utterance's gain, so it encodes loudness more than
    the speaker.
Augmented views (`data.audio_views` V > 1, pooled features only): the audio of a training example is stored as
[V, D], view 0 its clean features, views 1..V-1 the same recipe run on an augmented wave (`augment_wave`):
  speed       resampled by a factor drawn from `data.audio_speed` ("lo,hi"; pitch and tempo change together)
  reverb      with probability `data.audio_reverb`, convolved with a generated room impulse response
              (`room_impulse`: a direct path plus exponentially decaying Gaussian noise, RT60 in RT60_RANGE)
  noise       white or pink noise at an SNR drawn from `data.audio_noise_snr` ("lo,hi" dB)
  telephone   with probability `data.audio_telephone`, band-limited to TELEPHONE_BAND (Butterworth, zero phase)
each from a generator seeded by (data.seed, the example's id, v) alone (`view_rng`), so a view does not depend on
the worker count, the order or a resume. Validation and test store V copies of view 0.
Either way the dataset-level per-bin standardisation (train-split mean/std) is applied afterwards
by `data_prep.prepare` (recorded as `audio_normalisation` in the manifest): averaging a
per-bin-normalised spectrogram over time would give exactly zero in every bin.
"""

import functools
import hashlib
import os
import struct
import warnings

import librosa  # submodules load on first use (lazy_loader): numba is imported by the first feature, not here
import numpy as np
import scipy.fft
import scipy.signal
import soundfile

MAGNITUDES = ("linear", "log")
POOLINGS = ("mfcc_stats", "stats", "magnitude_mean")
LOG_FLOOR = 1e-3  # added to |X| of a unit-RMS segment before the log: silence stays finite
MEL_FLOOR = 1e-6  # added to the mel power of a unit-RMS segment before the log
MEL_FMIN = 20.0
SHORT_CLIPS = ("pad", "skip", "whole")
CROP_MODES = ("random", "center")
# librosa.resample res_types: soxr (librosa's default) or scipy's polyphase filter (the recipe before librosa)
RESAMPLERS = ("soxr_hq", "polyphase")
_SILENCE_PEAK = 1e-6  # below one int16 step (3e-5): nothing but rounding noise
TELEPHONE_BAND = (300.0, 3400.0)  # Hz: the narrowband telephone channel
TELEPHONE_ORDER = 6  # Butterworth order of each edge (run forwards and backwards: twice the attenuation)
RT60_RANGE = (0.2, 0.8)  # s: the reverberation times drawn for `data.audio_reverb` (small room to hall)
NOISE_COLOURS = ("white", "pink")


class AudioError(ValueError):
  """An audio file or clip that cannot be turned into features; the message names it."""


class AudioWarning(UserWarning):
  """An input changed to fit (resampled up, clipped, zero-padded); prep records it in manifest['warnings']."""


def _declared_wav_data_bytes(path):
  """(declared, available) byte counts of a RIFF/WAVE 'data' chunk, or None if not a plain WAV."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
      return None
    pos = 12
    while pos + 8 <= size:
      f.seek(pos)
      chunk_id, chunk_len = struct.unpack("<4sI", f.read(8))
      if chunk_id == b"data":
        return chunk_len, size - pos - 8
      pos += 8 + chunk_len + (chunk_len & 1)
  return None


def load_wav(path, sample_rate=16000, resampler="soxr_hq"):
  """Mono float32 wave in [-1, 1] at `sample_rate` (librosa.resample, res_type `resampler`); AudioError for unusable files."""
  if resampler not in RESAMPLERS:
    raise ValueError(f"data.resampler must be one of {RESAMPLERS}, got {resampler!r}")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"audio file not found: {path}")
  try:
    wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (soundfile.SoundFileError, RuntimeError, ValueError, EOFError) as e:
    raise AudioError(f"{path}: not a readable audio file ({e})") from e
  # libsndfile silently reads the part of a truncated WAV that is there; a half-copied
  # corpus file should be reported and skipped, not trained on.
  data = _declared_wav_data_bytes(path)
  if data is not None and data[0] not in (0, 0xFFFFFFFF) and data[1] < data[0]:
    raise AudioError(f"{path}: truncated WAV: header declares {data[0]} bytes of audio, "
                     f"the file holds {data[1]}")
  if wave.shape[0] == 0:
    raise AudioError(f"{path}: empty audio clip (0 samples)")
  wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
  peak = float(np.max(np.abs(wave), initial=0.0, where=np.isfinite(wave)))
  if peak > 1.0:
    warnings.warn(f"{path}: samples up to {peak:.3g} outside [-1, 1] clipped", AudioWarning, stacklevel=2)
  if rate < sample_rate:
    warnings.warn(f"{path}: resampled up from {rate} Hz to {sample_rate} Hz (nothing above {rate // 2} Hz)",
                  AudioWarning, stacklevel=2)
  if not np.all(np.isfinite(wave)):  # checked first: librosa refuses a non-finite buffer
    raise AudioError(f"{path}: audio contains NaN or infinite samples")
  if rate != sample_rate:
    wave = librosa.resample(wave, orig_sr=int(rate), target_sr=int(sample_rate), res_type=resampler)
  wave = np.clip(wave, -1.0, 1.0)  # float WAVs and resampling overshoot may leave [-1, 1]
  if float(np.max(np.abs(wave - wave.mean()))) < _SILENCE_PEAK:
    raise AudioError(f"{path}: silent audio clip (all samples equal; peak below "
                     f"{_SILENCE_PEAK:g})")
  return wave


def crop_segment(wave, segment_samples, mode, rng=None, short_clips="pad"):
  """`segment_samples` of `wave`: random start ('random', from `rng`) or centred ('center')."""
  if mode not in CROP_MODES:
    raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
  if short_clips not in SHORT_CLIPS:
    raise ValueError(f"short_clips must be one of {SHORT_CLIPS}, got {short_clips!r}")
  wave = np.asarray(wave, np.float32)
  n = wave.shape[0]
  if n < segment_samples:
    if short_clips == "whole":  # pooled statistics need no fixed length: padding would only add silence
      return wave
    if short_clips == "skip":
      raise AudioError(f"clip of {n} samples is shorter than the segment of {segment_samples} "
                       "samples (data.short_clips='skip'; use 'pad' to zero-pad or 'whole' for pooled features)")
    left = (segment_samples - n) // 2
    warnings.warn(f"clip of {n} samples zero-padded to the segment of {segment_samples}", AudioWarning, stacklevel=2)
    return np.pad(wave, (left, segment_samples - n - left))
  if mode == "random":
    if rng is None:
      raise ValueError("crop mode 'random' needs a np.random.Generator rng")
    start = int(rng.integers(0, n - segment_samples + 1))
  else:
    start = (n - segment_samples) // 2
  return wave[start:start + segment_samples]


def _cfg(data_cfg, key):
  try:
    return getattr(data_cfg, key)
  except (AttributeError, KeyError):
    raise ValueError(f"data config has no '{key}' (see experiments/configs/common.py)") from None


@functools.lru_cache(maxsize=16)
def _recipe(sample_rate, window_ms, hop_ms, n_fft, n_bins, magnitude):
  """Validated (frame_len, hop) for one set of spectrogram settings."""
  if sample_rate <= 0:
    raise ValueError(f"data.sample_rate must be positive, got {sample_rate}")
  frame_len = int(round(window_ms * sample_rate / 1000.0))
  hop = int(round(hop_ms * sample_rate / 1000.0))
  if frame_len < 2 or hop < 1:
    raise ValueError(f"data.window_ms={window_ms} / data.hop_ms={hop_ms} give a frame of "
                     f"{frame_len} samples and a hop of {hop}; both must be positive")
  if n_fft < frame_len:
    raise ValueError(f"data.n_fft={n_fft} is smaller than the {frame_len}-sample window")
  if not 1 <= n_bins <= n_fft // 2 + 1:
    raise ValueError(f"data.n_bins={n_bins} must be in [1, n_fft // 2 + 1 = {n_fft // 2 + 1}]")
  if magnitude not in MAGNITUDES:
    raise ValueError(f"data.magnitude must be one of {MAGNITUDES}, got {magnitude!r}")
  return frame_len, hop


def _settings(data_cfg):
  sr = int(_cfg(data_cfg, "sample_rate"))
  frame_len, hop = _recipe(sr, float(_cfg(data_cfg, "window_ms")), float(_cfg(data_cfg, "hop_ms")),
                           int(_cfg(data_cfg, "n_fft")), int(_cfg(data_cfg, "n_bins")),
                           _cfg(data_cfg, "magnitude"))
  return sr, frame_len, hop


@functools.lru_cache(maxsize=8)
def _hamming(frame_len):
  return np.hamming(frame_len).astype(np.float32)


def dc_alpha(sample_rate):
  """Pole of the DC-removal filter: VGGVox's 0.99 at 16 kHz, same cut-off at other rates."""
  return 0.99 ** (16000.0 / sample_rate)


def spectrogram(segment, data_cfg, rng=None, unit_rms=False, magnitude=None):
  """Un-normalised float32 [T, F] spectrogram of one segment (recipe in the module docstring).

  unit_rms scales the filtered segment to unit RMS before the dither, which makes the result
  independent of the segment's gain; magnitude overrides data.magnitude.
  """
  sr, frame_len, hop = _settings(data_cfg)
  n_fft, n_bins = int(data_cfg.n_fft), int(data_cfg.n_bins)
  x = np.asarray(segment, np.float64)
  if x.ndim != 1:
    raise ValueError(f"spectrogram expects a 1-D wave, got shape {x.shape}")
  if x.shape[0] < frame_len:
    raise AudioError(f"segment of {x.shape[0]} samples is shorter than one "
                     f"{frame_len}-sample window")
  # Mean first so the filter starts without a DC step; the high-pass then removes slow drift.
  a = dc_alpha(sr)
  x = scipy.signal.lfilter([1.0, -1.0], [1.0, -a], x - x.mean())
  if unit_rms:
    x = x / max(float(np.sqrt(np.mean(x * x))), 1e-12)
  x = x.astype(np.float32)
  dither = float(_cfg(data_cfg, "dither"))
  if dither < 0:
    raise ValueError(f"data.dither must be >= 0, got {dither}")
  if dither > 0:
    if rng is None:
      raise ValueError("dither > 0 needs a np.random.Generator rng (or set data.dither=0)")
    d = rng.random(x.shape[0], dtype=np.float32) + rng.random(x.shape[0], dtype=np.float32) - 1
    x = x + np.float32(dither * 1e-6 * float(np.std(d))) * d
  # librosa.stft centres a window shorter than n_fft in each n_fft-sample frame (at offset `pad`); padding the
  # segment by the same on both sides makes frame t hold samples [t hop, t hop + frame_len) of the segment, the
  # VGGVox frames, and the count 1 + (n - frame_len) // hop. The zeros meet the window's zero padding only, and
  # where a frame sits in the FFT buffer changes the phase, not the magnitude.
  pad = (n_fft - frame_len) // 2
  x = np.pad(x, (pad, n_fft - frame_len - pad))
  stft_FxT = librosa.stft(x, n_fft=n_fft, hop_length=hop, win_length=frame_len, window=_hamming(frame_len),
                          center=False)
  spec_TxF = np.ascontiguousarray(np.abs(stft_FxT[:n_bins]).T)
  if (magnitude or data_cfg.magnitude) == "log":
    spec_TxF = np.log1p(spec_TxF)
  return spec_TxF.astype(np.float32, copy=False)


def normalise_per_bin(spec_TxF, eps=1e-5):
  """Each frequency bin to zero mean and unit variance over time (VGGVox)."""
  spec_TxF = np.asarray(spec_TxF, np.float32)
  mean_F = spec_TxF.mean(axis=0, keepdims=True)
  std_F = spec_TxF.std(axis=0, keepdims=True)
  return (spec_TxF - mean_F) / np.maximum(std_F, eps)


def apply_normalisation(features, normalisation):
  """Standardises time-averaged features with the dataset's per-bin train statistics (manifest['audio_normalisation'])."""
  mean = np.asarray(normalisation["mean"], np.float64)
  std = np.asarray(normalisation["std"], np.float64)
  return ((np.asarray(features, np.float64) - mean) / std).astype(np.float32)


def resampler(data_cfg):
  """data.resampler, checked: the librosa.resample res_type that load_wav uses for this config."""
  name = _cfg(data_cfg, "resampler")
  if name not in RESAMPLERS:
    raise ValueError(f"data.resampler must be one of {RESAMPLERS}, got {name!r}")
  return name


def _pooling(data_cfg):
  pooling = _cfg(data_cfg, "pooling")
  if pooling not in POOLINGS:
    raise ValueError(f"data.pooling must be one of {POOLINGS}, got {pooling!r}")
  return pooling


def stats_pool(logmag_TxF):
  """[2F]: per-bin mean over time minus the overall mean (spectral shape), then per-bin std over time."""
  logmag_TxF = np.asarray(logmag_TxF, np.float64)
  mean_F = logmag_TxF.mean(axis=0)
  return np.concatenate([mean_F - mean_F.mean(), logmag_TxF.std(axis=0)]).astype(np.float32)


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_mels, n_fft, n_bins, sample_rate):
  """[n_mels, n_bins] triangular filters, equally spaced on the HTK mel scale, peak 1 (librosa's, htk=True, norm=None).

  librosa's default is the Slaney mel scale with area-normalised filters; these HTK filters are the recipe's.
  """
  if n_mels < 1:
    raise ValueError(f"data.n_mels must be >= 1, got {n_mels}")
  fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=MEL_FMIN, fmax=0.975 * sample_rate / 2,
                           htk=True, norm=None, dtype=np.float32)
  return np.ascontiguousarray(fb[:, :n_bins])


def mfcc_stats(mag_TxF, data_cfg):
  """[2 n_mfcc]: mean and std over time of MFCCs 1..n_mfcc of a magnitude spectrogram."""
  n_mfcc, n_mels = int(_cfg(data_cfg, "n_mfcc")), int(_cfg(data_cfg, "n_mels"))
  if not 1 <= n_mfcc < n_mels:
    raise ValueError(f"data.n_mfcc={n_mfcc} must be in [1, data.n_mels={n_mels})")
  fb = mel_filterbank(n_mels, int(data_cfg.n_fft), mag_TxF.shape[1], int(data_cfg.sample_rate))
  logmel_TxM = np.log(np.asarray(mag_TxF, np.float64)**2 @ fb.T + MEL_FLOOR)
  # The natural log with an additive floor (not librosa's power_to_db, whose top_db clip would change the recipe).
  mfcc_TxC = librosa.feature.mfcc(S=logmel_TxM.T, n_mfcc=n_mfcc + 1, dct_type=2, norm="ortho").T[:, 1:]
  return np.concatenate([mfcc_TxC.mean(axis=0), mfcc_TxC.std(axis=0)]).astype(np.float32)


def feature_shape(data_cfg):
  """Shape `utterance_features` returns for this config, computed without audio."""
  _, frame_len, hop = _settings(data_cfg)
  resampler(data_cfg)
  seg = int(_cfg(data_cfg, "segment_samples"))
  if seg < frame_len:
    raise ValueError(f"data.segment_samples={seg} is shorter than one {frame_len}-sample window")
  if _cfg(data_cfg, "short_clips") == "whole" and not _cfg(data_cfg, "time_average"):
    raise ValueError("data.short_clips='whole' keeps a short clip's own length, which only pooled features "
                     "(data.time_average=True) allow; use 'pad' or 'skip'")
  if _cfg(data_cfg, "time_average"):
    pooling = _pooling(data_cfg)
    if pooling == "mfcc_stats":
      return (2 * int(_cfg(data_cfg, "n_mfcc")),)
    return (2 * int(data_cfg.n_bins),) if pooling == "stats" else (int(data_cfg.n_bins),)
  return (1 + (seg - frame_len) // hop, int(data_cfg.n_bins))


def utterance_features(path_or_wave, data_cfg, train, rng=None, name=None):
  """Audio features of one utterance: a pooled vector (see `data.pooling`) or a normalised [T, F].

  A wave given directly must already be mono at `data_cfg.sample_rate`; `name` (e.g. its path) names it in errors.
  """
  feature_shape(data_cfg)  # validates the whole config before any work
  short = _cfg(data_cfg, "short_clips")
  if isinstance(path_or_wave, (str, os.PathLike)):
    wave = load_wav(path_or_wave, int(data_cfg.sample_rate), resampler(data_cfg))
    name = os.fspath(path_or_wave)
  else:
    wave, name = np.asarray(path_or_wave, np.float32), name or "<wave>"
  try:
    seg = crop_segment(wave, int(data_cfg.segment_samples), "random" if train else "center",
                       rng, short)
  except AudioError as e:
    raise AudioError(f"{name}: {e}") from None
  if data_cfg.time_average and _pooling(data_cfg) != "magnitude_mean":
    # The magnitude itself, whatever data.magnitude says: the log is taken here with a floor relative
    # to the unit-RMS segment, so that it does not depend on the gain either.
    mag_TxF = spectrogram(seg, data_cfg, rng, unit_rms=True, magnitude="linear")
    if _pooling(data_cfg) == "mfcc_stats":
      return mfcc_stats(mag_TxF, data_cfg)
    return stats_pool(np.log(mag_TxF + LOG_FLOOR))
  spec_TxF = spectrogram(seg, data_cfg, rng)
  if data_cfg.time_average:
    return spec_TxF.mean(axis=0)
  return normalise_per_bin(spec_TxF)



def frame_steps(n_samples, sample_rate, fps):
  """Number of whole video frames (1/fps s each) in n_samples: the steps of `frame_features`."""
  if fps <= 0:
    raise ValueError(f"data.video_fps must be positive, got {fps}")
  return int(n_samples * fps // sample_rate)


def frame_features(wave, data_cfg, fps):
  """float32 [L, n_mels]: per video frame k (L = frame_steps), the log-mel of the window [k/fps, (k+1)/fps) s.

  The recipe of the pooled features without the pooling: mean removed, VGGVox's DC-removal high-pass,
  scaled to unit RMS over the utterance (gain-invariant), a symmetric Hamming window over each frame's
  window (round(sample_rate / fps) samples: 640 at 16 kHz and 25 fps), power spectrum with
  max(data.n_fft, next power of two) points, `n_mels` HTK mel filters (mel_filterbank), log(. + MEL_FLOOR);
  then each band to zero mean and unit std over the utterance (normalise_per_bin), so the steps say how
  the sound changes within the utterance. A wave must be mono at data.sample_rate.
  """
  sr, n_mels = int(_cfg(data_cfg, "sample_rate")), int(_cfg(data_cfg, "n_mels"))
  x = np.asarray(wave, np.float64)
  if x.ndim != 1:
    raise ValueError(f"frame_features expects a 1-D wave, got shape {x.shape}")
  steps = frame_steps(x.shape[0], sr, fps)
  win = int(round(sr / fps))
  if steps < 1 or win < 2:
    raise AudioError(f"clip of {x.shape[0]} samples is shorter than one video frame of {sr / fps:.0f} samples "
                     f"({fps} fps)")
  x = scipy.signal.lfilter([1.0, -1.0], [1.0, -dc_alpha(sr)], x - x.mean())
  x = x / max(float(np.sqrt(np.mean(x * x))), 1e-12)
  x = np.pad(x, (0, win))  # rounding may reach a sample past the end when sample_rate / fps is not whole
  starts = np.round(np.arange(steps) * sr / fps).astype(np.int64)
  frames_TxW = x[starts[:, None] + np.arange(win)]
  n_fft = max(int(_cfg(data_cfg, "n_fft")), 1 << (win - 1).bit_length())
  power_TxF = np.abs(scipy.fft.rfft(frames_TxW * np.hamming(win), n=n_fft, axis=1)) ** 2
  fb = mel_filterbank(n_mels, n_fft, n_fft // 2 + 1, sr)
  return normalise_per_bin(np.log(power_TxF @ fb.T.astype(np.float64) + MEL_FLOOR))


# --- augmented views (data.audio_views) ---


def view_rng(seed, example_id, view):
  """The generator of one view: seeded by (seed, SHA-256 of the example's id, view) alone, never by order or worker."""
  digest = int.from_bytes(hashlib.sha256(str(example_id).encode("utf-8")).digest()[:8], "little")
  return np.random.default_rng((int(seed), digest, int(view)))


def add_noise(wave, snr_db, rng, colour="white"):
  """wave plus white or pink Gaussian noise scaled to mean(wave^2) / mean(noise^2) = 10^(snr_db / 10); float32."""
  if colour not in NOISE_COLOURS:
    raise ValueError(f"noise colour must be one of {NOISE_COLOURS}, got {colour!r}")
  x = np.asarray(wave, np.float64)
  noise = rng.standard_normal(x.shape[0])
  if colour == "pink":  # 1/f power: amplitudes 1/sqrt(f) in the frequency domain (DC left out)
    spectrum = scipy.fft.rfft(noise)
    f = np.arange(spectrum.shape[0], dtype=np.float64)
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0.0
    noise = scipy.fft.irfft(spectrum, n=x.shape[0])
  signal_power, noise_power = float(np.mean(x * x)), float(np.mean(noise * noise))
  if signal_power <= 0.0 or noise_power <= 0.0:
    return x.astype(np.float32)
  noise *= np.sqrt(signal_power / (noise_power * 10.0 ** (float(snr_db) / 10.0)))
  return (x + noise).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _telephone_sos(sample_rate):
  low, high = TELEPHONE_BAND
  if high >= sample_rate / 2:
    raise ValueError(f"the telephone band {TELEPHONE_BAND} Hz needs data.sample_rate > {2 * high:g}, "
                     f"got {sample_rate}")
  return scipy.signal.butter(TELEPHONE_ORDER, [low, high], btype="bandpass", fs=sample_rate, output="sos")


def telephone(wave, sample_rate):
  """wave band-limited to TELEPHONE_BAND: a zero-phase Butterworth band-pass (scipy sosfiltfilt); float32."""
  x = np.asarray(wave, np.float64)
  sos = _telephone_sos(int(sample_rate))
  # sosfiltfilt pads by reflection; a clip shorter than its default pad gets a shorter one.
  pad = min(3 * (2 * len(sos) + 1), max(x.shape[0] - 1, 0))
  return scipy.signal.sosfiltfilt(sos, x, padlen=pad).astype(np.float32)


def room_impulse(rt60, sample_rate, rng):
  """float32 room impulse response: 1 (the direct path) then Gaussian noise whose amplitude falls 60 dB in rt60 s.

  rt60 * sample_rate samples long; the tail's energy equals the direct path's.
  """
  if rt60 <= 0:
    raise ValueError(f"rt60 must be positive, got {rt60}")
  n = max(int(round(rt60 * sample_rate)), 2)
  t = np.arange(n, dtype=np.float64) / sample_rate
  tail = rng.standard_normal(n) * np.exp(-np.log(1000.0) * t / rt60)  # amplitude 10^-3 (-60 dB) at rt60
  tail[0] = 0.0
  tail /= max(float(np.sqrt(np.sum(tail * tail))), 1e-12)
  tail[0] = 1.0
  return tail.astype(np.float32)


def reverb(wave, rir):
  """wave convolved with the impulse response rir (scipy fftconvolve), cut to the wave's length; float32."""
  x, h = np.asarray(wave, np.float64), np.asarray(rir, np.float64)
  return scipy.signal.fftconvolve(x, h)[:x.shape[0]].astype(np.float32)


def speed(wave, factor, sample_rate, res_type="soxr_hq"):
  """wave played `factor` times faster (pitch and tempo together): resampled from factor * rate to rate.

  librosa.resample with the integer rates round(factor * sample_rate) -> sample_rate: about len / factor samples.
  """
  if factor <= 0:
    raise ValueError(f"speed factor must be positive, got {factor}")
  source = int(round(float(factor) * int(sample_rate)))
  x = np.asarray(wave, np.float32)
  if source == int(sample_rate):
    return x.copy()
  return librosa.resample(x, orig_sr=source, target_sr=int(sample_rate), res_type=res_type).astype(np.float32)


def _range(data_cfg, key, low, high):
  """data.KEY as (lo, hi) from "lo,hi" (or one number), within [low, high]; None when "" (off)."""
  text = _cfg(data_cfg, key)
  if text is None or str(text).strip() == "":
    return None
  try:
    values = tuple(float(v) for v in str(text).split(","))
  except ValueError:
    values = ()
  if len(values) == 1:
    values = values * 2
  if len(values) != 2 or not low <= values[0] <= values[1] <= high or not all(np.isfinite(values)):
    raise ValueError(f'data.{key}={text!r} must be "lo,hi" with {low:g} <= lo <= hi <= {high:g}, or "" (off)')
  return values


def _probability(data_cfg, key):
  p = float(_cfg(data_cfg, key))
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"data.{key}={p} must be a probability in [0, 1]")
  return p


def views(data_cfg):
  """data.audio_views, checked with the augmentation settings: V >= 1 (1 = no views); V > 1 needs pooled audio."""
  v = int(getattr(data_cfg, "audio_views", 1))  # a config from before the key: no views
  if v < 1:
    raise ValueError(f"data.audio_views={v} must be >= 1 (1: no augmented views)")
  if v > 1:
    if not _cfg(data_cfg, "time_average"):
      raise ValueError(f"data.audio_views={v} needs pooled audio features (data.time_average=True): a [T, F] "
                       "spectrogram has no views; set data.audio_views=1")
    augmentation(data_cfg)
  return v


def augmentation(data_cfg):
  """The checked augmentation settings of data_cfg: {snr, telephone, reverb, speed} (ranges None when off)."""
  return {"snr": _range(data_cfg, "audio_noise_snr", -20.0, 100.0),
          "telephone": _probability(data_cfg, "audio_telephone"),
          "reverb": _probability(data_cfg, "audio_reverb"),
          "speed": _range(data_cfg, "audio_speed", 0.5, 2.0)}


def augment_wave(wave, data_cfg, rng):
  """One augmented copy of a mono wave at data.sample_rate (module docstring): speed, reverb, noise, telephone.

  Every draw is made whatever is switched on, in a fixed order, so turning one augmentation off leaves the others'
  draws as they were.
  """
  settings, sr = augmentation(data_cfg), int(_cfg(data_cfg, "sample_rate"))
  factor, use_reverb, rt60 = rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0), rng.uniform(*RT60_RANGE)
  rir_rng = np.random.default_rng(rng.integers(1 << 62))
  snr, pink, use_phone = rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0) < 0.5, rng.uniform(0.0, 1.0)
  noise_rng = np.random.default_rng(rng.integers(1 << 62))
  x = np.asarray(wave, np.float32)
  if settings["speed"] is not None:
    lo, hi = settings["speed"]
    x = speed(x, lo + factor * (hi - lo), sr, resampler(data_cfg))
  if use_reverb < settings["reverb"]:
    x = reverb(x, room_impulse(rt60, sr, rir_rng))
  if settings["snr"] is not None:
    lo, hi = settings["snr"]
    x = add_noise(x, lo + snr * (hi - lo), noise_rng, "pink" if pink else "white")
  if use_phone < settings["telephone"]:
    x = telephone(x, sr)
  return x


def utterance_views(wave, data_cfg, train, rng, example_id, name=None):
  """float32 [V, D]: view 0 `utterance_features(wave, data_cfg, train, rng)`; for train, views 1..V-1 the features
  of `augment_wave` copies, each from `view_rng(data.seed, example_id, v)` (crop and dither too); otherwise V copies
  of view 0."""
  v_count = views(data_cfg)
  clean = np.asarray(utterance_features(wave, data_cfg, train, rng, name=name), np.float32)
  out = [clean]
  for v in range(1, v_count):
    if not train:
      out.append(clean)
      continue
    view = view_rng(_cfg(data_cfg, "seed"), example_id, v)
    out.append(np.asarray(utterance_features(augment_wave(wave, data_cfg, view), data_cfg, True, view, name=name),
                          np.float32))
  return np.stack(out)
