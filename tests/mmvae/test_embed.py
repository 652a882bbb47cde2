"""`mmvae embed`: a run's posterior means per example, checked against the model's own encode, and joined back."""

import numpy as np
import pytest

from data_prep import join
from mmvae import cli, data, embed
from mmvae import config as config_lib
from mmvae.train import checkpoints, entry


@pytest.fixture(scope="module")
def run(synthetic_dataset, tmp_path_factory):
  """synthetic:tiny (6 steps) on the shared 4-identity corpus: audio [40] and face [2 frames, 32, 32, 3]."""
  workdir = tmp_path_factory.mktemp("embed") / "run"
  entry.train(config_lib.load("synthetic:tiny"), synthetic_dataset, workdir)
  return workdir


def _direct(model, modality, stored):
  """model.encode on each stored frame (inputs computed here), posterior means averaged over frames."""
  if modality == "face":  # uint8 [N, K, S, S, C] -> K frames in [0, 1]
    frames = [stored[:, k].astype(np.float32) / 255.0 for k in range(stored.shape[1])]
  else:
    frames = [np.asarray(stored, np.float32)]
  return np.mean([np.asarray(model.encode(modality, x)[0]) for x in frames], axis=0)


def test_face_rows_are_the_frame_averaged_posterior_means(run, synthetic_dataset, tmp_path):
  out = embed.export(run, "face", tmp_path / "face.npz")
  saved = np.load(tmp_path / "face.npz", allow_pickle=False)
  assert sorted(saved.files) == ["embeddings", "ids", "splits"]
  ds = data.Dataset(synthetic_dataset)
  assert saved["ids"].dtype.kind == "U" and saved["splits"].dtype.kind == "U"
  assert saved["embeddings"].dtype == np.float32 and saved["embeddings"].shape == (112, 8)  # latent_dim 8
  np.testing.assert_array_equal(saved["ids"], np.concatenate([ds.arrays(s)["id"] for s in ds.splits]))
  np.testing.assert_array_equal(saved["splits"], np.repeat(ds.splits, [ds.num_examples(s) for s in ds.splits]))
  np.testing.assert_array_equal(out["embeddings"], saved["embeddings"])
  model, _, _ = checkpoints.load_run(run)
  for split, rows in (("test", slice(None)), ("train", slice(0, 80, 9))):
    stored = ds.arrays(split)["face"][rows]
    assert stored.shape[1] == 2  # two frames: their average is what is checked
    got = saved["embeddings"][saved["splits"] == split][rows]
    np.testing.assert_allclose(got, _direct(model, "face", stored), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, np.asarray(model.encode("face", stored[:, 0].astype(np.float32) / 255.0)[0]),
                           rtol=1e-5, atol=1e-6)  # not just the first frame


def test_cli_checkpoint_splits_and_a_join_round_trip(run, synthetic_dataset, tmp_path, capsys):
  target = tmp_path / "audio.npz"
  assert cli.main(["embed", "--workdir", str(run), "--modality", "audio", "--out", str(target),
                   "--checkpoint", "last"]) == 0
  out = capsys.readouterr().out
  assert "audio posterior means (8 dims) of train 80, validation 16, test 16 examples, last checkpoint" in out
  saved = np.load(target)
  ds = data.Dataset(synthetic_dataset)
  model, _, _ = checkpoints.load_run(run, which="last")
  audio = np.concatenate([ds.arrays(s)["audio"] for s in ds.splits])
  np.testing.assert_allclose(saved["embeddings"], _direct(model, "audio", audio), rtol=1e-5, atol=1e-6)
  best, _, _ = checkpoints.load_run(run, which="best")
  assert not np.allclose(saved["embeddings"], _direct(best, "audio", audio), rtol=1e-5, atol=1e-6)
  # --splits: those splits only, in the order given, the same rows.
  some = embed.export(run, "audio", tmp_path / "some.npz", splits="test,validation", which="last")
  assert list(some["splits"]) == ["test"] * 16 + ["validation"] * 16
  for split in ("test", "validation"):
    np.testing.assert_array_equal(some["embeddings"][some["splits"] == split],
                                  saved["embeddings"][saved["splits"] == split])
  # The format `prep features --join` reads: the run's space as a new modality of its dataset.
  join.join_embeddings(synthetic_dataset, target, "voice_z", tmp_path / "joined")
  joined = data.Dataset(tmp_path / "joined")
  for split in ds.splits:
    np.testing.assert_array_equal(joined.arrays(split)["voice_z"], saved["embeddings"][saved["splits"] == split])


def test_unknown_modality_and_split_are_one_line_errors(run, tmp_path, capsys):
  assert cli.main(["embed", "--workdir", str(run), "--modality", "voise", "--out", str(tmp_path / "x.npz")]) == 2
  err = capsys.readouterr().err  # 'voice', how reports show 'audio', is accepted (tests/test_front_door.py)
  assert err == f"mmvae embed: error: --modality 'voise' is not a modality of the run {run} (it has audio (shown " \
                "as voice), face)\n"
  with pytest.raises(ValueError, match=r"--splits names \['dev'\], which the dataset does not have"):
    embed.export(run, "audio", tmp_path / "x.npz", splits="train,dev")
  with pytest.raises(ValueError, match=r"must end in \.npz"):
    embed.export(run, "audio", tmp_path / "x.txt")
  assert not list(tmp_path.iterdir())


def test_a_split_too_large_for_memory_is_encoded_chunk_by_chunk(run, synthetic_dataset, tmp_path, monkeypatch):
  """Streamed from disk in chunks (never `arrays`), the rows are the model's own frame-averaged means."""
  in_memory = embed.export(run, "face", tmp_path / "whole.npz", splits="train,test")
  monkeypatch.setattr(data, "IN_MEMORY_BYTES", 0)
  monkeypatch.setattr(data, "CHUNK", 24)  # 80 training examples: chunks of 24, 24, 24, 8

  def no_whole_split(*_):
    raise AssertionError("a streamed export loaded a whole split")

  monkeypatch.setattr(data.Dataset, "arrays", no_whole_split)
  streamed = embed.export(run, "face", tmp_path / "streamed.npz", splits="train,test")
  np.testing.assert_array_equal(streamed["ids"], in_memory["ids"])
  np.testing.assert_array_equal(streamed["splits"], in_memory["splits"])
  assert streamed["embeddings"].dtype == np.float32
  model, _, _ = checkpoints.load_run(run)
  ds = data.Dataset(synthetic_dataset)
  stored = ds.read("train", range(ds.num_examples("train")))["face"]  # read here, not through export
  np.testing.assert_allclose(streamed["embeddings"][streamed["splits"] == "train"], _direct(model, "face", stored),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(streamed["embeddings"], in_memory["embeddings"], rtol=1e-5, atol=1e-6)
