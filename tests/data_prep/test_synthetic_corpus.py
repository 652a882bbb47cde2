"""The synthetic corpus: determinism, VoxCeleb1 layout, splits, and attributes visible in both modalities."""

import hashlib
import pathlib
import re

import numpy as np
import pytest
import soundfile
from PIL import Image

from data_prep import synthetic, synthetic_face

SMALL = dict(identities=4, videos_per_identity=3, utterances_per_video=2, frames_per_video=3,
             utterance_seconds=1.5, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
  return synthetic.generate_corpus(tmp_path_factory.mktemp("syn") / "a", seed=0, workers=1, **SMALL)


def _hashes(root: pathlib.Path) -> dict:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def _meta(root: pathlib.Path) -> tuple:
  lines = (root / "vox1_meta.csv").read_text().splitlines()
  header = lines[0].split("\t")
  return header, [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def _split_lines(root: pathlib.Path) -> list:
  return [line.split() for line in (root / "iden_split.txt").read_text().splitlines()]


def test_same_seed_gives_identical_bytes_on_any_worker_count(corpus, tmp_path):
  again = synthetic.generate_corpus(tmp_path / "again", seed=0, workers=2, **SMALL)
  assert _hashes(again) == _hashes(corpus)
  other = synthetic.generate_corpus(tmp_path / "other", seed=1, workers=1, **SMALL)
  ours, theirs = _hashes(corpus), _hashes(other)
  data = [k for k in ours if k.endswith((".wav", ".jpg"))]
  assert set(ours[k] for k in data).isdisjoint(theirs.values())


def test_layout_is_voxceleb1(corpus):
  header, rows = _meta(corpus)
  assert header[:5] == ["VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set"]
  assert {"sex", "age", "size", "skin", "hair_color", "hair_length", "pitch_hz"} <= set(header[5:])
  name_of = {r["VoxCeleb1 ID"]: r["VGGFace1 ID"] for r in rows}
  assert all(r["Gender"] in ("m", "f") and r["Set"] in ("dev", "test") for r in rows)
  lines = _split_lines(corpus)
  assert len(lines) == 4 * 3 * 2
  videos = set()
  for code, rel in lines:
    assert code in ("1", "2", "3")
    assert re.fullmatch(r"id\d{5}/[A-Za-z0-9_-]{11}/\d{5}\.wav", rel), rel
    info = soundfile.info(corpus / "wav" / rel)
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
    x, _ = soundfile.read(corpus / "wav" / rel, dtype="int16")
    assert len(x) == 24000 and np.abs(x).max() > 1000
    videos.add(tuple(rel.split("/")[:2]))
  # Every video listed has its face frames: 96x96 RGB JPEGs named by 25 fps frame index, 1 per second.
  assert {p.parent.name for p in (corpus / "wav").glob("*/*/*.wav")} == {v for _, v in videos}
  for identity, video in videos:
    frames = sorted((corpus / "faces" / name_of[identity] / video).glob("*.jpg"))
    assert len(frames) == 3
    indices = [int(f.stem) for f in frames]
    assert all(len(f.stem) == 7 for f in frames) and np.all(np.diff(indices) == 25)
    with Image.open(frames[0]) as im:
      assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (96, 96))
  assert "seed=0" in (corpus / "README.md").read_text()


def test_closed_split_keeps_identities_and_separates_videos(corpus):
  split_of_video, ids = {}, {"1": set(), "2": set(), "3": set()}
  for code, rel in _split_lines(corpus):
    identity, video, _ = rel.split("/")
    assert split_of_video.setdefault(video, code) == code  # no video in two splits
    ids[code].add(identity)
  assert ids["3"] == ids["1"] == ids["2"] and len(ids["1"]) == 4


def test_open_split_holds_out_identities(tmp_path):
  root = synthetic.generate_corpus(tmp_path / "open", identities=8, seed=3, split="open", videos_per_identity=1,
                                   utterances_per_video=1, frames_per_video=1, utterance_seconds=0.5,
                                   progress=False, workers=1)
  ids = {"1": set(), "2": set(), "3": set()}
  for code, rel in _split_lines(root):
    ids[code].add(rel.split("/")[0])
  assert ids["1"] and ids["2"] and ids["3"]
  assert not ids["3"] & (ids["1"] | ids["2"]) and not ids["2"] & ids["1"]
  _, rows = _meta(root)
  assert {r["VoxCeleb1 ID"] for r in rows if r["Set"] == "test"} == ids["3"]
  assert {r["Gender"] for r in rows if r["VoxCeleb1 ID"] in ids["1"]} == {"m", "f"}


def _f0_autocorrelation(x: np.ndarray, sr: int = 16000) -> np.ndarray:
  """Per-frame f0 of the loud, periodic 40 ms frames: the first autocorrelation peak near the maximum."""
  frame, hop = 640, 160
  lo, hi = sr // 400, sr // 70
  out = []
  rms_all = [np.sqrt(np.mean(x[s:s + frame] ** 2)) for s in range(0, len(x) - frame, hop)]
  for k, s in enumerate(range(0, len(x) - frame, hop)):
    if rms_all[k] < 0.5 * max(rms_all):
      continue
    f = x[s:s + frame] - x[s:s + frame].mean()
    r = np.array([np.dot(f[:frame - lag], f[lag:]) for lag in range(hi + 1)]) / np.dot(f, f)
    best = r[lo:hi + 1].max()
    if best < 0.5:
      continue
    lag = lo + np.flatnonzero(r[lo:hi + 1] >= 0.9 * best)[0]  # earliest strong peak: no octave drop
    while lag + 1 <= hi and r[lag + 1] > r[lag]:
      lag += 1
    out.append(sr / lag)
  return np.array(out)


def test_voices_carry_sex_and_pitch_attributes(corpus):
  _, rows = _meta(corpus)
  median = {}
  for r in rows:
    wavs = sorted((corpus / "wav" / r["VoxCeleb1 ID"]).glob("*/*.wav"))[:3]
    f0 = np.concatenate([_f0_autocorrelation(soundfile.read(w)[0]) for w in wavs])
    assert len(f0) > 20
    median[r["VoxCeleb1 ID"]] = np.median(f0)
    assert abs(np.log(median[r["VoxCeleb1 ID"]] / float(r["pitch_hz"]))) < np.log(1.2)
  male = [median[r["VoxCeleb1 ID"]] for r in rows if r["Gender"] == "m"]
  female = [median[r["VoxCeleb1 ID"]] for r in rows if r["Gender"] == "f"]
  assert male and female and max(male) < min(female)


def _log_spectrum(path) -> np.ndarray:
  x, _ = soundfile.read(path)
  frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160] * np.hamming(400)
  return np.log1p(np.abs(np.fft.rfft(frames, 1024))[:, :512]).mean(axis=0)


def _faces(root, name, video) -> list:
  return [np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BILINEAR), np.float64) / 255
          for p in sorted((root / "faces" / name / video).glob("*.jpg"))]


def _leave_video_out_nn(features: list) -> float:
  """1-NN identity accuracy, neighbours taken only from other videos; features: (identity, video, vector)."""
  hits = []
  for ident, video, x in features:
    others = [(np.sum((x - y) ** 2), j) for j, v, y in features if v != video]
    hits.append(min(others)[1] == ident)
  return float(np.mean(hits))


def test_identities_distinct_across_videos_in_both_modalities(corpus):
  _, rows = _meta(corpus)
  voices, faces = [], []
  for r in rows:
    for video_dir in sorted((corpus / "wav" / r["VoxCeleb1 ID"]).iterdir()):
      voices += [(r["VoxCeleb1 ID"], video_dir.name, _log_spectrum(w)) for w in sorted(video_dir.glob("*.wav"))]
      faces += [(r["VoxCeleb1 ID"], video_dir.name, f.ravel()) for f in _faces(corpus, r["VGGFace1 ID"],
                                                                               video_dir.name)]
  # Chance is 1/4 with four identities.
  assert _leave_video_out_nn(voices) >= 0.75
  assert _leave_video_out_nn(faces) >= 0.6


def test_faces_carry_skin_tone(corpus):
  _, rows = _meta(corpus)
  cheek = {}
  for r in rows:
    frames = [f for v in (corpus / "wav" / r["VoxCeleb1 ID"]).iterdir() for f in _faces(corpus, r["VGGFace1 ID"], v.name)]
    # Both cheeks of the 32 px face: below the eyes, beside the nose, above any beard.
    cheek[r["VoxCeleb1 ID"]] = np.mean([np.r_[f[17:19, 10:13], f[17:19, 19:22]].mean() for f in frames])
  dark = [cheek[r["VoxCeleb1 ID"]] for r in rows if r["skin"] == "dark"]
  light = [cheek[r["VoxCeleb1 ID"]] for r in rows if r["skin"] == "light"]
  assert dark and light and max(dark) + 0.15 < min(light)


def _render(attrs, face_seed, scene_seed, frame_seeds):
  """Frames of one face whose attributes are set by hand, with fixed seeds."""
  face = synthetic_face.make_face(attrs, np.random.default_rng(face_seed))
  scene = synthetic_face.make_scene(face, np.random.default_rng(scene_seed))
  return [synthetic_face.render(face, scene, np.random.default_rng(k)) for k in frame_seeds]


def test_hair_colour_reaches_the_pixels():
  base = dict(sex="f", age="young", size="medium", skin="medium", hair_length="short", glasses="no")
  top = {}
  for colour in ("black", "blond"):
    imgs = _render(dict(base, hair_color=colour), 5, 6, range(3))
    top[colour] = np.mean([img[18:26, 36:60].mean() for img in imgs])  # crown of the head
  assert top["blond"] > top["black"] + 80


@pytest.mark.parametrize("kwargs, message", [
    (dict(identities=1), "identities"),
    (dict(identities=2, split="open"), "open split"),
    (dict(split="mixed"), "split must be"),
    (dict(videos_per_identity=2), "videos_per_identity >= 3"),
    (dict(frames_per_video=0), ">= 1"),
    (dict(utterance_seconds=0.1), "utterance_seconds"),
])
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    synthetic.generate_corpus(tmp_path / "bad", **dict(dict(progress=False), **kwargs))


def test_refuses_foreign_folder_and_replaces_its_own(tmp_path):
  (tmp_path / "foreign").mkdir()
  (tmp_path / "foreign" / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="not empty"):
    synthetic.generate_corpus(tmp_path / "foreign", progress=False)
  tiny = dict(videos_per_identity=3, utterances_per_video=1, frames_per_video=1, utterance_seconds=0.5,
              progress=False, workers=1)
  root = synthetic.generate_corpus(tmp_path / "own", identities=3, **tiny)
  synthetic.generate_corpus(root, identities=2, seed=4, **tiny)
  assert sorted(p.name for p in (root / "wav").iterdir()) == ["id90001", "id90002"]
  assert len(list((root / "faces").iterdir())) == 2


def test_glasses_attribute_draws_dark_frames_around_the_eyes():
  base = dict(sex="m", age="adult", size="medium", skin="light", hair_color="blond", hair_length="short")
  dark = {}
  for glasses in ("no", "yes"):
    [img] = _render(dict(base, glasses=glasses), 2, 3, [4])
    dark[glasses] = (img[30:55, 15:81].max(axis=-1) < 60).mean()  # eye band: near-black pixels
  assert dark["yes"] > dark["no"] + 0.02
