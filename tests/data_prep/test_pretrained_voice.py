"""The legacy PyTorch checkpoint reader, the GE2E port (data_prep.pretrained.ge2e) and `mmvae extract`."""

import collections
import importlib
import importlib.util
import json
import pathlib
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from data_prep import pretrained
from data_prep.pretrained import ge2e  # before any stub webrtcvad exists: TRIMS_SILENCES is the real answer
from data_prep.pretrained import torch_pickle
from mmvae import cli

HAVE_RESEMBLYZER = importlib.util.find_spec("resemblyzer") is not None
needs_resemblyzer = pytest.mark.skipif(not HAVE_RESEMBLYZER, reason=f"resemblyzer not installed ({ge2e.INSTALL})")


# ---- a writer of the legacy format, as torch/serialization.py's _legacy_save lays it out ----

_DTYPE_STORAGE = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
                  np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
                  np.dtype("int32"): "IntStorage", np.dtype("uint8"): "ByteStorage", np.dtype("bool"): "BoolStorage"}


class FakeTensor:
  """A view (offset, size, stride in elements) into a FakeStorage, pickled as torch pickles a tensor."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def __reduce__(self):
    rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
    return rebuild, (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                     collections.OrderedDict())

  def expected(self) -> np.ndarray:
    flat = self.storage.data
    return np.array([flat[self.offset + sum(i * s for i, s in zip(index, self.stride))]
                     for index in np.ndindex(*self.size)], flat.dtype).reshape(self.size)


class FakeStorage:
  def __init__(self, data, key):
    self.data, self.key = np.ascontiguousarray(data), key


def write_legacy(path, obj, storages, monkeypatch, byte_order="<"):
  """Writes OBJ (holding FakeTensors) in the legacy layout: magic, protocol, sys_info, object, keys, storages."""
  torch = types.ModuleType("torch")
  utils = types.ModuleType("torch._utils")
  for name in set(_DTYPE_STORAGE.values()):
    setattr(torch, name, type(name, (), {"__module__": "torch"}))

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called: only pickled by reference")
  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  torch._utils = utils
  monkeypatch.setitem(sys.modules, "torch", torch)
  monkeypatch.setitem(sys.modules, "torch._utils", utils)

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, FakeStorage):
        kind = getattr(torch, _DTYPE_STORAGE[obj.data.dtype])
        return ("storage", kind, obj.key, "cpu", obj.data.size, None)
      return None

  with open(path, "wb") as f:
    pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2)
    pickle.dump(1001, f, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": byte_order == "<",
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
    Pickler(f, protocol=2).dump(obj)
    pickle.dump([s.key for s in storages], f, protocol=2)
    for s in storages:
      f.write(struct.pack(byte_order + "q", s.data.size))
      f.write(s.data.astype(s.data.dtype.newbyteorder(byte_order)).tobytes())
  monkeypatch.delitem(sys.modules, "torch")
  monkeypatch.delitem(sys.modules, "torch._utils")


def test_reader_gives_every_tensor_of_a_file_written_in_the_legacy_layout(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  flat = FakeStorage(rng.normal(size=60).astype(np.float32), "1001")  # shared, as cuDNN's flat LSTM weights
  ints = FakeStorage(np.arange(-5, 7, dtype=np.int64), "77")
  half = FakeStorage(rng.normal(size=6).astype(np.float16), "5")
  flags = FakeStorage(np.array([True, False, True]), "9")
  tensors = {
      "a": FakeTensor(flat, 0, (4, 5), (5, 1)),
      "a_t": FakeTensor(flat, 0, (5, 4), (1, 5)),  # a transposed view of the same storage
      "b": FakeTensor(flat, 20, (40,), (1,)),
      "strided": FakeTensor(flat, 3, (3, 2), (10, 2)),
      "i": FakeTensor(ints, 2, (2, 3), (3, 1)),
      "h": FakeTensor(half, 1, (5,), (1,)),
      "f": FakeTensor(flags, 0, (3,), (1,)),
      "scalar": FakeTensor(flat, 7, (), ()),
  }
  state = collections.OrderedDict((k, tensors[k]) for k in ("a", "a_t", "b", "strided"))
  obj = {"step": 12, "model_state": state, "extra": [tensors["i"], (tensors["h"], tensors["f"])],
         "scalar": tensors["scalar"], "note": "text"}
  path = tmp_path / "legacy.pt"
  write_legacy(path, obj, [half, flat, ints, flags], monkeypatch)
  assert "torch" not in sys.modules or not isinstance(sys.modules["torch"], types.ModuleType) or \
      hasattr(sys.modules["torch"], "__file__")  # the fake module is gone

  loaded = torch_pickle.load(path)
  assert loaded["step"] == 12 and loaded["note"] == "text"
  assert isinstance(loaded["model_state"], collections.OrderedDict) and list(loaded["model_state"]) == list(state)
  arrays = torch_pickle.read_arrays(path)
  names = {"model_state.a": "a", "model_state.a_t": "a_t", "model_state.b": "b", "model_state.strided": "strided",
           "extra.0": "i", "extra.1.0": "h", "extra.1.1": "f", "scalar": "scalar"}
  assert set(arrays) == set(names)
  for name, key in names.items():
    want = tensors[key].expected()
    assert arrays[name].dtype == want.dtype and arrays[name].shape == want.shape, name
    np.testing.assert_array_equal(arrays[name], want, err_msg=name)
  np.testing.assert_array_equal(arrays["model_state.a_t"], arrays["model_state.a"].T)


def test_reader_refuses_foreign_code_truncation_and_the_zip_format(tmp_path, monkeypatch):
  path = tmp_path / "evil.pt"
  with open(path, "wb") as f:
    for header in (0x1950a86a20f9469cfc6c, 1001, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    f.write(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")  # os.system('true')
  with pytest.raises(ValueError, match="os.system is not part of a tensor checkpoint"):
    torch_pickle.load(path)

  good = tmp_path / "good.pt"
  storage = FakeStorage(np.arange(8, dtype=np.float32), "1")
  write_legacy(good, {"w": FakeTensor(storage, 0, (8,), (1,))}, [storage], monkeypatch)
  cut = tmp_path / "cut.pt"
  cut.write_bytes(good.read_bytes()[:-4])
  with pytest.raises(ValueError, match="truncated"):
    torch_pickle.load(cut)
  zipped = tmp_path / "new.pt"
  zipped.write_bytes(b"PK\x03\x04" + bytes(40))
  with pytest.raises(ValueError, match="not a legacy PyTorch checkpoint"):
    torch_pickle.load(zipped)


@needs_resemblyzer
def test_reader_reads_resemblyzers_checkpoint():
  arrays = torch_pickle.read_arrays(ge2e.weights_path())
  assert arrays["model_state.lstm.weight_ih_l0"].shape == (1024, 40)
  assert arrays["model_state.linear.weight"].shape == (256, 256)
  weights = ge2e.load_weights()
  assert len(weights) == 14 and all(np.isfinite(w).all() and w.dtype == np.float32 for w in weights.values())
  # The LSTM's weights share one flat storage: distinct tensors must not alias one another's elements.
  assert not np.array_equal(weights["lstm.weight_hh_l1"], weights["lstm.weight_hh_l2"])
  assert not np.array_equal(weights["lstm.bias_ih_l0"], weights["lstm.bias_hh_l0"])


# ---- the front end against resemblyzer's own code ----


class EnergyVad:
  """A stand-in for webrtcvad.Vad: a window is speech when its RMS exceeds 500 (of 32767)."""

  def __init__(self, mode=3):
    self.mode = mode

  def is_speech(self, buf, sample_rate):
    frame = np.frombuffer(buf, np.int16).astype(np.float64)
    return bool(np.sqrt(np.mean(frame ** 2)) > 500)


@pytest.fixture(scope="module")
def resemblyzer_code():
  """resemblyzer's audio and voice_encoder modules, imported from the installed files with stub torch and webrtcvad
  modules (neither is installed); the stubs leave sys.modules right after the import (scipy looks for a torch
  there), the resemblyzer modules after the tests."""
  if not HAVE_RESEMBLYZER:
    pytest.skip(f"resemblyzer not installed ({ge2e.INSTALL})")
  folder = pathlib.Path(list(importlib.util.find_spec("resemblyzer").submodule_search_locations)[0])
  saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in ("resemblyzer", "torch", "webrtcvad")}
  package = importlib.util.module_from_spec(importlib.util.spec_from_file_location(
      "resemblyzer", folder / "__init__.py", submodule_search_locations=[str(folder)]))  # not executed: it needs torch
  torch = types.ModuleType("torch")
  torch.nn = types.SimpleNamespace(Module=object)
  torch.device = torch.FloatTensor = object
  torch.Tensor = type("Tensor", (), {})
  webrtcvad = types.ModuleType("webrtcvad")
  webrtcvad.Vad = EnergyVad
  sys.modules.update({"resemblyzer": package, "torch": torch, "webrtcvad": webrtcvad})
  try:
    code = types.SimpleNamespace(audio=importlib.import_module("resemblyzer.audio"),
                                 encoder=importlib.import_module("resemblyzer.voice_encoder"),
                                 hparams=importlib.import_module("resemblyzer.hparams"))
    for k in ("torch", "webrtcvad"):  # the modules keep their own references
      del sys.modules[k]
    yield code
  finally:
    for k in [k for k in sys.modules if k.split(".")[0] in ("resemblyzer", "torch", "webrtcvad")]:
      del sys.modules[k]
    sys.modules.update(saved)


def speech_like(seconds=3.3, seed=0, rate=16000):
  """Tones and noise bursts separated by silences of 0.05-0.6 s: a signal with long and short pauses."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * rate)) / rate
  wave = np.zeros_like(t)
  start = 0.1
  while start < seconds - 0.3:
    length = rng.uniform(0.15, 0.5)
    on = (t >= start) & (t < start + length)
    wave[on] = 0.2 * np.sin(2 * np.pi * rng.uniform(120, 300) * t[on]) + 0.05 * rng.normal(size=on.sum())
    start += length + rng.choice([0.05, 0.1, 0.4, 0.6])
  return wave.astype(np.float32)


def test_front_end_equals_resemblyzers_functions(resemblyzer_code):
  audio, encoder, hparams = resemblyzer_code.audio, resemblyzer_code.encoder, resemblyzer_code.hparams
  assert (hparams.sampling_rate, hparams.mel_window_length, hparams.mel_window_step, hparams.mel_n_channels,
          hparams.partials_n_frames, hparams.audio_norm_target_dBFS) == (
              ge2e.SAMPLE_RATE, ge2e.WINDOW_MS, ge2e.HOP_MS, ge2e.N_MELS, ge2e.PARTIAL_FRAMES, ge2e.NORM_TARGET_DBFS)
  wave = speech_like()
  np.testing.assert_array_equal(ge2e.mel_spectrogram(wave), audio.wav_to_mel_spectrogram(wave))
  for scale in (0.001, 1.0):  # raised to -30 dBFS; already louder: left as it is
    np.testing.assert_allclose(ge2e.normalize_volume(wave * scale),
                               audio.normalize_volume(wave * scale, -30, increase_only=True), rtol=1e-6)
  np.testing.assert_array_equal(ge2e.trim_long_silences(wave, EnergyVad()), audio.trim_long_silences(wave))
  assert len(ge2e.trim_long_silences(wave, EnergyVad())) < len(wave) - 16000 * 0.3  # the long pauses went
  for n in (100, 8000, 25600, 26000, 37000, 16000 * 6 + 17, 200000):
    wav_slices, mel_slices = encoder.VoiceEncoder.compute_partial_slices(n, 1.3, 0.75)
    assert ge2e.partial_slices(n) == [(s.start, s.stop) for s in mel_slices], n


def test_mel_front_end_equals_librosa_written_out():
  """The documented front end (hann-windowed 400-point STFT, hop 160, power, 40 Slaney mel bands), by hand."""
  import librosa
  wave = speech_like(seconds=1.7, seed=3)
  spectrum = np.abs(librosa.stft(wave, n_fft=400, hop_length=160, window="hann", center=True,
                                 pad_mode="constant")) ** 2
  want = (librosa.filters.mel(sr=16000, n_fft=400, n_mels=40) @ spectrum).T
  np.testing.assert_allclose(ge2e.mel_spectrogram(wave), want, rtol=1e-5, atol=1e-7)
  mels = ge2e.partial_mels(wave)  # 1.7 s: one window of 160 frames, zero-padded past the wave
  assert mels.shape == (1, 160, 40)
  np.testing.assert_allclose(mels[0, :150], want[:150], rtol=1e-5, atol=1e-7)


# ---- the network against an independent NumPy forward pass ----


def numpy_forward(w: dict, mels_PxTxM) -> np.ndarray:
  """GE2E in float64 NumPy, step by step: PyTorch's LSTM (gates i, f, g, o) x3, linear, ReLU, L2 norm."""
  def sigmoid(z):
    return 1 / (1 + np.exp(-z))
  x = np.asarray(mels_PxTxM, np.float64)
  for layer in range(3):
    w_ih, w_hh = w[f"lstm.weight_ih_l{layer}"].astype(np.float64), w[f"lstm.weight_hh_l{layer}"].astype(np.float64)
    b_ih, b_hh = w[f"lstm.bias_ih_l{layer}"].astype(np.float64), w[f"lstm.bias_hh_l{layer}"].astype(np.float64)
    h = np.zeros((x.shape[0], 256))
    c = np.zeros((x.shape[0], 256))
    outputs = []
    for t in range(x.shape[1]):
      z = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
      i, f, g, o = sigmoid(z[:, :256]), sigmoid(z[:, 256:512]), np.tanh(z[:, 512:768]), sigmoid(z[:, 768:])
      c = f * c + i * g
      h = o * np.tanh(c)
      outputs.append(h)
    x = np.stack(outputs, axis=1)
  raw = np.maximum(x[:, -1] @ w["linear.weight"].astype(np.float64).T + w["linear.bias"], 0)
  return raw / np.linalg.norm(raw, axis=1, keepdims=True)


@needs_resemblyzer
def test_flax_port_equals_a_numpy_forward_pass_on_real_speech(shared_data):
  fsdd = shared_data / "fsdd" / "recordings"
  mini = shared_data / "voxceleb1-mini" / "wav"
  paths = sorted(fsdd.glob("3_*_1.wav"))[:2] + sorted(mini.glob("*/*/*.wav"))[:1]
  if len(paths) < 2:
    pytest.skip(f"no real speech in {fsdd} or {mini}")
  weights = ge2e.load_weights()
  waves = [ge2e.load_wave(p) for p in paths]
  mels = np.concatenate([ge2e.partial_mels(w) for w in waves])
  assert len(mels) > len(paths)  # the VoxCeleb clip (up to 6 s) gives several partial windows
  want = numpy_forward(weights, mels)
  got = ge2e.embed_partials(mels)
  assert np.abs(got - want).max() < 1e-5
  pooled = ge2e.embed_wave(waves[-1], preprocessed=True)
  last = numpy_forward(weights, ge2e.partial_mels(waves[-1])).mean(axis=0)
  assert np.abs(pooled - last / np.linalg.norm(last)).max() < 1e-5


# ---- speaker verification on FSDD ----


def equal_error_rate(scores, same) -> float:
  """EER by brute force: at each observed score as threshold (accept >= t), the mean of FAR and FRR where they are
  closest."""
  best = (2.0, 1.0)
  for t in np.unique(scores):
    far = np.mean(scores[~same] >= t)
    frr = np.mean(scores[same] < t)
    best = min(best, (abs(far - frr), (far + frr) / 2))
  return best[1]


def test_equal_error_rate_helper():
  assert equal_error_rate(np.array([0.9, 0.8, 0.2, 0.1]), np.array([True, True, False, False])) == 0
  assert equal_error_rate(np.array([0.1, 0.2, 0.8, 0.9]), np.array([True, True, False, False])) == 1


def verification_eer(x, speakers) -> float:
  """EER over all pairs of rows of x (unit vectors; cosine scores), same speaker = a target pair."""
  upper = np.triu_indices(len(x), 1)
  return equal_error_rate((x @ x.T)[upper], (speakers[:, None] == speakers[None, :])[upper])


# Measured with the exact resemblyzer rule: 0.195 on this seeded 240-recording subset, 0.196 on all 3,000 (4.5 M
# pairs); a wrongly loaded network gives about 0.5. Not the issue's <= 5%: FSDD's clips are single digits of 0.45 s
# on average (one zero-padded 1.6 s window each) at 8 kHz (the mel bands above 4 kHz empty). The same network gives
# 0.094 on voxceleb1-mini's 6 s clips, 0.131 on them through 8 kHz and 0.384 on their first 0.5 s.
FSDD_MAX_EER = 0.25


@needs_resemblyzer
def test_fsdd_speaker_verification_is_far_from_chance(shared_data):
  recordings = shared_data / "fsdd" / "recordings"
  paths = sorted(recordings.glob("*.wav"))
  if len(paths) < 3000:
    pytest.skip(f"FSDD not found at {recordings}")
  chosen = sorted(np.random.default_rng(0).choice(len(paths), 240, replace=False))
  paths = [paths[i] for i in chosen]
  speakers = np.array([p.stem.split("_")[1] for p in paths])
  x = ge2e.embed_utterances(paths)  # 8 kHz files: resampled to 16 kHz by librosa
  assert x.shape == (240, 256) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
  assert verification_eer(x, speakers) <= FSDD_MAX_EER


# ---- the registry, the missing package, `mmvae extract` ----


def test_registry_names_three_extractors_with_their_contract():
  assert set(pretrained.EXTRACTORS) == {"ge2e", "dlib_face", "wordllama"}
  module = pretrained.extractor("ge2e")
  assert (module.NAME, module.DIM, module.INSTALL) == ("ge2e", 256, "pip install --no-deps resemblyzer")
  for name in pretrained.EXTRACTORS:  # the help text's install commands are the modules' own
    module = pretrained.extractor(name)
    assert (module.NAME, module.INSTALL) == (name, pretrained.INSTALLS[name])
  with pytest.raises(ValueError, match="unknown extractor 'nope'; known: ge2e, dlib_face, wordllama"):
    pretrained.extractor("nope")


def test_a_missing_package_is_one_line_naming_the_install_command(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(ge2e, "PACKAGE", "resemblyzer_is_not_installed")
  ge2e.model.cache_clear()
  specs = [{"id": "a/b/1.wav", "wav": str(tmp_path / "1.wav"), "faces": [], "split": "train"}]
  monkeypatch.setattr(pretrained, "list_examples", lambda root, corpus: specs)
  try:
    with pytest.raises(ValueError, match=r"pip install --no-deps resemblyzer$"):
      ge2e.embed_examples(specs)
    rc = cli.main(["extract", "ge2e", "--root", str(tmp_path), "--out", str(tmp_path / "e.npz")])
  finally:
    ge2e.model.cache_clear()
  err = capsys.readouterr().err.strip()
  assert rc == 2 and "\n" not in err and err.endswith("install them with: pip install --no-deps resemblyzer")
  assert not (tmp_path / "e.npz").exists()


@needs_resemblyzer
def test_extract_on_voxceleb1_mini_joins_every_example(shared_data, tmp_path):
  from data_prep import join, prepare
  from mmvae import data
  root = shared_data / "voxceleb1-mini"
  if not (root / "iden_split.txt").is_file():
    pytest.skip(f"voxceleb1-mini not found at {root}")
  out = tmp_path / "ge2e.npz"
  assert cli.main(["extract", "ge2e", "--root", str(root), "--out", str(out)]) == 0
  with np.load(out) as archive:
    ids, x, splits = archive["ids"], archive["embeddings"], archive["splits"]
  assert x.shape == (155, 256) and x.dtype == np.float32 and len(set(ids.tolist())) == 155
  assert set(splits.tolist()) == {"train", "validation", "test"}
  assert verification_eer(x, np.array([i.split("/")[0] for i in ids.tolist()])) <= 0.12  # measured 0.094
  prepare.prepare_voxceleb1(root, tmp_path / "data", config="voxceleb1:tiny", workers=1)
  join.join_embeddings(tmp_path / "data", out, "voice_ge2e", tmp_path / "joined")
  row_of = {i: n for n, i in enumerate(ids.tolist())}
  ds = data.Dataset(tmp_path / "joined")
  seen = 0
  for split in ds.splits:
    arrays = ds.arrays(split)
    for i, vector in zip(arrays["id"].astype(str), arrays["voice_ge2e"]):
      np.testing.assert_array_equal(vector, x[row_of[i]])
      assert splits[row_of[i]] == split
      seen += 1
  assert seen == 155
  manifest = json.loads((tmp_path / "joined" / "manifest.json").read_text())
  assert {"name": "voice_ge2e", "kind": "vector", "shape": [256], "dtype": "float32"} in manifest["modalities"]
