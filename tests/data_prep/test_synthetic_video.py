"""The lip-synced synthetic corpus (`generate_corpus(video=True)`, `prep synthetic --video`) and its frame sequences."""

import hashlib
import pathlib
import shutil

import numpy as np
import pytest
import soundfile
from PIL import Image

from data_prep import prepare, synthetic, voxceleb1
from mmvae import cli
from mmvae import config as config_lib
from mmvae import data

TINY = dict(identities=3, videos_per_identity=3, utterances_per_video=2, frames_per_video=2, utterance_seconds=3.0)
FPS, SR = 25, 16000
STEPS = int(3.0 * SR) // (SR // FPS)  # 75 whole 40 ms frames in a 3 s utterance


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
  return synthetic.generate_corpus(tmp_path_factory.mktemp("video") / "raw", seed=0, video=True, workers=1,
                                   progress=False, **TINY)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(video dataset folder, non-video dataset folder) of the same seed and corpus arguments."""
  base = tmp_path_factory.mktemp("prepared")
  prepare.prepare_synthetic(base / "video", seed=0, workers=2, video=True, **TINY)
  prepare.prepare_synthetic(base / "plain", seed=0, workers=2, **TINY)
  return base / "video", base / "plain"


def _hashes(root: pathlib.Path) -> dict:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def _utterances(root: pathlib.Path) -> list:
  """[(id, wav path, its per-utterance frame folder)] in iden_split order."""
  names = {line.split("\t")[0]: line.split("\t")[1] for line in (root / "vox1_meta.csv").read_text().splitlines()[1:]}
  out = []
  for line in (root / "iden_split.txt").read_text().splitlines():
    rel = line.split()[1]
    identity, video, utt = rel.split("/")
    # The official per-utterance layout: the utterance number without its zeros.
    out.append((rel, root / "wav" / rel,
                root / "unzippedIntervalFaces" / "data" / names[identity] / "1.6" / video / str(int(utt[:-4]))))
  return out


def _rms_25fps(wav: pathlib.Path) -> np.ndarray:
  x, sr = soundfile.read(wav)
  n = len(x) * FPS // sr
  return np.sqrt((x[:n * (sr // FPS)].reshape(n, sr // FPS) ** 2).mean(axis=1))


def _mouth_darkness(frames: np.ndarray) -> np.ndarray:
  """Per frame, the number of dark pixels in the lower middle of the face crop, where the mouth is."""
  s = frames.shape[1]
  box = frames[:, int(0.53 * s):int(0.875 * s), int(0.375 * s):int(0.625 * s)].astype(np.float64)
  return ((box @ [0.299, 0.587, 0.114]) < 60).sum(axis=(1, 2))


def _own_logmel(x: np.ndarray, n_mels: int = 40, n_fft: int = 1024) -> np.ndarray:
  """[L, n_mels] per 40 ms window: unit-RMS wave, Hamming, power, HTK mel filters from 20 Hz, log, per-band z-score."""
  mel = lambda f: 2595 * np.log10(1 + f / 700)
  hz = lambda m: 700 * (10 ** (m / 2595) - 1)
  edges = hz(np.linspace(mel(20), mel(0.975 * SR / 2), n_mels + 2))
  f = np.arange(n_fft // 2 + 1) * SR / n_fft
  fb = np.maximum(0, np.minimum((f - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None]),
                                (edges[2:, None] - f) / (edges[2:, None] - edges[1:-1, None])))
  x = x - x.mean()
  x = x / np.sqrt(np.mean(x ** 2))
  n = len(x) // (SR // FPS)
  power = np.abs(np.fft.rfft(x[:n * (SR // FPS)].reshape(n, -1) * np.hamming(SR // FPS), n_fft)) ** 2
  logmel = np.log(power @ fb.T + 1e-6)
  return (logmel - logmel.mean(axis=0)) / logmel.std(axis=0)


def test_same_seed_same_bytes_other_seed_differs_and_video_adds_only_clips(corpus, tmp_path):
  ours = _hashes(corpus)
  assert _hashes(synthetic.generate_corpus(tmp_path / "again", seed=0, video=True, workers=2, progress=False,
                                           **TINY)) == ours
  other = _hashes(synthetic.generate_corpus(tmp_path / "other", seed=1, video=True, workers=1, progress=False, **TINY))
  clips = [k for k in ours if k.startswith("unzippedIntervalFaces/")]
  assert clips and {ours[k] for k in clips}.isdisjoint(other.values())
  # Without video: no clips, and every other data file is byte-identical (the voices do not change).
  plain = _hashes(synthetic.generate_corpus(tmp_path / "plain", seed=0, workers=1, progress=False, **TINY))
  assert not (tmp_path / "plain" / "unzippedIntervalFaces").exists()
  assert {k: v for k, v in ours.items() if k.endswith((".wav", ".jpg")) and k not in clips} == \
      {k: v for k, v in plain.items() if k.endswith((".wav", ".jpg"))}
  assert '"video"' not in (tmp_path / "plain" / "synthetic.json").read_text()
  # A corpus is adopted only for the same video setting.
  assert synthetic.is_corpus(corpus, seed=0, video=True, **TINY)
  assert not synthetic.is_corpus(corpus, seed=0, **TINY)
  assert synthetic.is_corpus(tmp_path / "plain", seed=0, **TINY)
  assert not synthetic.is_corpus(tmp_path / "plain", seed=0, video=True, **TINY)


def test_every_utterance_has_a_25fps_clip_in_the_official_layout(corpus):
  utterances = _utterances(corpus)
  assert len(utterances) == 3 * 3 * 2
  for _, wav, clip in utterances:
    frames = sorted(clip.glob("*.jpg"))
    assert [f.name for f in frames] == [f"{k + 1:05d}.jpg" for k in range(STEPS)]
    assert len(frames) == len(_rms_25fps(wav))
    with Image.open(frames[0]) as im:
      assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (synthetic.CLIP_SIZE, synthetic.CLIP_SIZE))
  assert len(list((corpus / "unzippedIntervalFaces" / "data").iterdir())) == 3
  layout = voxceleb1.list_examples(corpus, face_source="video")
  assert layout.frame_sequences and all(e["clip"] for e in layout.examples)
  assert all("/faces/" in e["faces"][0] for e in layout.examples)  # the stills stay the `face` modality


def test_mouth_follows_the_voice_and_the_head_moves(corpus):
  envelopes, mouths, motion = [], [], []
  for _, wav, clip in _utterances(corpus):
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(clip.glob("*.jpg"))])
    envelopes.append(np.log(_rms_25fps(wav) + 1e-4))
    mouths.append(_mouth_darkness(frames))
    # Head motion: the whole crop changes from frame to frame, not only the mouth.
    upper = frames[:, :frames.shape[1] // 2].astype(np.float64)
    motion.append(np.abs(upper[1:] - upper[:-1]).mean())
  own = np.array([np.corrcoef(m, e)[0, 1] for m, e in zip(mouths, envelopes)])
  other = np.array([np.corrcoef(m, envelopes[(i + 1) % len(envelopes)])[0, 1] for i, m in enumerate(mouths)])
  assert own.mean() > 0.8 and own.min() > 0.5, own
  assert abs(other.mean()) < 0.3, other
  assert np.mean(motion) > 0.5


def test_prepared_sequences_are_aligned_and_old_modalities_unchanged(prepared):
  video_dir, plain_dir = prepared
  ds, plain = data.Dataset(video_dir), data.Dataset(plain_dir)
  cfg = config_lib.load("synthetic").data
  steps, size, mels = cfg.sequence_steps, cfg.face_size, cfg.n_mels
  entries = {m["name"]: m for m in ds.manifest["modalities"]}
  assert [m["name"] for m in ds.manifest["modalities"]] == ["audio", "face", "audio_frames", "face_frames"]
  assert entries["audio_frames"] == {"name": "audio_frames", "kind": "sequence", "shape": [steps, mels + 1],
                                     "dtype": "float32", "step_shape": [mels], "step_seconds": 1 / FPS}
  assert entries["face_frames"] == {"name": "face_frames", "kind": "sequence", "shape": [steps, size * size * 3 + 1],
                                    "dtype": "float32", "step_shape": [size, size, 3], "step_seconds": 1 / FPS}
  assert [m["name"] for m in plain.manifest["modalities"]] == ["audio", "face"]
  raw = video_dir / "raw"
  clips = {rel: clip for rel, _, clip in _utterances(raw)}
  sync = []
  for split in ("train", "validation", "test"):
    a, b = ds.arrays(split), plain.arrays(split)
    for key in ("audio", "face", "label", "id"):
      np.testing.assert_array_equal(a[key], b[key])
    for i, rel in enumerate(a["id"]):
      af, ff = a["audio_frames"][i], a["face_frames"][i]
      assert af.shape == (steps, mels + 1) and ff.shape == (steps, size * size * 3 + 1)
      assert (af[:, -1] == 1).all() and (ff[:, -1] == 1).all()  # 75 steps: a full window of 50
      # Which window of the clip the face steps are: exactly the test's own resize of consecutive frames.
      own = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC),
                                 np.float32).ravel() / 255 for p in sorted(clips[rel].glob("*.jpg"))])
      errors = [np.abs(own[s:s + steps] - ff[:, :-1]).max() for s in range(STEPS - steps + 1)]
      start = int(np.argmin(errors))
      assert errors[start] < 1e-6
      if split != "train":
        assert start == (STEPS - steps) // 2
      # The audio steps of the same window: the test's own log-mel of those 40 ms windows of the WAV.
      x, _ = soundfile.read(raw / "wav" / rel)
      ours = _own_logmel(x)[start:start + steps]
      assert np.corrcoef(ours.ravel(), af[:, :-1].ravel())[0, 1] > 0.99
      # Step t of both is the same time: loud audio steps are open-mouthed face steps (at 32 px: the darkest
      # pixels of the mouth's region are darker).
      loud = af[:, :-1].mean(axis=1)
      box = ff[:, :-1].reshape(steps, size, size, 3)[:, int(0.53 * size):int(0.875 * size),
                                                     int(0.375 * size):int(0.625 * size)] @ [0.299, 0.587, 0.114]
      darkest = -np.sort(box.reshape(steps, -1), axis=1)[:, :8].mean(axis=1)
      sync.append(np.corrcoef(loud, darkest)[0, 1])
  assert np.mean(sync) > 0.6 and min(sync) > 0.3, sync
  assert ds.manifest["fingerprint"] != plain.manifest["fingerprint"]


def test_voxceleb1_clips_need_every_utterance_and_are_aligned_by_time(corpus, tmp_path):
  root = tmp_path / "vox"
  shutil.copytree(corpus, root)
  utterances = _utterances(root)
  # One clip three frames short, one with a corrupt frame: prepared with a warning each, nothing skipped.
  short, broken = utterances[0], utterances[3]
  for frame in sorted(short[2].glob("*.jpg"))[-3:]:
    frame.unlink()
  (broken[2] / "00005.jpg").write_bytes(b"not a jpeg")
  cfg = config_lib.load("synthetic:tiny")
  cfg.data.sequence_steps = 80  # longer than the clips: the mask marks the padded steps
  manifest = prepare.prepare_voxceleb1(root, tmp_path / "out", config=cfg, workers=1)
  assert not manifest["skipped"]
  clip_warnings = {w["path"]: w["warning"] for w in manifest["warnings"] if "unzippedIntervalFaces" in w["path"]}
  assert set(clip_warnings) == {str(short[2]), str(broken[2])}
  assert f"{STEPS - 3} frames at 25 fps for {STEPS} audio steps" in clip_warnings[str(short[2])]
  assert "1 of 75 frames unreadable" in clip_warnings[str(broken[2])]
  ds = data.Dataset(tmp_path / "out")
  found = {}
  for split in ds.splits:
    arrays = ds.arrays(split)
    for i, rel in enumerate(arrays["id"]):
      found[rel] = (arrays["audio_frames"][i], arrays["face_frames"][i])
  for rel, _, _ in utterances:
    af, ff = found[rel]
    length = STEPS - 3 if rel == short[0] else STEPS
    assert (af[:, -1] == ff[:, -1]).all() and af[:, -1].sum() == length
    assert not af[length:].any() and not ff[length:].any()
  ff = found[broken[0]][1]
  np.testing.assert_array_equal(ff[4], ff[3])  # the corrupt 5th frame repeats the 4th
  # Per-utterance folders for only some utterances: no sequences, and a note says why.
  shutil.rmtree(utterances[1][2])
  layout = voxceleb1.list_examples(root)
  assert not layout.frame_sequences
  assert any(f"for {len(utterances) - 1} of {len(utterances)} utterances" in n for n in layout.notes)


def test_cli_prep_synthetic_video_flag():
  args = cli.build_parser().parse_args(["prep", "synthetic", "--video", "--out", "x"])
  assert args.video is True
  assert cli.build_parser().parse_args(["prep", "synthetic", "--out", "x"]).video is False
