"""VoxCeleb1 preparation on the real mini set and on small roots copied from it."""

import collections
import shutil

import numpy as np
import pytest
from PIL import Image

from data_prep import audio, faces, prepare, voxceleb1
from mmvae import config as config_lib
from mmvae import data

# A 2-identity subset with every split: {identity: {video: utterances to keep}}.
SUBSET = {"id10001": {"1zcIwhmdeo4": 2, "Y8hIVOBuels": 1, "utrA-v8pPm4": 1},
          "id10118": {"03ZaSobFZTs": 2, "UsHbVNFrjVQ": 1, "bZyPBCVCYxw": 1}}
NAMES = {"id10001": "A.J._Buckley", "id10118": "Caitriona_Balfe", "id10278": "Edward_Asner"}
# SUBSET plus id10278, the mini set's one Set=test identity, with a video of each iden_split code.
OPEN_SUBSET = dict(SUBSET, id10278={"DSGE2F5sTcg": 1, "pJsgUla1_1I": 1, "shA_TsV-PFs": 1})


def make_small_root(mini, dst, frames=3, subset=SUBSET):
  """Copies `subset` (wavs, a few face frames per video, its iden_split lines, the full meta) into dst."""
  kept, counts = [], collections.Counter()
  for line in (mini / "iden_split.txt").read_text().splitlines():
    identity, video, utt = line.split()[1].split("/")
    if counts[video] < subset.get(identity, {}).get(video, 0):
      counts[video] += 1
      kept.append(line)
      (dst / "wav" / identity / video).mkdir(parents=True, exist_ok=True)
      shutil.copy(mini / "wav" / identity / video / utt, dst / "wav" / identity / video / utt)
      face_dir = dst / "faces" / NAMES[identity] / video
      if not face_dir.exists():
        face_dir.mkdir(parents=True)
        for jpg in sorted((mini / "faces" / NAMES[identity] / video).glob("*.jpg"))[:frames]:
          shutil.copy(jpg, face_dir / jpg.name)
  (dst / "iden_split.txt").write_text("\n".join(kept) + "\n")
  shutil.copy(mini / "vox1_meta.csv", dst / "vox1_meta.csv")
  return dst


def parse_meta(path):
  rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
  return {r[0]: {"name": r[1], "gender": r[2], "nationality": r[3], "set": r[4].strip()} for r in rows}


def split_by_video(examples):
  """{split: {identity/video}} from example specs or arrays."""
  out = collections.defaultdict(set)
  for e in examples:
    out[e["split"]].add(e["id"].rsplit("/", 1)[0])
  return out


@pytest.fixture(scope="module")
def mini_prepared(shared_data, tmp_path_factory):
  out = tmp_path_factory.mktemp("vox_mini")
  manifest = prepare.prepare_voxceleb1(shared_data / "voxceleb1-mini", out, config="reference:tiny", workers=2)
  return manifest, out


def test_mini_counts_labels_and_metadata(mini_prepared, shared_data):
  manifest, out = mini_prepared
  mini = shared_data / "voxceleb1-mini"
  split_of = {"1": "train", "2": "validation", "3": "test"}
  listed = [line.split() for line in (mini / "iden_split.txt").read_text().splitlines()]
  expected = collections.Counter(split_of[code] for code, _ in listed)
  assert expected == {"train": 98, "validation": 31, "test": 26}
  assert {s: v["examples"] for s, v in manifest["splits"].items()} == dict(expected)
  assert manifest["skipped"] == [] and manifest["complete"] and manifest["corpus"] == "voxceleb1"
  meta = parse_meta(mini / "vox1_meta.csv")
  ids = sorted({rel.split("/")[0] for _, rel in listed})
  assert len(ids) == 6 and [i["identity"] for i in manifest["identities"]] == ids
  assert [i["gender"] for i in manifest["identities"]] == [meta[i]["gender"] for i in ids]
  ds = data.Dataset(out)
  for split in ("train", "validation", "test"):
    arr = ds.arrays(split)
    assert sorted(arr["id"]) == sorted(rel for code, rel in listed if split_of[code] == split)
    for i, identity, label, gender, video in zip(arr["id"], arr["identity"], arr["label"], arr["gender"],
                                                 arr["video"]):
      assert identity == i.split("/")[0] and video == i.split("/")[1]
      assert label == ids.index(identity) and gender == meta[identity]["gender"]
  # A few fixed spot checks straight from vox1_meta.csv.
  by_id = {e["identity"]: e for e in manifest["identities"]}
  assert by_id["id10118"]["name"] == "Caitriona_Balfe" and by_id["id10118"]["gender"] == "f"
  assert by_id["id10278"]["gender"] == "m" and by_id["id10228"]["nationality"] == "USA"


def test_mini_features_shapes_normalisation_and_pairing(mini_prepared, shared_data):
  manifest, out = mini_prepared
  ds = data.Dataset(out)
  assert manifest["features"]["audio"]["shape"] == [512]
  assert manifest["features"]["face"]["shape"] == [1, 23, 23, 1]
  train = ds.arrays("train")
  assert train["audio"].shape == (98, 512) and train["face"].shape == (98, 1, 23, 23, 1)
  # Train split standardised per bin with its own stats.
  np.testing.assert_allclose(train["audio"].mean(axis=0), 0.0, atol=1e-4)
  np.testing.assert_allclose(train["audio"].std(axis=0), 1.0, atol=1e-3)
  # A test example, recomputed by hand: centred crop, generator seeded by (data seed, index in id order).
  cfg = config_lib.load("reference:tiny").data
  all_ids = sorted(line.split()[1] for line in (shared_data / "voxceleb1-mini/iden_split.txt").read_text().splitlines())
  test = ds.arrays("test")
  for row in (0, 17):
    index = all_ids.index(test["id"][row])
    raw = audio.utterance_features(str(shared_data / "voxceleb1-mini/wav" / test["id"][row]), cfg, False,
                                   np.random.default_rng((cfg.seed, index)))
    norm = manifest["audio_normalisation"]
    np.testing.assert_allclose(test["audio"][row], (raw - np.array(norm["mean"])) / np.array(norm["std"]),
                               rtol=1e-4, atol=1e-4)
    # The stored face is one of the frames of the utterance's own video.
    identity, video, _ = test["id"][row].split("/")
    name = {e["identity"]: e["name"] for e in manifest["identities"]}[identity]
    frames = sorted((shared_data / "voxceleb1-mini/faces" / name / video).glob("*.jpg"))
    diffs = [np.abs(faces.load_face(str(f), 23, True).astype(int) - test["face"][row, 0]).max() for f in frames]
    assert min(diffs) == 0


def test_per_utterance_faces_preferred_and_workers_do_not_matter(shared_data, tmp_path):
  root = make_small_root(shared_data / "voxceleb1-mini", tmp_path / "root")
  per_utt = root / "unzippedIntervalFaces/data/A.J._Buckley/1.6/1zcIwhmdeo4/1"  # official: 00001.wav -> '1'
  per_utt.mkdir(parents=True)
  Image.new("RGB", (40, 40), (255, 255, 255)).save(per_utt / "01.jpg")
  layout = voxceleb1.list_examples(root)
  by_id = {e["id"]: e for e in layout.examples}
  assert by_id["id10001/1zcIwhmdeo4/00001.wav"]["faces"] == [str(per_utt / "01.jpg")]
  assert all("/faces/A.J._Buckley/1zcIwhmdeo4/" in f for f in by_id["id10001/1zcIwhmdeo4/00002.wav"]["faces"])
  one = prepare.prepare_voxceleb1(root, tmp_path / "w1", config="reference:tiny", workers=1)
  two = prepare.prepare_voxceleb1(root, tmp_path / "w2", config="reference:tiny", workers=2)
  assert one["splits"] == {"train": {"examples": 4}, "validation": {"examples": 2}, "test": {"examples": 2}}
  a, b = data.Dataset(tmp_path / "w1"), data.Dataset(tmp_path / "w2")
  for split in a.splits:
    for key, value in a.arrays(split).items():
      np.testing.assert_array_equal(value, b.arrays(split)[key])
  train = a.arrays("train")
  white = list(train["id"]).index("id10001/1zcIwhmdeo4/00001.wav")
  assert (train["face"][white] == 255).all()
  assert not (train["face"][list(train["id"]).index("id10001/1zcIwhmdeo4/00002.wav")] == 255).all()


def test_extra_meta_columns_become_attributes(shared_data, tmp_path):
  root = make_small_root(shared_data / "voxceleb1-mini", tmp_path / "root", frames=1)
  lines = (root / "vox1_meta.csv").read_text().splitlines()
  extra = [lines[0] + "\tsex\tage"] + [f"{line}\t{'mf'[i % 2]}\t{20 + i}" for i, line in enumerate(lines[1:])]
  (root / "vox1_meta.csv").write_text("\n".join(extra) + "\n")
  layout = voxceleb1.list_examples(root)
  assert layout.attributes == ["sex", "age"]
  row = {line.split("\t")[0]: line.split("\t") for line in extra[1:]}
  for entry in layout.identities:
    assert entry["sex"] == row[entry["identity"]][5] and entry["age"] == row[entry["identity"]][6]


def test_open_split_holds_out_exactly_the_set_test_identities(shared_data):
  mini = shared_data / "voxceleb1-mini"
  meta = parse_meta(mini / "vox1_meta.csv")
  listed = {rel: {"1": "train", "2": "validation", "3": "test"}[code]
            for code, rel in (line.split() for line in (mini / "iden_split.txt").read_text().splitlines())}
  held = {rel.split("/")[0] for rel in listed if meta[rel.split("/")[0]]["set"] == "test"}
  assert held == {"id10278"}
  closed = voxceleb1.list_examples(mini)
  open_ = voxceleb1.list_examples(mini, split_policy="open")
  assert closed.split_policy == "closed" and open_.split_policy == "open"
  # Closed: iden_split.txt as given.
  assert {e["id"]: e["split"] for e in closed.examples} == listed
  # Open: every utterance kept; held-out identities only and entirely in test; others' test -> validation.
  got = {e["id"]: e["split"] for e in open_.examples}
  assert set(got) == set(listed)
  for rel, split in got.items():
    if rel.split("/")[0] in held:
      assert split == "test"
    else:
      assert split == {"test": "validation"}.get(listed[rel], listed[rel])
  assert {e["identity"] for e in open_.examples if e["split"] == "test"} == held
  videos = split_by_video(open_.examples)
  assert not (videos["train"] & videos["validation"] or videos["train"] & videos["test"]
              or videos["validation"] & videos["test"])
  # Labels still index the sorted identities, whatever the policy.
  assert [(e["id"], e["label"]) for e in open_.examples] == [(e["id"], e["label"]) for e in closed.examples]
  assert voxceleb1.split_warnings(open_.examples) and not voxceleb1.split_warnings(closed.examples)
  with pytest.raises(ValueError, match="split_policy must be one of"):
    voxceleb1.list_examples(mini, split_policy="verification")


def test_open_split_prepared_records_policy_and_warns(shared_data, tmp_path, capsys):
  root = make_small_root(shared_data / "voxceleb1-mini", tmp_path / "root", frames=1, subset=OPEN_SUBSET)
  manifest = prepare.prepare_voxceleb1(root, tmp_path / "out", config="reference:tiny", workers=1,
                                       split_policy="open")
  assert manifest["split_policy"] == "open"
  # SUBSET's train 4, validation 2 and test 2 (moved to validation), plus id10278's 3 utterances in test.
  assert manifest["splits"] == {"train": {"examples": 4}, "validation": {"examples": 4}, "test": {"examples": 3}}
  assert any(n.startswith("split_policy open") for n in manifest["notes"])
  assert any("warning" in n and "id10278" in n and ">= 2 identities" in n for n in manifest["notes"])
  assert "id10278" in capsys.readouterr().err
  ds = data.Dataset(tmp_path / "out")
  ids = sorted(OPEN_SUBSET)
  arrays = {s: ds.arrays(s) for s in ds.splits}
  assert set(arrays["test"]["identity"]) == {"id10278"}
  assert "id10278" not in set(arrays["train"]["identity"]) | set(arrays["validation"]["identity"])
  videos = split_by_video({"id": i, "split": s} for s in arrays for i in arrays[s]["id"])
  assert sum(len(v) for v in videos.values()) == len(set().union(*videos.values()))
  for split in arrays:
    assert [ids.index(i) for i in arrays[split]["identity"]] == list(arrays[split]["label"])
  # Two held-out identities: no warning. None: a clear error.
  meta = (root / "vox1_meta.csv").read_text()
  marked = meta.replace("id10118\tCaitriona_Balfe\tf\tIreland\tdev", "id10118\tCaitriona_Balfe\tf\tIreland\ttest")
  assert marked != meta
  (root / "vox1_meta.csv").write_text(marked)
  two = voxceleb1.list_examples(root, split_policy="open")
  assert {e["identity"] for e in two.examples if e["split"] == "test"} == {"id10118", "id10278"}
  assert voxceleb1.split_warnings(two.examples) == []
  small = make_small_root(shared_data / "voxceleb1-mini", tmp_path / "dev_only", frames=1)
  with pytest.raises(ValueError, match="the open split leaves test empty"):
    voxceleb1.list_examples(small, split_policy="open")
  assert voxceleb1.list_examples(small).split_policy == "closed"


def test_closed_split_records_its_policy(mini_prepared):
  manifest, _ = mini_prepared
  assert manifest["split_policy"] == "closed"
  assert any(n.startswith("split_policy closed") for n in manifest["notes"])
  assert not any(n.startswith("warning") for n in manifest["notes"])
