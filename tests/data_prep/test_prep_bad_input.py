"""Bad input gives clear messages, is recorded in manifest['skipped'] (or raises with strict=True),
and a failed preparation neither leaves a dataset that looks complete nor touches the previous one."""

import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from data_prep import audio, faces, prepare, voxceleb1
from mmvae import config as config_lib
from mmvae import data

# Good utterances: (split code, identity, face folder name, video, utterance).
GOOD = [("1", "id10001", "A.J._Buckley", "1zcIwhmdeo4", "00001.wav"),
        ("1", "id10001", "A.J._Buckley", "1zcIwhmdeo4", "00002.wav"),
        ("3", "id10001", "A.J._Buckley", "utrA-v8pPm4", "00001.wav"),
        ("1", "id10118", "Caitriona_Balfe", "03ZaSobFZTs", "00001.wav"),
        ("3", "id10118", "Caitriona_Balfe", "bZyPBCVCYxw", "00001.wav")]


def make_root(mini, root):
  """A 2-identity root of real WAVs and JPEGs copied from the mini set."""
  lines = []
  for code, identity, name, video, utt in GOOD:
    (root / "wav" / identity / video).mkdir(parents=True, exist_ok=True)
    shutil.copy(mini / "wav" / identity / video / utt, root / "wav" / identity / video / utt)
    face_dir = root / "faces" / name / video
    if not face_dir.exists():
      face_dir.mkdir(parents=True)
      for jpg in sorted((mini / "faces" / name / video).glob("*.jpg"))[:2]:
        shutil.copy(jpg, face_dir / jpg.name)
    lines.append(f"{code} {identity}/{video}/{utt}")
  (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
  shutil.copy(mini / "vox1_meta.csv", root / "vox1_meta.csv")
  return root


def add_utterance(root, rel, code="1", wave=None, raw=None):
  """Lists `rel` in iden_split.txt and writes it as a WAV of `wave`, raw bytes, or nothing."""
  path = root / "wav" / rel
  path.parent.mkdir(parents=True, exist_ok=True)
  if wave is not None:
    sf.write(path, wave, 16000, subtype="PCM_16")
  elif raw is not None:
    path.write_bytes(raw)
  with open(root / "iden_split.txt", "a") as f:
    f.write(f"{code} {rel}\n")
  return path


def good_wave(mini):
  return sf.read(mini / "wav/id10001/1zcIwhmdeo4/00003.wav")[0]


# Each case: (name, function(root, mini) -> path that must be named, exception raised under strict=True).
def corrupt_wav(root, mini):
  return add_utterance(root, "id10001/1zcIwhmdeo4/00011.wav", raw=b"RIFF\x00\x01junk-not-a-wav")


def silent_clip(root, mini):
  return add_utterance(root, "id10001/1zcIwhmdeo4/00012.wav", wave=np.zeros(16000))


def empty_clip(root, mini):
  return add_utterance(root, "id10001/1zcIwhmdeo4/00013.wav", wave=np.zeros(0))


def corrupt_jpeg(root, mini):
  add_utterance(root, "id10118/badJpegVid/00001.wav", wave=good_wave(mini))
  folder = root / "faces/Caitriona_Balfe/badJpegVid"
  folder.mkdir(parents=True)
  (folder / "0000100.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
  return folder


def no_face_folder(root, mini):
  add_utterance(root, "id10118/noFacesVid0/00001.wav", wave=good_wave(mini))
  return root / "wav/id10118/noFacesVid0"


def listed_but_missing(root, mini):
  return add_utterance(root, "id10001/1zcIwhmdeo4/00099.wav")


def identity_not_in_meta(root, mini):
  add_utterance(root, "id99999/someVideo00/00001.wav", wave=good_wave(mini))
  return root / "wav/id99999"


CASES = [(corrupt_wav, audio.AudioError, "not a readable audio file"), (silent_clip, audio.AudioError, "silent"),
         (empty_clip, audio.AudioError, "empty"), (corrupt_jpeg, faces.FaceError, "unreadable"),
         (no_face_folder, FileNotFoundError, "no face frames"),
         (listed_but_missing, FileNotFoundError, "not on disk"),
         (identity_not_in_meta, ValueError, "not in .*vox1_meta.csv")]


@pytest.fixture
def mini(shared_data):
  return shared_data / "voxceleb1-mini"


def test_every_bad_input_is_skipped_with_its_path_and_reason(mini, tmp_path):
  root = make_root(mini, tmp_path / "root")
  named = {case.__name__: case(root, mini) for case, _, _ in CASES}
  manifest = prepare.prepare_voxceleb1(root, tmp_path / "out", config="reference:tiny", workers=1)
  skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
  for (case, _, reason), path in zip(CASES, named.values()):
    assert str(path) in skipped, (case.__name__, skipped)
    assert skipped[str(path)], case.__name__
    assert re.search(reason, skipped[str(path)]), (case.__name__, skipped[str(path)])
  assert len(skipped) == len(CASES)
  assert sum(v["examples"] for v in manifest["splits"].values()) == len(GOOD)
  assert sorted(data.Dataset(tmp_path / "out").arrays("train")["id"]) == sorted(
      f"{i}/{v}/{u}" for c, i, _, v, u in GOOD if c == "1")


@pytest.mark.parametrize("case,error,reason", CASES, ids=[c.__name__ for c, _, _ in CASES])
def test_strict_raises_naming_the_path(mini, tmp_path, case, error, reason):
  root = make_root(mini, tmp_path / "root")
  path = case(root, mini)
  with pytest.raises(error, match=reason) as info:
    prepare.prepare_voxceleb1(root, tmp_path / "out", config="reference:tiny", strict=True, workers=1)
  assert str(path) in str(info.value) or path.name in str(info.value)
  assert not (tmp_path / "out/manifest.json").exists()


def test_wrong_root_lists_what_is_expected(tmp_path):
  (tmp_path / "wav").mkdir()
  with pytest.raises(FileNotFoundError, match="missing iden_split.txt, vox1_meta.csv.*Expected wav/"):
    voxceleb1.list_examples(tmp_path)
  with pytest.raises(FileNotFoundError, match="missing wav/"):
    prepare.prepare_voxceleb1(tmp_path / "nowhere", tmp_path / "out", config="reference:tiny", workers=1)


def test_interrupted_build_never_looks_complete_and_rerun_finishes(mini, tmp_path):
  root = make_root(mini, tmp_path / "root")
  out = tmp_path / "out"
  cfg = config_lib.load("reference:tiny")
  cfg.data.time_average = False  # full spectrograms stream into TFDS, so a failure lands mid-build
  first = prepare.prepare_voxceleb1(root, out, config=cfg, workers=1)
  assert first["features"]["audio"]["shape"] == [297, 512] and (out / "manifest.json").exists()
  # The last test utterance turns corrupt: the train split is written, then the build dies.
  victim = root / "wav/id10118/bZyPBCVCYxw/00001.wav"
  saved = victim.read_bytes()
  victim.write_bytes(b"RIFF\x00\x01garbage")
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  with pytest.raises(audio.AudioError):
    prepare.prepare_voxceleb1(root, out, config=cfg, strict=True, workers=1)
  # The failed rebuild happened beside OUT: the previous complete dataset is untouched, nothing is left over.
  assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "root"]
  assert data.Dataset(out).manifest["fingerprint"] == first["fingerprint"]
  victim.write_bytes(saved)
  again = prepare.prepare_voxceleb1(root, out, config=cfg, workers=1)
  assert again["splits"] == first["splits"] and (out / "manifest.json").exists()
  assert again["fingerprint"] == first["fingerprint"]  # a function of the content: same inputs, same print
  # A stale, manifest-less build directory that TFDS alone would happily reuse is rebuilt too.
  (out / "manifest.json").unlink()
  stale = out / "tfds/mmvae_voxceleb1/1.0.0"
  for f in stale.iterdir():
    f.write_bytes(b"stale")
  prepare.prepare_voxceleb1(root, out, config=cfg, workers=1)
  ds = data.Dataset(out)
  assert ds.arrays("test")["audio"].shape == (2, 297, 512)
  assert set(ds.arrays("test")["id"]) == {"id10001/utrA-v8pPm4/00001.wav", "id10118/bZyPBCVCYxw/00001.wav"}


def test_split_file_repeats_are_refused_naming_every_line(tmp_path):
  split = tmp_path / "iden_split.txt"
  utts = [f"id1/v/{i:05d}.wav" for i in range(6)]
  lines = [f"1 {u}" for u in utts] + ["3 id1/v/00000.wav", "1 id1/v/00001.wav", "", "1 id1/v/00001.wav"]
  lines += [f"2 {u}" for u in utts[2:5]]  # three more, in train and validation
  split.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError) as e:
    voxceleb1.read_split(split)
  assert str(e.value) == (f"{split}: 5 utterance(s) listed more than once: id1/v/00000.wav on lines 1, 7 (in train "
                          "and test); id1/v/00001.wav on lines 2, 8, 10 (3 times in train); id1/v/00002.wav on lines "
                          "3, 11 (in train and validation); and 2 more. List each utterance once")
  split.write_text("\n".join(f"1 {u}" for u in utts) + "\n")  # each once: read as before
  assert voxceleb1.read_split(split) == [("train", u) for u in utts]
