"""`mmvae prep features`: per-modality feature files (XMedia style) -> a dataset of `vector` modalities."""

import json

import numpy as np
import pytest

import mmvae
from data_prep import features
from mmvae import cli, data
from mmvae import config as config_lib

CLASSES = (3, 7, 11, 20)  # original label values: stored labels are 0..3
# {modality: (D, layout, {split: items per class})}: different counts per class and per modality.
CORPUS = {
    "image": (12, "npz", {"train": (6, 5, 7, 4), "validation": (2, 2, 2, 2), "test": (5, 4, 6, 3)}),
    "text": (7, "npz", {"train": (3, 2, 4, 1), "validation": (3, 2, 2, 3), "test": (2, 3, 1, 2)}),
    "audio": (5, "npy", {"train": (4, 5, 2, 3), "validation": (2, 1, 2, 1), "test": (2, 2, 2, 2)}),
}


def write_corpus(root, corpus=CORPUS, seed=0) -> dict:
  """Writes the files in both layouts; returns {modality: {split: (features float32, labels)}} as written."""
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  written = {}
  for name, (dim, layout, counts) in corpus.items():
    centres = rng.normal(3.0, 2.0, (len(CLASSES), dim))
    written[name] = {}
    for split, per_class in counts.items():
      y = rng.permutation(np.repeat(CLASSES, per_class))
      x = (centres[np.searchsorted(CLASSES, y)] + rng.normal(0, 0.5, (len(y), dim))).astype(np.float32)
      written[name][split] = (x, y)
      if layout == "npz":
        np.savez(root / f"{name}_{split}.npz", features=x, labels=y)
      else:
        np.save(root / f"{name}_{split}_features.npy", x)
        np.save(root / f"{name}_{split}_labels.npy", y)
  return written


def standardised(written: dict) -> dict:
  """The written features z-scored with each modality's train mean and std, computed here in float64."""
  out = {}
  for name, splits in written.items():
    train = splits["train"][0].astype(np.float64)
    mean, std = train.mean(axis=0), np.maximum(np.sqrt(((train - train.mean(axis=0)) ** 2).mean(axis=0)), 1e-8)
    out[name] = {s: ((x.astype(np.float64) - mean) / std, y) for s, (x, y) in splits.items()}
  return out


def source_rows(stored, source) -> np.ndarray:
  """For each stored vector, the index of the source item it equals (asserting that one does, closely)."""
  d = ((stored[:, None, :].astype(np.float64) - source[None]) ** 2).sum(-1)
  index = d.argmin(axis=1)
  np.testing.assert_allclose(d[np.arange(len(stored)), index], 0.0, atol=1e-9)
  return index


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  base = tmp_path_factory.mktemp("features")
  written = write_corpus(base / "raw")
  manifest = features.prepare_features(base / "raw", base / "out", seed=0)
  return base, written, manifest


def test_every_row_holds_source_items_of_its_class(prepared):
  base, written, manifest = prepared
  expected = standardised(written)
  ds = data.Dataset(base / "out")
  assert [m["kind"] for m in manifest["modalities"]] == ["vector"] * 3
  assert {m["name"]: m["shape"] for m in manifest["modalities"]} == {"image": [12], "text": [7], "audio": [5]}
  assert manifest["modalities"][0]["name"] == "image"  # the train anchor comes first
  assert [i["identity"] for i in manifest["identities"]] == ["3", "7", "11", "20"]
  assert manifest["relevance"] == "same class"
  # validation: text has the most items (10 against image's 8), so it anchors that split
  assert manifest["source"]["anchor"] == {"train": "image", "validation": "text", "test": "image"}
  for split in ("train", "validation", "test"):
    arrays = ds.arrays(split)
    anchor = manifest["source"]["anchor"][split]
    n = len(written[anchor][split][1])
    assert ds.num_examples(split) == n == manifest["splits"][split]["examples"]
    width = len(str(n - 1))
    assert list(arrays["id"]) == [f"{split}/{anchor}/{r:0{width}d}" for r in range(n)]
    np.testing.assert_array_equal(arrays["identity"], [str(c) for c in written[anchor][split][1]])
    np.testing.assert_array_equal(arrays["label"], [CLASSES.index(c) for c in written[anchor][split][1]])
    for name in CORPUS:
      x, y = expected[name][split]
      index = source_rows(arrays[name], x)
      np.testing.assert_array_equal(y[index], written[anchor][split][1])  # each item of the row's class
      if name == anchor:
        np.testing.assert_array_equal(index, np.arange(n))  # the anchor's items, each once, in order
        continue
      for c in CLASSES:  # every item of a class used before any is used again
        uses = np.bincount(index[y[index] == c], minlength=len(y))[y == c]
        rows = int((written[anchor][split][1] == c).sum())
        assert uses.sum() == rows and uses.max() - uses.min() <= 1, (split, name, c, uses)
        reused = max(0, rows - int((y == c).sum()))
        assert reused == rows - int((uses > 0).sum())
  norm = manifest["feature_normalisation"]["audio"]
  np.testing.assert_allclose(norm["mean"], written["audio"]["train"][0].astype(np.float64).mean(axis=0), rtol=1e-9)


def test_manifest_records_counts_reuse_and_the_gallery_caveat(prepared):
  _, written, manifest = prepared
  source = manifest["source"]
  assert source["items"] == {m: {s: len(y) for s, (_, y) in d.items()} for m, d in written.items()}
  # train: text has (3, 2, 4, 1) items for the anchor image's (6, 5, 7, 4) rows: 3 + 3 + 3 + 3 rows reuse one
  assert source["reused_rows"]["train"]["text"] == 12
  notes = " ".join(manifest["notes"])
  assert "reused" in notes and "galleries" in notes and "anchor" in notes


def test_same_seed_same_rows_other_seed_other_pairing(prepared, tmp_path):
  base, _, _ = prepared
  again = features.prepare_features(base / "raw", tmp_path / "again", seed=0)
  other = features.prepare_features(base / "raw", tmp_path / "other", seed=1)
  assert again["fingerprint"] == prepared[2]["fingerprint"] != other["fingerprint"]


def _drop_labels(root, written):
  (root / "audio_train_labels.npy").unlink()
  return "audio_train_labels.npy"


def _nan_row(root, written):
  x, y = written["audio"]["test"]
  x = x.copy()
  x[3, 1] = np.nan
  np.save(root / "audio_test_features.npy", x)
  return "row 3"


def _short_labels(root, written):
  x, y = written["text"]["train"]
  np.savez(root / "text_train.npz", features=x, labels=y[:-1])
  return "labels for"


def _missing_class(root, written):
  x, y = written["text"]["test"]
  keep = y != 20
  np.savez(root / "text_test.npz", features=x[keep], labels=y[keep])
  return "class 20"


def _not_an_identifier(root, written):
  for split in ("train", "validation", "test"):
    (root / f"text_{split}.npz").rename(root / f"3d_{split}.npz")
  return "--rename 3d="


def _wrong_dim(root, written):
  x, y = written["image"]["validation"]
  np.savez(root / "image_validation.npz", features=x[:, :5], labels=y)
  return "feature sizes differ"


@pytest.mark.parametrize("spoil", [_drop_labels, _nan_row, _short_labels, _missing_class, _not_an_identifier,
                                   _wrong_dim])
def test_bad_inputs_fail_in_one_line_before_any_build(spoil, tmp_path):
  written = write_corpus(tmp_path / "raw")
  expected = spoil(tmp_path / "raw", written)
  with pytest.raises(ValueError) as info:
    features.prepare_features(tmp_path / "raw", tmp_path / "out")
  message = str(info.value)
  assert "\n" not in message and expected in message, message
  assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no OUT, no build folder beside it


def test_rename_makes_a_name_usable_and_the_cli_runs(tmp_path, capsys):
  written = write_corpus(tmp_path / "raw")
  _not_an_identifier(tmp_path / "raw", written)
  rc = cli.main(["prep", "features", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
                 "--rename", "3d=pointcloud", "--anchor", "audio", "--no-standardize"])
  assert rc == 0, capsys.readouterr().err
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert [m["name"] for m in manifest["modalities"]] == ["audio", "image", "pointcloud"]
  assert manifest["feature_normalisation"] is None and manifest["source"]["rename"] == {"3d": "pointcloud"}
  arrays = data.Dataset(tmp_path / "out").arrays("train")
  np.testing.assert_array_equal(arrays["audio"], written["audio"]["train"][0])  # stored as given
  source_rows(arrays["pointcloud"], written["text"]["train"][0].astype(np.float64))
  rc = cli.main(["prep", "features", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "out2"),
                 "--config.data.seed=3"])
  assert rc == 2 and "takes no --config.KEY overrides" in capsys.readouterr().err


def test_out_that_is_not_a_dataset_is_refused_and_a_failed_run_keeps_the_old_dataset(prepared, tmp_path):
  base, written, manifest = prepared
  user = tmp_path / "mine"
  user.mkdir()
  (user / "thesis.tex").write_text("keep me")
  with pytest.raises(ValueError, match="not empty and holds no mmvae dataset"):
    features.prepare_features(base / "raw", user)
  assert [p.name for p in user.iterdir()] == ["thesis.tex"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
  # A failing run into a finished dataset leaves it as it was.
  features.prepare_features(base / "raw", tmp_path / "out")
  before = (tmp_path / "out" / "manifest.json").read_text()
  bad = tmp_path / "bad"
  write_corpus(bad)
  _nan_row(bad, written)
  with pytest.raises(ValueError):
    features.prepare_features(bad, tmp_path / "out")
  assert (tmp_path / "out" / "manifest.json").read_text() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "mine", "out"]


def test_a_contrastive_model_trains_and_is_analysed(prepared, tmp_path):
  base, _, _ = prepared
  config = config_lib.load("avdigits:tiny", ["model.kind=contrastive",
                                             # the base config names text's encoder 'bow' (a tokens encoder)
                                             "model.encoders.text=mlp"])
  final = mmvae.train(config, base / "out", tmp_path / "run")
  assert final["step"] == config.train.num_steps
  metrics = mmvae.analyze(tmp_path / "run")
  written = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
  assert written["modalities"] == ["image", "audio", "text"]
  for q in ("image", "audio", "text"):
    for g in ("image", "audio", "text"):
      if q != g:
        assert 0 < written[f"retrieval.{q}_to_{g}.mrr"] <= 1
  assert metrics["examples"] == 18 and metrics["identities"] == 4
