"""Source-filter voices for the synthetic corpus: glottal pulses through identity-scaled formants."""

import dataclasses

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000

# Peterson & Barney (1952) adult-male formants F1-F3 (Hz) of ten English vowels; F4, F5 are added
# as fixed tract resonances. A vocal tract shorter by a factor k scales every formant by 1/k.
VOWELS = ("i", "I", "E", "ae", "A", "O", "U", "u", "V", "3r")
VOWEL_F123 = np.array([
    [270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410], [730, 1090, 2440],
    [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240], [640, 1190, 2390], [490, 1350, 1690],
], dtype=np.float64)
F45 = (3500.0, 4500.0)
BANDWIDTHS = np.array([70.0, 90.0, 140.0, 200.0, 260.0])

# Attribute effects shared with the face renderer: sex and age move f0, body size moves f0 a little
# and the vocal-tract length (formants), so a voice tells something about the face.
F0_BASE = {"m": 118.0, "f": 212.0}
F0_AGE = {"young": 1.08, "adult": 1.0, "senior": 0.92}
F0_SIZE = {"small": 1.04, "medium": 1.0, "large": 0.96}
VTL_SEX = {"m": 1.0, "f": 1.16}
VTL_SIZE = {"small": 1.07, "medium": 1.0, "large": 0.93}
VTL_AGE = {"young": 1.03, "adult": 1.0, "senior": 0.99}


@dataclasses.dataclass(frozen=True)
class Voice:
  """Identity-level voice parameters."""
  f0_hz: float  # median fundamental frequency
  formant_scale: float  # 1 / relative vocal-tract length
  formant_offsets: np.ndarray  # [5] multiplicative per-formant timbre offsets
  bandwidth_scale: float
  tilt: float  # one-pole low-pass coefficient on the source: higher = darker voice
  breathiness: float  # aspiration noise relative to the pulses
  open_quotient: float
  jitter: float
  shimmer: float
  vibrato_depth: float  # relative f0 depth
  vibrato_hz: float
  intonation: float  # semitone range of pitch accents
  rate: float  # syllables per second
  vowel_weights: np.ndarray  # [10] the speaker's habitual vowel distribution
  fricative_hz: float  # centre of the speaker's sibilant noise


def make_voice(attrs: dict, rng: np.random.Generator) -> Voice:
  """Draws a voice whose pitch and formants follow the attributes, plus identity-specific timbre."""
  sex, age, size = attrs["sex"], attrs["age"], attrs["size"]
  f0 = F0_BASE[sex] * F0_AGE[age] * F0_SIZE[size] * np.exp(rng.normal(0.0, 0.06))
  scale = VTL_SEX[sex] * VTL_SIZE[size] * VTL_AGE[age] * np.exp(rng.normal(0.0, 0.025))
  senior = age == "senior"
  return Voice(
      f0_hz=float(f0), formant_scale=float(scale),
      formant_offsets=np.exp(rng.normal(0.0, 0.05, size=5)),
      bandwidth_scale=float(rng.uniform(0.7, 1.5)),
      tilt=float(rng.uniform(0.0, 0.75)),
      breathiness=float(rng.uniform(0.02, 0.25) + (0.08 if senior else 0.0)),
      open_quotient=float(rng.uniform(0.45, 0.75)),
      jitter=float(rng.uniform(0.003, 0.012) * (2.0 if senior else 1.0)),
      shimmer=float(rng.uniform(0.02, 0.08)),
      vibrato_depth=float(rng.uniform(0.0, 0.015)),
      vibrato_hz=float(rng.uniform(4.0, 6.5)),
      intonation=float(rng.uniform(1.0, 4.0)),
      rate=float(rng.uniform(3.0, 5.5)),
      vowel_weights=rng.dirichlet(np.full(len(VOWELS), 0.6)),
      fricative_hz=float(rng.uniform(3000.0, 6000.0)),
  )


@dataclasses.dataclass(frozen=True)
class Channel:
  """Per-video recording conditions."""
  noise_db: float  # background noise level relative to the speech RMS
  noise_colour: float  # spectral slope exponent: 0 white, 1 pink, 2 brown
  eq_tilt: float  # first-order pre-emphasis (+) / de-emphasis (-)
  eq_gain: float  # linear gain of a mid-band peaking boost (can be a cut)
  eq_hz: float
  reverb: float  # wet ratio of a short exponential room tail
  reverb_s: float
  level_db: float  # output RMS level in dBFS


def make_channel(rng: np.random.Generator) -> Channel:
  """Draws per-video conditions, kept mild so that identity dominates the spectrum."""
  return Channel(
      noise_db=float(rng.uniform(-38.0, -22.0)), noise_colour=float(rng.uniform(0.0, 1.5)),
      eq_tilt=float(rng.uniform(-0.3, 0.3)), eq_gain=float(rng.uniform(-0.3, 0.3)),
      eq_hz=float(rng.uniform(500.0, 3000.0)), reverb=float(rng.uniform(0.0, 0.2)),
      reverb_s=float(rng.uniform(0.08, 0.3)), level_db=float(rng.uniform(-26.0, -18.0)))


def _formant_sos(f123: np.ndarray, voice: Voice) -> np.ndarray:
  """Second-order sections of the five-resonator cascade for one vowel target."""
  freqs = np.concatenate([f123, F45]) * voice.formant_scale * voice.formant_offsets
  freqs = np.minimum(freqs, 0.45 * SAMPLE_RATE)
  bws = BANDWIDTHS * voice.bandwidth_scale
  r = np.exp(-np.pi * bws / SAMPLE_RATE)
  a1, a2 = -2.0 * r * np.cos(2.0 * np.pi * freqs / SAMPLE_RATE), r * r
  gain = 1.0 + a1 + a2  # unit gain at DC, as in Klatt's resonators
  sos = np.zeros((5, 6))
  sos[:, 0], sos[:, 3], sos[:, 4], sos[:, 5] = gain, 1.0, a1, a2
  return sos


def _ramp_envelope(n: int, segments: list, ramp: int) -> np.ndarray:
  """Sum of raised-cosine-edged boxes [start, end) so that segments fade in and out."""
  env = np.zeros(n)
  for start, end in segments:
    length = end - start
    if length <= 0:
      continue
    box = np.ones(length)
    r = min(ramp, length // 2)
    if r > 0:
      edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(r) + 0.5) / r)
      box[:r], box[length - r:] = edge, edge[::-1]
    env[start:end] += box
  return env


def _plan(voice: Voice, n: int, rng: np.random.Generator):
  """Syllable plan: vowel segments with their vowels, fricative bursts and pauses."""
  sr = SAMPLE_RATE
  vowels, fricatives, accents = [], [], []
  t = int(rng.uniform(0.03, 0.2) * sr)
  while t < n - int(0.12 * sr):
    if rng.random() < 0.12:  # phrase break
      t += int(rng.uniform(0.12, 0.3) * sr)
    onset = rng.random()
    if onset < 0.35:  # fricative onset, like /s/ or /f/
      length = int(rng.uniform(0.04, 0.1) * sr)
      fricatives.append((t, min(t + length, n)))
      t += length
    elif onset < 0.65:  # stop closure: a short silence
      t += int(rng.uniform(0.02, 0.05) * sr)
    length = int(rng.uniform(0.55, 1.0) / voice.rate * sr)
    end = min(t + length, n - 1)
    if end - t > int(0.03 * sr):
      vowels.append((t, end, int(rng.choice(len(VOWELS), p=voice.vowel_weights))))
      accents.append(rng.normal(0.0, voice.intonation / 2.0))
    t = end + int(rng.uniform(0.01, 0.04) * sr)
  return vowels, fricatives, accents


def _f0_contour(voice: Voice, n: int, vowels: list, accents: list, rng: np.random.Generator) -> np.ndarray:
  """Declination, smoothed per-syllable pitch accents, vibrato and jitter (Hz per sample)."""
  sr = SAMPLE_RATE
  t_s = np.arange(n) / sr
  # Pitch targets on a 1 ms grid, smoothed over 60 ms (coarticulation), then interpolated.
  step = sr // 1000
  targets = np.zeros(n // step + 1)
  for (start, end, _), accent in zip(vowels, accents):
    targets[start // step:end // step] = accent
  kernel = np.hanning(121)
  targets = np.convolve(targets, kernel / kernel.sum(), mode="same")
  semitones = np.interp(np.arange(n) / step, np.arange(len(targets)), targets)
  declination = np.linspace(1.5, -1.5, n)
  jitter_knots = rng.normal(0.0, voice.jitter, size=int(n / sr * voice.f0_hz) + 2)
  jitter = np.interp(t_s * voice.f0_hz, np.arange(len(jitter_knots)), jitter_knots)
  vibrato = voice.vibrato_depth * np.sin(2 * np.pi * voice.vibrato_hz * t_s + rng.uniform(0, 2 * np.pi))
  return voice.f0_hz * 2.0 ** ((semitones + declination) / 12.0) * (1.0 + vibrato + jitter)


def _glottal_source(voice: Voice, f0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Rosenberg-style glottal flow derivative with shimmer, aspiration noise and spectral tilt."""
  cycles = np.cumsum(f0 / SAMPLE_RATE) + rng.uniform()
  phase = cycles % 1.0
  t_open = voice.open_quotient * 0.65
  t_close = voice.open_quotient * 0.35
  # The closing phase ends abruptly (a slope break), which is what gives voices their harmonics.
  flow = np.where(phase < t_open, 0.5 - 0.5 * np.cos(np.pi * phase / t_open),
                  np.cos(0.5 * np.pi * np.minimum((phase - t_open) / t_close, 1.0)))
  shimmer = 1.0 + voice.shimmer * rng.standard_normal(int(cycles[-1]) + 2)
  flow *= shimmer[cycles.astype(np.int64)]
  pulses = np.diff(flow, prepend=flow[0]) * SAMPLE_RATE / (np.pi * voice.f0_hz)
  # Aspiration noise is strongest while the glottis is open.
  noise = rng.standard_normal(len(pulses)) * (0.3 + flow) * (voice.breathiness * 2.0)
  return signal.lfilter([1.0 - voice.tilt], [1.0, -voice.tilt], pulses + noise)


def synthesize_utterance(voice: Voice, channel: Channel, seconds: float, rng: np.random.Generator) -> np.ndarray:
  """One utterance as float samples in [-1, 1] at SAMPLE_RATE."""
  return synthesize(voice, channel, seconds, rng)[0]


def synthesize(voice: Voice, channel: Channel, seconds: float, rng: np.random.Generator):
  """(recording, dry speech): the utterance as recorded (synthesize_utterance) and the speech before the room,
  microphone and noise, whose loudness the speaker's mouth follows (the lip-synced video of the synthetic corpus)."""
  sr = SAMPLE_RATE
  n = int(round(seconds * sr))
  vowels, fricatives, accents = _plan(voice, n, rng)
  f0 = _f0_contour(voice, n, vowels, accents, rng)
  source = _glottal_source(voice, f0, rng)[:n]
  voicing = _ramp_envelope(n, [(s, e) for s, e, _ in vowels], int(0.02 * sr))
  source = source * voicing
  # Formants: each sample takes the vowel of its segment; the filter state runs on, and the
  # coefficient switches fall in silent gaps, so they do not click.
  voiced = np.zeros(n)
  zi = np.zeros((5, 2))
  bounds = [0] + [(vowels[i][1] + vowels[i + 1][0]) // 2 for i in range(len(vowels) - 1)] + [n]
  for (lo, hi), (_, _, v) in zip(zip(bounds[:-1], bounds[1:]), vowels):
    voiced[lo:hi], zi = signal.sosfilt(_formant_sos(VOWEL_F123[v], voice), source[lo:hi], zi=zi)
  if not vowels:
    voiced = source
  fric_sos = np.stack([_bandpass(voice.fricative_hz, 1.5)] * 2)
  fric = signal.sosfilt(fric_sos, rng.standard_normal(n)) * _ramp_envelope(n, fricatives, int(0.01 * sr))
  speech = voiced / (np.sqrt(np.mean(voiced ** 2)) + 1e-9) + 0.3 * fric
  return _apply_channel(speech, channel, rng), speech


def frame_rms(x: np.ndarray, fps: float) -> np.ndarray:
  """[floor(len(x) * fps / SAMPLE_RATE)] RMS of x over each video frame's window [k / fps, (k + 1) / fps) s."""
  x = np.asarray(x, np.float64)
  n = int(len(x) * fps // SAMPLE_RATE)
  starts = np.round(np.arange(n + 1) * SAMPLE_RATE / fps).astype(np.int64)
  return np.array([np.sqrt(np.mean(x[a:b] ** 2)) if b > a else 0.0 for a, b in zip(starts[:-1], starts[1:])])


def _bandpass(centre_hz: float, q: float) -> np.ndarray:
  """One second-order section of a unit-peak band-pass (RBJ audio-EQ cookbook), cheaper than butter()."""
  w = 2.0 * np.pi * centre_hz / SAMPLE_RATE
  alpha = np.sin(w) / (2.0 * q)
  return np.array([alpha, 0.0, -alpha, 1.0 + alpha, -2.0 * np.cos(w), 1.0 - alpha]) / (1.0 + alpha)


def _coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
  """Unit-RMS noise with a 1/f**exponent power spectrum."""
  spectrum = np.fft.rfft(rng.standard_normal(n))
  freqs = np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), 20.0)
  noise = np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n)
  return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def _apply_channel(speech: np.ndarray, channel: Channel, rng: np.random.Generator) -> np.ndarray:
  """Room tail, microphone EQ, background noise and level of one video's recording."""
  sr = SAMPLE_RATE
  n = len(speech)
  tail = int(channel.reverb_s * sr)
  impulse = rng.standard_normal(tail) * np.exp(-6.9 * np.arange(tail) / tail)  # -60 dB at reverb_s
  impulse *= channel.reverb / (np.sqrt(np.sum(impulse ** 2)) + 1e-12)
  impulse[0] += 1.0
  x = signal.fftconvolve(speech, impulse)[:n]
  x = x + channel.eq_tilt * np.diff(x, prepend=0.0)
  x = x + channel.eq_gain * signal.sosfilt(_bandpass(channel.eq_hz, 1.2)[None], x)
  rms = np.sqrt(np.mean(x ** 2)) + 1e-12
  x = x / rms + 10.0 ** (channel.noise_db / 20.0) * _coloured_noise(n, channel.noise_colour, rng)
  x = x * 10.0 ** (channel.level_db / 20.0) / (np.sqrt(np.mean(x ** 2)) + 1e-12)
  return np.clip(x, -1.0, 1.0)


def to_pcm16(x: np.ndarray) -> np.ndarray:
  """Float samples in [-1, 1] to int16 PCM."""
  return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
