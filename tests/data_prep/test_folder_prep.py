"""`mmvae prep folder`: your own data as ROOT/<person>/<clip>.wav + face frames, on real VoxCeleb1 files."""

import collections
import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data_prep import faces, folder
from mmvae import cli, data

# Three persons of the mini set: {person folder name: (VoxCeleb1 ID, VGGFace1 name)}.
PERSONS = {"alice": ("id10001", "A.J._Buckley"), "bob": ("id10118", "Caitriona_Balfe"),
           "carol": ("id10278", "Edward_Asner")}
TINY = ["--config", "reference:tiny", "--workers", "1"]


def make_tree(mini, root, persons=PERSONS, videos=3, utterances=2, frames=2, per_person_faces=False):
  """Copies real clips into ROOT/<person>/<video>_<utt>.wav with their video's frames in ROOT/<person>/<clip>/
  (or, per_person_faces, the first video's frames in ROOT/<person>/faces/); returns {clip id: facts}."""
  laid = {}
  for person, (identity, name) in persons.items():
    for video in sorted(p.name for p in (mini / "wav" / identity).iterdir())[:videos]:
      source_frames = sorted((mini / "faces" / name / video).glob("*.jpg"))[:frames]
      for wav in sorted((mini / "wav" / identity / video).glob("*.wav"))[:utterances]:
        clip = f"{video}_{wav.stem}"
        (root / person).mkdir(parents=True, exist_ok=True)
        shutil.copy(wav, root / person / f"{clip}.wav")
        face_dir = root / person / ("faces" if per_person_faces else clip)
        if not face_dir.exists():
          face_dir.mkdir()
          for jpg in source_frames:
            shutil.copy(jpg, face_dir / jpg.name)
        laid[f"{person}/{clip}.wav"] = {"person": person, "video": video, "frames": sorted(face_dir.glob("*.jpg"))}
  return laid


def write_videos_csv(path, laid):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["clip", "video"])
    for clip, facts in sorted(laid.items()):
      w.writerow([clip.removesuffix(".wav"), facts["video"]])  # without .wav: the form the README shows
  return path


def prep(capsys, root, out, *extra):
  code = cli.main(["prep", "folder", "--root", str(root), "--out", str(out), *TINY, *extra])
  return code, capsys.readouterr()


@pytest.fixture
def mini(shared_data):
  return shared_data / "voxceleb1-mini"


def test_prep_folder_counts_labels_faces_and_video_groups(mini, tmp_path, capsys):
  laid = make_tree(mini, tmp_path / "root")
  assert len(laid) == 18
  videos = write_videos_csv(tmp_path / "videos.csv", laid)
  code, io = prep(capsys, tmp_path / "root", tmp_path / "out", "--videos", str(videos))
  assert code == 0, io.err
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["corpus"] == "folder" and manifest["skipped"] == []
  assert sum(s["examples"] for s in manifest["splits"].values()) == len(laid)
  names = sorted(PERSONS)
  assert [i["identity"] for i in manifest["identities"]] == names
  ds = data.Dataset(tmp_path / "out")
  seen, split_of_video = [], collections.defaultdict(set)
  for split in ds.splits:
    arr = ds.arrays(split)
    for i, label, video, face in zip(arr["id"], arr["label"], arr["video"], arr["face"]):
      facts = laid[i]
      seen.append(i)
      assert label == names.index(facts["person"]) and video == facts["video"]
      split_of_video[(facts["person"], facts["video"])].add(split)
      # The stored face is one of the frames laid out for this clip (so the label sits on the right face).
      diffs = [np.abs(faces.load_face(str(f), 23, True).astype(int) - face[0]).max() for f in facts["frames"]]
      assert min(diffs) == 0
  assert sorted(seen) == sorted(laid)
  assert all(len(s) == 1 for s in split_of_video.values()), split_of_video
  # Three videos per person: one each in test, validation and train (round(0.2 * 3) -> at least 1 each).
  per_person = collections.Counter((p, next(iter(s))) for (p, _), s in split_of_video.items())
  assert per_person == {(p, s): 1 for p in names for s in ("train", "validation", "test")}


def test_same_seed_same_split_other_seed_differs(mini, tmp_path):
  root = tmp_path / "root"
  make_tree(mini, root, videos=3, utterances=2)
  splits = {seed: {e["id"]: e["split"] for e in folder.list_examples(root, seed=seed).examples}
            for seed in (0, 1)}
  assert {e["id"]: e["split"] for e in folder.list_examples(root, seed=0).examples} == splits[0]
  assert splits[1] != splits[0]
  for split_of in splits.values():
    # No CSV: every clip is its group; 6 per person -> round(1.2) = 1 test, 1 validation, 4 train.
    counts = collections.Counter((i.split("/")[0], s) for i, s in split_of.items())
    assert counts == {(p, s): n for p in PERSONS for s, n in (("test", 1), ("validation", 1), ("train", 4))}


def test_a_video_with_two_persons_stays_in_one_split(mini, tmp_path):
  root = tmp_path / "root"
  laid = make_tree(mini, root, videos=3, utterances=2)
  panel = sorted(c for c in laid if c.startswith("alice/"))[:2] + sorted(c for c in laid if c.startswith("bob/"))[:1]
  (tmp_path / "v.csv").write_text("clip,video\n" + "".join(f"{c},panel\n" for c in panel))
  for seed in range(6):
    split_of = {e["id"]: e["split"] for e in folder.list_examples(root, videos=tmp_path / "v.csv", seed=seed).examples}
    assert len({split_of[c] for c in panel}) == 1, seed
    assert {c.split("/")[0] for c, s in split_of.items() if s == "train"} == set(PERSONS)


def test_per_person_faces_and_transcripts_become_text(mini, tmp_path, capsys):
  import mmvae
  root = tmp_path / "root"
  laid = make_tree(mini, root, persons=dict(list(PERSONS.items())[:2]), videos=3, utterances=1,
                   per_person_faces=True)
  words = {}
  for n, clip in enumerate(sorted(laid)):
    words[clip] = f"Hello, this is clip {n}!" if n % 2 else "hello world"
    (root / clip.replace(".wav", ".txt")).write_text(words[clip])
  manifest = mmvae.prepare("folder", tmp_path / "out", root=root, config="reference:tiny", workers=1)
  text = {m["name"]: m for m in manifest["modalities"]}["text"]
  assert text["kind"] == "tokens" and text["vocab"][:2] == ["<pad>", "<unk>"]
  ds = data.Dataset(tmp_path / "out")
  arrays = {split: ds.arrays(split) for split in ds.splits}
  split_of = {i: split for split, arr in arrays.items() for i in arr["id"]}
  assert sorted(split_of) == sorted(laid)

  def tokens(line):
    return line.lower().replace(",", " ").replace("!", " ").split()

  train_words = {w for clip, line in words.items() if split_of[clip] == "train" for w in tokens(line)}
  for arr in arrays.values():
    for i, ids, face in zip(arr["id"], arr["text"], arr["face"]):
      expected = [w if w in train_words else "<unk>" for w in tokens(words[i])]
      assert [text["vocab"][k] for k in ids if k != 0] == expected
      # Every clip of a person takes its face from ROOT/<person>/faces/.
      diffs = [np.abs(faces.load_face(str(f), 23, True).astype(int) - face[0]).max() for f in laid[i]["frames"]]
      assert min(diffs) == 0
  # Clips sharing ROOT/<person>/faces/ take different frames of it (as VoxCeleb1's utterances of one video do).
  for person in ("alice", "bob"):
    stored = {arr["face"][n].tobytes() for arr in arrays.values() for n, i in enumerate(arr["id"])
              if i.startswith(f"{person}/")}
    assert len(stored) == 2


def _bad(case, mini, tmp_path):
  root = tmp_path / "root"
  two = dict(list(PERSONS.items())[:2])
  if case == "root missing":
    return root, []
  if case == "no persons":
    (root / "empty_person").mkdir(parents=True)
    return root, []
  if case == "one person's folder as root":
    make_tree(mini, root, persons=two, videos=1, utterances=1)
    return root / "alice", []
  if case == "clip with no faces":
    laid = make_tree(mini, root, persons=two, videos=2, utterances=1)
    shutil.rmtree(root / next(iter(laid)).removesuffix(".wav"))
    return root, []
  if case == "one person":
    make_tree(mini, root, persons=dict(list(PERSONS.items())[:1]), videos=2, utterances=1)
    return root, []
  if case == "some transcripts":
    laid = make_tree(mini, root, persons=two, videos=2, utterances=1)
    (root / next(iter(laid)).replace(".wav", ".txt")).write_text("hello")
    return root, []
  if case == "unknown clip in csv":
    make_tree(mini, root, persons=two, videos=2, utterances=1)
    (tmp_path / "v.csv").write_text("clip,video\nalice/nope,v1\n")
    return root, ["--videos", str(tmp_path / "v.csv")]
  if case == "csv without header":
    make_tree(mini, root, persons=two, videos=2, utterances=1)
    (tmp_path / "v.csv").write_text("alice/x,v1\n")
    return root, ["--videos", str(tmp_path / "v.csv")]
  if case == "fractions":
    make_tree(mini, root, persons=two, videos=2, utterances=1)
    return root, ["--validation-fraction", "0.5", "--test-fraction", "0.5"]
  raise AssertionError(case)


BAD = {"root missing": "no such folder", "no persons": "no person folders with clips",
       "one person's folder as root": "point --root at its parent", "clip with no faces": "no face frames",
       "one person": "at least 2 persons", "some transcripts": "give one for every clip or none",
       "unknown clip in csv": "'alice/nope' is not", "csv without header": "header clip,video",
       "fractions": "sum below 1"}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_layouts_fail_in_one_line(case, mini, tmp_path, capsys):
  root, extra = _bad(case, mini, tmp_path)
  code, io = prep(capsys, root, tmp_path / "out", *extra)
  lines = io.err.strip().splitlines()
  assert code == 2 and len(lines) == 1, io.err
  assert lines[0].startswith("mmvae prep: error: ") and BAD[case] in lines[0], lines[0]
  assert not (tmp_path / "out").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no build folder left behind


def test_command_line_refuses_a_missing_root_in_one_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "mmvae.cli", "prep", "folder", "--root", str(tmp_path / "nowhere"),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True)
  assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
  assert out.stderr.startswith(f"mmvae prep: error: --root {tmp_path / 'nowhere'}: no such folder")
