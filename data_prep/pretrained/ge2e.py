"""GE2E speaker embeddings (d-vectors): resemblyzer's pretrained voice encoder, ported to Flax NNX, no PyTorch.

The weights are the `resemblyzer` package's `pretrained.pt` (a legacy PyTorch checkpoint, read by torch_pickle);
install them alone, without the PyTorch that the package's own code needs: `pip install --no-deps resemblyzer`.
The network and its front end follow resemblyzer (voice_encoder.py, audio.py, hparams.py):
  wave: mono, resampled to 16 kHz (librosa, as resemblyzer), volume raised to -30 dBFS (never lowered); long
        silences trimmed with webrtcvad's VAD when `webrtcvad` is importable, else left in (TRIMS_SILENCES)
  mel:  librosa.feature.melspectrogram(y, sr=16000, n_fft=400 (25 ms), hop_length=160 (10 ms), n_mels=40), a power
        spectrogram (not log), float32, [T, 40]
  net:  3 LSTM layers (40 -> 256, PyTorch's gates i, f, g, o and two biases), the last layer's final hidden state,
        linear 256 -> 256, ReLU, L2 normalisation: one [256] vector per 1.6 s (160-frame) partial window
  utterance: partial windows every round(16000 / 1.3 / 160) = 77 frames covering the wave (zero-padded; the last one
        kept when it is at least 75% covered), the L2-normalised mean of their vectors.
The network is frozen (its weights are `Frozen` variables, not nnx.Param) and jit-compiled.
"""

import functools
import importlib.util
import pathlib

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

NAME = "ge2e"
DIM = 256
INSTALL = "pip install --no-deps resemblyzer"
PACKAGE = "resemblyzer"

SAMPLE_RATE = 16000
WINDOW_MS, HOP_MS, N_MELS = 25, 10, 40
N_FFT = SAMPLE_RATE * WINDOW_MS // 1000  # 400
HOP = SAMPLE_RATE * HOP_MS // 1000  # 160
PARTIAL_FRAMES = 160  # 1.6 s
RATE, MIN_COVERAGE = 1.3, 0.75  # partial windows per second; least coverage of a kept last window
NORM_TARGET_DBFS = -30
INT16_MAX = 2 ** 15 - 1
VAD_WINDOW_MS, VAD_AVERAGE_WIDTH, VAD_MAX_SILENCE = 30, 8, 6
HIDDEN, LAYERS = 256, 3
BATCH = 32  # partial windows per compiled call (the last batch is zero-padded: one compiled shape)


def _webrtcvad():
  try:
    import webrtcvad  # pylint: disable=g-import-not-at-top
    return webrtcvad
  except ImportError:
    return None


TRIMS_SILENCES = _webrtcvad() is not None


def weights_path() -> pathlib.Path:
  """The installed resemblyzer's pretrained.pt (found without importing the package, which needs PyTorch)."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(f"the {NAME} extractor needs the {PACKAGE} package's weights; install them with: {INSTALL}")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"
  if not path.is_file():
    raise ValueError(f"{path} is missing: reinstall with: {INSTALL}")
  return path


def load_weights(path=None) -> dict[str, np.ndarray]:
  """The network's arrays from a resemblyzer checkpoint (default: the installed one), named as in its state dict."""
  from data_prep.pretrained import torch_pickle  # pylint: disable=g-import-not-at-top
  path = weights_path() if path is None else pathlib.Path(path)
  arrays = torch_pickle.read_arrays(path)
  names = [f"lstm.{kind}_l{layer}" for layer in range(LAYERS)
           for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")] + ["linear.weight", "linear.bias"]
  state = {n: arrays.get(f"model_state.{n}") for n in names}
  missing = [n for n, v in state.items() if v is None]
  if missing:
    raise ValueError(f"{path}: no model_state.{missing[0]} (and {len(missing) - 1} more): not resemblyzer's encoder")
  for layer in range(LAYERS):
    d_in = N_MELS if layer == 0 else HIDDEN
    for kind, shape in (("weight_ih", (4 * HIDDEN, d_in)), ("weight_hh", (4 * HIDDEN, HIDDEN)),
                        ("bias_ih", (4 * HIDDEN,)), ("bias_hh", (4 * HIDDEN,))):
      if state[f"lstm.{kind}_l{layer}"].shape != shape:
        raise ValueError(f"{path}: lstm.{kind}_l{layer} has shape {state[f'lstm.{kind}_l{layer}'].shape}; "
                         f"expected {shape}")
  return {n: np.asarray(v, np.float32) for n, v in state.items()}


class Frozen(nnx.Variable):
  """A pretrained weight: not an nnx.Param, so optimizers filtering on Param never update it."""


class LSTMLayer(nnx.Module):
  """One PyTorch-layout LSTM layer: gates = x W_ih^T + b_ih + h W_hh^T + b_hh, split as i, f, g, o."""

  def __init__(self, weight_ih, weight_hh, bias_ih, bias_hh):
    self.w_ih_4HxI = Frozen(jnp.asarray(weight_ih))
    self.w_hh_4Hx4H = Frozen(jnp.asarray(weight_hh))
    self.b_4H = Frozen(jnp.asarray(bias_ih) + jnp.asarray(bias_hh))

  def __call__(self, x_BxTxI):
    """All hidden states [B, T, H] of the layer, from zero initial state."""
    w_hh = self.w_hh_4Hx4H[...]
    hidden = w_hh.shape[1]
    inputs_TxBx4H = jnp.einsum("bti,gi->tbg", x_BxTxI, self.w_ih_4HxI[...]) + self.b_4H[...]

    def step(carry, gates_in_Bx4H):
      h_BxH, c_BxH = carry
      gates = gates_in_Bx4H + h_BxH @ w_hh.T
      i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
      c_BxH = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
      h_BxH = jax.nn.sigmoid(o) * jnp.tanh(c_BxH)
      return (h_BxH, c_BxH), h_BxH

    zeros = jnp.zeros((x_BxTxI.shape[0], hidden), x_BxTxI.dtype)
    _, h_TxBxH = jax.lax.scan(step, (zeros, zeros), inputs_TxBx4H)
    return jnp.swapaxes(h_TxBxH, 0, 1)


class GE2E(nnx.Module):
  """Partial-window d-vectors: mels [B, T, 40] -> L2-normalised embeddings [B, 256]."""

  def __init__(self, weights: dict[str, np.ndarray]):
    self.layers = nnx.List([LSTMLayer(*(weights[f"lstm.{k}_l{n}"] for k in ("weight_ih", "weight_hh", "bias_ih",
                                                                          "bias_hh")))
                            for n in range(LAYERS)])
    self.w_DxH = Frozen(jnp.asarray(weights["linear.weight"]))
    self.b_D = Frozen(jnp.asarray(weights["linear.bias"]))

  def __call__(self, mels_BxTxM):
    h = mels_BxTxM
    for layer in self.layers:
      h = layer(h)
    raw_BxD = jax.nn.relu(h[:, -1] @ self.w_DxH[...].T + self.b_D[...])
    return raw_BxD / jnp.linalg.norm(raw_BxD, axis=1, keepdims=True)


@nnx.jit
def _forward(model: GE2E, mels_BxTxM):
  return model(mels_BxTxM)


# ---- the front end (resemblyzer/audio.py) ----


def normalize_volume(wave, target_dbfs: float = NORM_TARGET_DBFS):
  """resemblyzer's normalize_volume(increase_only=True): scaled up to target_dbfs RMS, never down; silence as is."""
  rms = np.sqrt(np.mean((wave * INT16_MAX) ** 2))
  if rms == 0:
    return wave
  change_db = target_dbfs - 20 * np.log10(rms / INT16_MAX)
  return wave if change_db < 0 else wave * (10 ** (change_db / 20))


def trim_long_silences(wave, vad=None):
  """resemblyzer's trim_long_silences: drops silences longer than 6 VAD windows of 30 ms (webrtcvad, mode 3)."""
  import scipy.ndimage  # pylint: disable=g-import-not-at-top
  if vad is None:
    vad = _webrtcvad().Vad(mode=3)
  window = VAD_WINDOW_MS * SAMPLE_RATE // 1000
  wave = wave[:len(wave) - len(wave) % window]
  pcm = np.round(wave * INT16_MAX).astype("<i2").tobytes()
  flags = np.array([vad.is_speech(pcm[s * 2:(s + window) * 2], sample_rate=SAMPLE_RATE)
                    for s in range(0, len(wave), window)], dtype=float)
  width = VAD_AVERAGE_WIDTH
  padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
  sums = np.cumsum(padded, dtype=float)
  sums[width:] = sums[width:] - sums[:-width]
  mask = np.round(sums[width - 1:] / width).astype(bool)
  mask = scipy.ndimage.binary_dilation(mask, np.ones(VAD_MAX_SILENCE + 1))
  return wave[np.repeat(mask, window)]


def preprocess(wave, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """resemblyzer's preprocess_wav: float32 mono at 16 kHz, volume normalised, long silences trimmed (webrtcvad)."""
  import librosa  # pylint: disable=g-import-not-at-top
  wave = np.asarray(wave, np.float32)
  if wave.ndim != 1:
    raise ValueError(f"a wave must be mono [samples]; got shape {list(wave.shape)}")
  if sample_rate != SAMPLE_RATE:
    wave = librosa.resample(wave, orig_sr=sample_rate, target_sr=SAMPLE_RATE)
  wave = normalize_volume(wave)
  if TRIMS_SILENCES:
    wave = trim_long_silences(wave)
  return wave


def mel_spectrogram(wave_16k) -> np.ndarray:
  """resemblyzer's wav_to_mel_spectrogram: the 40-band mel power spectrogram [T, 40] float32 (25 ms / 10 ms)."""
  import librosa  # pylint: disable=g-import-not-at-top
  frames = librosa.feature.melspectrogram(y=np.asarray(wave_16k, np.float32), sr=SAMPLE_RATE, n_fft=N_FFT,
                                          hop_length=HOP, n_mels=N_MELS)
  return frames.astype(np.float32).T


def partial_slices(n_samples: int, rate: float = RATE, min_coverage: float = MIN_COVERAGE) -> list[tuple[int, int]]:
  """resemblyzer's compute_partial_slices: [(first, stop) mel frame] of each 160-frame partial window."""
  n_frames = int(np.ceil((n_samples + 1) / HOP))
  step = int(np.round((SAMPLE_RATE / rate) / HOP))
  if not 0 < step <= PARTIAL_FRAMES:
    raise ValueError(f"rate {rate}: partial windows every {step} frames; need 1..{PARTIAL_FRAMES}")
  slices = [(i, i + PARTIAL_FRAMES) for i in range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step)]
  first, stop = slices[-1]
  coverage = (n_samples - first * HOP) / ((stop - first) * HOP)
  if coverage < min_coverage and len(slices) > 1:
    slices = slices[:-1]
  return slices


def partial_mels(wave_16k) -> np.ndarray:
  """The partial windows' mels [P, 160, 40] of a preprocessed 16 kHz wave (zero-padded to the last window)."""
  wave_16k = np.asarray(wave_16k, np.float32)
  slices = partial_slices(len(wave_16k))
  needed = slices[-1][1] * HOP
  if needed >= len(wave_16k):
    wave_16k = np.pad(wave_16k, (0, needed - len(wave_16k)))
  mel = mel_spectrogram(wave_16k)
  return np.stack([mel[a:b] for a, b in slices])


# ---- the encoder ----


@functools.lru_cache(maxsize=1)
def model() -> GE2E:
  """The frozen network with the installed weights (loaded once)."""
  return GE2E(load_weights())


def embed_partials(mels_PxTxM, net: GE2E | None = None) -> np.ndarray:
  """[P, 256] d-vectors of partial-window mels, BATCH at a time through the jit-compiled network."""
  net = model() if net is None else net
  mels_PxTxM = np.asarray(mels_PxTxM, np.float32)
  out = []
  for lo in range(0, len(mels_PxTxM), BATCH):
    chunk = mels_PxTxM[lo:lo + BATCH]
    padded = np.concatenate([chunk, np.ones((BATCH - len(chunk), *chunk.shape[1:]), np.float32)])
    out.append(np.asarray(_forward(net, jnp.asarray(padded)))[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)


def _pooled(partials_PxD) -> np.ndarray:
  mean = partials_PxD.astype(np.float64).mean(axis=0)
  return (mean / np.linalg.norm(mean)).astype(np.float32)


def embed_wave(wave_16k, preprocessed: bool = False, net: GE2E | None = None) -> np.ndarray:
  """The utterance d-vector [256] of a 16 kHz mono wave (preprocessed as resemblyzer's preprocess_wav unless told)."""
  wave = np.asarray(wave_16k, np.float32) if preprocessed else preprocess(wave_16k)
  return _pooled(embed_partials(partial_mels(wave), net))


def load_wave(path) -> np.ndarray:
  """An audio file as resemblyzer's preprocess_wav reads it: librosa.load at its own rate, then preprocess."""
  import librosa  # pylint: disable=g-import-not-at-top
  try:
    wave, rate = librosa.load(str(path), sr=None)
  except Exception as e:  # pylint: disable=broad-except  (soundfile/audioread errors vary)
    raise ValueError(f"cannot read audio {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  return preprocess(wave, rate)


def embed_utterances(paths, progress: bool = False, net: GE2E | None = None) -> np.ndarray:
  """[N, 256] utterance d-vectors of audio files; partial windows of many files share batches."""
  from mmvae import progress as progress_lib  # pylint: disable=g-import-not-at-top
  net = model() if net is None else net
  paths = list(paths)
  bar = progress_lib.bar(total=len(paths), desc=f"{NAME} embeddings", unit="file", dynamic_ncols=True,
                         disable=not progress)
  out = np.zeros((len(paths), DIM), np.float32)
  pending_mels, pending_owner = [], []

  def flush():
    if not pending_mels:
      return
    vectors = embed_partials(np.concatenate(pending_mels), net)
    owners = np.concatenate(pending_owner)
    for n in np.unique(owners):
      out[n] = _pooled(vectors[owners == n])
    bar.update(len(np.unique(owners)))
    pending_mels.clear()
    pending_owner.clear()

  count = 0
  for n, path in enumerate(paths):
    mels = partial_mels(load_wave(path))
    pending_mels.append(mels)
    pending_owner.append(np.full(len(mels), n))
    count += len(mels)
    if count >= 4 * BATCH:
      flush()
      count = 0
  flush()
  bar.close()
  return out


def embed_examples(specs: list[dict], progress: bool = True) -> np.ndarray:
  """[N, 256] d-vectors of data_prep example specs' `wav` files."""
  model()  # the install message before any audio is read
  return embed_utterances([s["wav"] for s in specs], progress=progress)
