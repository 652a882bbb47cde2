"""`mmvae prep features --join`: a prepared dataset plus one precomputed modality looked up by example id."""

import json

import numpy as np
import pytest

from data_prep import join
from mmvae import cli, data

DIM = 6


def projection(arrays: dict, dim: int = DIM, seed: int = 1) -> np.ndarray:
  """Each example's stored face (all frames, flattened, as float64) times a seeded Gaussian matrix, as float32."""
  flat = arrays["face"].reshape(len(arrays["face"]), -1).astype(np.float64)
  w = np.random.default_rng(seed).normal(0.0, 1.0 / np.sqrt(flat.shape[1]), (flat.shape[1], dim))
  return (flat @ w).astype(np.float32)


def all_examples(data_dir):
  """({split: arrays}, ids of every split, their projections) of a prepared dataset, read with mmvae.data."""
  ds = data.Dataset(data_dir)
  arrays = {s: ds.arrays(s) for s in ds.splits}
  ids = np.concatenate([a["id"] for a in arrays.values()])
  return arrays, ids, np.concatenate([projection(a) for a in arrays.values()])


def write_npz(path, ids, x, extra=0, seed=0):
  """Rows in a shuffled order, plus `extra` embeddings of ids the dataset does not have."""
  order = np.random.default_rng(seed).permutation(len(ids))
  ids, x = np.asarray(ids)[order], x[order]
  if extra:
    ids = np.concatenate([ids, [f"stranger/{i}.wav" for i in range(extra)]])
    x = np.concatenate([x, np.ones((extra, x.shape[1]), np.float32)])
  np.savez(path, ids=ids, embeddings=x)
  return path


def write_folder(root, ids, rows):
  for i, x in zip(ids, rows):
    (root / f"{i}.npy").parent.mkdir(parents=True, exist_ok=True)
    np.save(root / f"{i}.npy", x)
  return root


@pytest.fixture(scope="module")
def source(synthetic_dataset):
  return (synthetic_dataset, *all_examples(synthetic_dataset))


@pytest.fixture(scope="module")
def joined(source, tmp_path_factory):
  base = tmp_path_factory.mktemp("join")
  data_dir, _, ids, x = source
  npz = write_npz(base / "emb.npz", ids, x, extra=3)
  folder = write_folder(base / "per_example", ids, x)
  manifests = {"npz": join.join_embeddings(data_dir, npz, "face_proj", base / "from_npz"),
               "folder": join.join_embeddings(data_dir, folder, "face_proj", base / "from_folder")}
  return base, manifests


@pytest.mark.parametrize("layout", ["npz", "folder"])
def test_every_example_gets_its_own_embedding_and_keeps_everything_else(source, joined, layout):
  data_dir, arrays, ids, _ = source
  base, manifests = joined
  out = base / ("from_npz" if layout == "npz" else "from_folder")
  ds = data.Dataset(out)
  assert ds.splits == list(arrays) and set(ds.splits) == {"train", "validation", "test"}
  for split, old in arrays.items():
    new = ds.arrays(split)
    assert set(new) == set(old) | {"face_proj"}
    for key, value in old.items():  # modalities, label and text fields: bit-identical, same dtype
      assert new[key].dtype == value.dtype and np.array_equal(new[key], value), (split, key)
    assert new["face_proj"].dtype == np.float32 and new["face_proj"].shape == (len(old["id"]), DIM)
    np.testing.assert_array_equal(new["face_proj"], projection(old))  # as given: no standardisation
  before = json.loads((data_dir / "manifest.json").read_text())
  after = json.loads((out / "manifest.json").read_text())
  assert after["modalities"] == before["modalities"] + [
      {"name": "face_proj", "kind": "vector", "shape": [DIM], "dtype": "float32"}]
  for key in ("corpus", "identities", "relevance", "attributes", "data_config", "audio_normalisation", "config",
              "split_policy", "skipped", "warnings", "tfds_name"):
    assert after[key] == before[key], key
  assert after["notes"][:len(before["notes"])] == before["notes"]
  assert any(n.startswith("joined face_proj from ") and f"({DIM} dims) by example id" in n for n in after["notes"])
  if layout == "npz":
    assert any(f"3 of the {len(ids) + 3} embeddings have ids that are not in the dataset" in n
               for n in after["notes"])
  else:
    assert not any("not in the dataset" in n for n in after["notes"])
  assert after["joins"][-1]["dropped"] == {"train": 0, "validation": 0, "test": 0}
  assert after["splits"] == before["splits"] and after["fingerprint"] != before["fingerprint"]


def test_both_layouts_give_the_same_dataset(joined):
  base, manifests = joined
  from_npz, from_folder = data.Dataset(base / "from_npz"), data.Dataset(base / "from_folder")
  assert from_npz.splits == from_folder.splits
  for split in from_npz.splits:  # every stored field of every example, read back from both
    a, b = from_npz.arrays(split), from_folder.arrays(split)
    assert set(a) == set(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a), split
  # The same examples, so the same fingerprint: it hashes the content, not where the embeddings were read from.
  assert manifests["npz"]["fingerprint"] == manifests["folder"]["fingerprint"]


def test_drop_missing_leaves_out_exactly_those_examples(source, tmp_path, capsys):
  data_dir, arrays, ids, x = source
  gone = {arrays["train"]["id"][0], arrays["train"]["id"][5], arrays["test"]["id"][3]}
  keep = np.array([i not in gone for i in ids])
  npz = write_npz(tmp_path / "partial.npz", ids[keep], x[keep])
  with pytest.raises(ValueError, match=r"^3 examples of .* have no embedding in .*\(e\.g\. .*\); pass --drop-missing"):
    join.join_embeddings(data_dir, npz, "face_proj", tmp_path / "refused")
  assert not (tmp_path / "refused").exists()
  capsys.readouterr()
  assert cli.main(["prep", "features", "--join", str(data_dir), "--embeddings", str(npz), "--name", "face_proj",
                   "--out", str(tmp_path / "out"), "--drop-missing"]) == 0
  out = capsys.readouterr().out
  assert "3 examples without an embedding dropped" in out and str(tmp_path / "out") in out
  ds = data.Dataset(tmp_path / "out")
  for split, old in arrays.items():
    kept = np.array([i not in gone for i in old["id"]])
    new = ds.arrays(split)
    assert list(new["id"]) == [i for i in old["id"] if i not in gone]
    for key, value in old.items():
      assert np.array_equal(new[key], value[kept]), (split, key)
    np.testing.assert_array_equal(new["face_proj"], projection(old)[kept])
  manifest = ds.manifest
  assert manifest["splits"]["train"]["examples"] == len(arrays["train"]["id"]) - 2
  assert manifest["splits"]["test"]["examples"] == len(arrays["test"]["id"]) - 1
  assert any("3 examples without an embedding left out (train 2, test 1)" in n for n in manifest["notes"])


def test_sequences_become_a_sequence_modality(source, tmp_path):
  from mmvae.modalities import sequence
  data_dir, arrays, ids, x = source
  lengths = 1 + np.arange(len(ids)) % 4  # 1..4 steps of D values each
  rows = [np.repeat(v[None], n, 0) * (1 + np.arange(n, dtype=np.float32))[:, None] for v, n in zip(x, lengths)]
  folder = write_folder(tmp_path / "seq", ids, rows)
  manifest = join.join_embeddings(data_dir, folder, "face_seq", tmp_path / "out")
  assert manifest["modalities"][-1] == {"name": "face_seq", "kind": "sequence", "shape": [4, DIM + 1],
                                        "dtype": "float32", "step_shape": [DIM]}
  ds = data.Dataset(tmp_path / "out")
  given = dict(zip(ids, rows))
  for split in ds.splits:
    new = ds.arrays(split)
    for i, stored in zip(new["id"], new["face_seq"]):
      np.testing.assert_array_equal(sequence.unpack(stored), given[i])
      assert (stored[len(given[i]):] == 0).all()


def test_bad_inputs_fail_in_one_line_and_write_nothing(source, tmp_path):
  data_dir, _, ids, x = source
  good = write_npz(tmp_path / "good.npz", ids, x)
  cases = [
      (data_dir, good, "face", r"--name 'face' is already a modality of the dataset \(it has \['audio', 'face'\]\)"),
      (data_dir, good, "label", r"--name 'label' is a reserved per-example field"),
      (data_dir, good, "video", r"--name 'video' is a reserved per-example field"),
      (data_dir, good, "3d", r"--name '3d' is not a Python identifier"),
      (data_dir, good, "class", r"--name 'class' is not a Python identifier"),
      (data_dir, write_npz(tmp_path / "dup.npz", np.concatenate([ids, ids[:2]]), np.concatenate([x, x[:2]])), "z",
       r"--embeddings: 2 ids occur more than once \(e\.g\. '.+', '.+'\)"),
      (data_dir, write_folder(tmp_path / "mixed", ids[:3], [x[0], x[1], x[2, :4]]), "z",
       r"inconsistent size D: 6 \(id '.+'\) and 4 \(id '.+'\)"),
      (data_dir, write_npz(tmp_path / "few.npz", ids[7:], x[7:]), "z",
       r"^7 examples of .* have no embedding .*\(e\.g\. '[^']+', '[^']+', '[^']+', '[^']+', '[^']+'\); pass "
       r"--drop-missing"),
      (data_dir, tmp_path / "nothing.txt", "z", r"is neither an \.npz file nor a folder"),
      (tmp_path / "not_a_dataset", good, "z", r"^--join .*not_a_dataset: .*not a prepared dataset"),
  ]
  (tmp_path / "nothing.txt").write_text("x")
  (tmp_path / "not_a_dataset").mkdir()
  np.savez(tmp_path / "ints.npz", ids=ids, embeddings=np.ones((len(ids), 3), np.int64))
  cases.append((data_dir, tmp_path / "ints.npz", "z", r"embedding has dtype int64; expected floats"))
  for i, (src, emb, name, pattern) in enumerate(cases):
    with pytest.raises(ValueError, match=pattern) as info:
      join.join_embeddings(src, emb, name, tmp_path / f"out{i}")
    assert "\n" not in str(info.value), str(info.value)
    assert not (tmp_path / f"out{i}").exists(), (i, pattern)


def test_cli_needs_exactly_one_of_root_and_join(source, tmp_path, capsys):
  data_dir, _, ids, x = source
  npz = write_npz(tmp_path / "e.npz", ids, x)
  for argv in (["--out", str(tmp_path / "o")],
               ["--root", str(tmp_path), "--join", str(data_dir), "--out", str(tmp_path / "o")]):
    with pytest.raises(SystemExit) as info:
      cli.main(["prep", "features", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--root" in err[-1] and "--join" in err[-1]
  for argv, message in (
      (["--join", str(data_dir)], "--join needs --embeddings and --name"),
      (["--join", str(data_dir), "--embeddings", str(npz), "--name", "z", "--anchor", "face"],
       "--anchor applies to --root, not to --join"),
      (["--root", str(tmp_path), "--name", "z"], "--name applies to --join, not to --root")):
    assert cli.main(["prep", "features", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"mmvae prep: error: {message}", err
  assert not (tmp_path / "o").exists()
