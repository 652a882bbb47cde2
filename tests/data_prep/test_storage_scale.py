"""Prep at any size: shards written without TensorFlow, streamed, normalised from a spool, resumable."""

import hashlib
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import audio, example, prepare, shards, spool, storage, synthetic, voxceleb1
from mmvae import config as config_lib
from mmvae import data

MODALITIES = [{"name": "audio", "kind": "vector", "shape": [5], "dtype": "float32"},
              {"name": "face", "kind": "image", "shape": [1, 3, 3, 1], "dtype": "uint8"}]
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _records(n: int, split: str) -> list[dict]:
  rng = np.random.default_rng(len(split))
  return [{"audio": rng.normal(size=5).astype(np.float32), "face": rng.integers(0, 256, (1, 3, 3, 1), np.uint8),
           "label": int(i % 3), "id": f"{split}/{i:04d}", "identity": f"p{i % 3}", "video": f"v{i % 5}",
           "gender": "mf"[i % 2]} for i in range(n)]


def _digest(example: dict) -> bytes:
  """A plain loop over the example's fields, sorted by name: what the fingerprint's per-example digest covers."""
  h = hashlib.sha256()
  for key in sorted(example):
    v = np.asarray(example[key])
    h.update(f"{key}:{v.dtype.str}:{v.shape}:".encode())
    h.update(str(example[key]).encode() if v.dtype.kind in "US" else v.tobytes())
  return h.digest()


class _OldBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The TFDS builder prep used before (its shuffler keeps order with disable_shuffling): the reference."""

  VERSION = tfds.core.Version("1.0.0")
  name = "mmvae_reference"
  RECORDS: dict = {}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=shards.features_dict(MODALITIES), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in self.RECORDS}

  def _generate_examples(self, split):
    for record in self.RECORDS[split]:
      yield record["id"], record


def test_a_split_in_many_shards_is_written_and_read_without_tensorflow(tmp_path):
  assert importlib.util.find_spec("tensorflow") is None, "this test needs an environment without TensorFlow"
  records = {"train": _records(50, "train"), "test": _records(9, "test")}
  out = tmp_path / "out"
  manifest = storage.write_dataset(out, "voxceleb1", {s: (lambda r=r: iter(r)) for s, r in records.items()},
                                   MODALITIES, {"identities": []}, examples_per_shard=7)
  assert not [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]
  builder_dir = out / manifest["tfds_dir"]
  assert sorted(p.name for p in builder_dir.glob("*train*")) == [
      f"mmvae_voxceleb1-train.array_record-{i:05d}-of-00008" for i in range(8)]
  info = json.loads((builder_dir / "dataset_info.json").read_text())
  assert [s["shardLengths"] for s in info["splits"]] == [["7"] * 7 + ["1"], ["7", "2"]]
  # The same records as TFDS's own builder writes, through TFDS's reader and through mmvae's.
  _OldBuilder.RECORDS = records
  old = _OldBuilder(data_dir=str(tmp_path / "old"), file_format="array_record")
  old.download_and_prepare(download_dir=str(tmp_path / "old/dl"))
  ours = tfds.builder_from_directory(str(builder_dir))
  for split, expected in records.items():
    got, ref = ours.as_data_source(split), old.as_data_source(split)
    assert len(got) == len(ref) == len(expected)
    for a, b, e in zip(got, ref, expected):
      assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
      assert np.array_equal(a["audio"], e["audio"]) and a["id"].decode() == e["id"]
    ds = data.Dataset(out).read(split, range(len(expected)))
    assert list(ds["id"]) == [e["id"] for e in expected]
    with np.load(out / "columns" / f"{split}.npz") as columns:
      assert columns["label"].dtype == np.int64 and list(columns["label"]) == [e["label"] for e in expected]
      assert columns["id"].dtype.kind == "U" and list(columns["video"]) == [e["video"] for e in expected]
  digests = {s: hashlib.sha256(b"".join(_digest(e) for e in r)).hexdigest() for s, r in records.items()}
  assert manifest["fingerprint"] == storage.fingerprint(manifest, digests)
  assert manifest["columns"] == "columns" and not (out / shards.STAGE).exists()


def test_spooled_statistics_equal_numpy_over_the_stack(tmp_path):
  rng = np.random.default_rng(3)
  rows = (rng.normal(size=(1000, 6)) * rng.uniform(0, 1e3, 6) + 7).astype(np.float32)
  rows[:, 2] = 4.0  # a constant bin: floored
  for index, lo in enumerate(range(0, len(rows), 300)):
    spool.write_part(tmp_path, index, ({"audio": r, "label": 0, "id": "x"} for r in rows[lo:lo + 300]))
  stats = spool.mean_std(tmp_path, spool.done_parts(tmp_path), "audio", 1e-8)
  stack = rows.astype(np.float64)
  assert stats["mean"] == stack.mean(axis=0).tolist()
  assert stats["std"] == np.maximum(stack.std(axis=0), 1e-8).tolist() and stats["std"][2] == 1e-8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("corpus") / "raw"
  synthetic.generate_corpus(root, identities=3, videos_per_identity=3, utterances_per_video=3, frames_per_video=2,
                            utterance_seconds=3.1, progress=False, workers=1)
  return root


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
  """{config: the corpus prepared uninterrupted, one worker, shards of at most 4 examples}, made on first use."""
  made = {}

  def get(config):
    if config not in made:
      with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shards, "MAX_SHARD_EXAMPLES", 4)  # several spool parts and shards
        out = tmp_path_factory.mktemp("prepared") / "out"
        made[config] = (out, prepare.prepare_voxceleb1(corpus, out, config=config, workers=1, corpus="synthetic"))
    return made[config]
  return get


def test_time_average_normalisation_equals_numpy_over_the_train_vectors(corpus, prepared):
  out, manifest = prepared("synthetic:tiny")
  cfg = config_lib.load("synthetic:tiny").data
  specs = [s for s in voxceleb1.list_examples(corpus).examples if s["split"] == "train"]
  raw = []
  for spec in specs:  # the worker's own recipe, one utterance at a time, seeded by its corpus index
    index = voxceleb1.list_examples(corpus).examples.index(spec)
    raw.append(audio.utterance_features(spec["wav"], cfg, True, np.random.default_rng((int(cfg.seed), index)),
                                        name=spec["wav"]))
  stack = np.stack(raw).astype(np.float64)
  norm = manifest["audio_normalisation"]
  assert norm["mean"] == stack.mean(axis=0).tolist()
  assert norm["std"] == np.maximum(stack.std(axis=0), example.STD_FLOOR).tolist()
  stored = data.Dataset(out).read("train", range(len(specs)))
  assert np.array_equal(stored["audio"], ((stack - stack.mean(0)) / np.array(norm["std"])).astype(np.float32))
  assert not list(out.parent.glob(".out.*")) and not (out / ".spool").exists()


KILLED_PREP = """
import os, signal, sys
from data_prep import prepare, shards
shards.MAX_SHARD_EXAMPLES = 4
real, written = shards.write_shard, []
def write_shard(*a, **k):
  if len(written) == int(sys.argv[3]):
    os.kill(os.getpid(), signal.SIGKILL)  # mid-prep, as a preempted machine would
  written.append(real(*a, **k))
  return written[-1]
shards.write_shard = write_shard
prepare.prepare_voxceleb1(sys.argv[1], sys.argv[2], config=sys.argv[4], workers=1, corpus="synthetic")
"""


@pytest.mark.parametrize("config", ["synthetic:tiny", "conv:tiny"])  # time-averaged (spooled) and full spectrograms
def test_a_killed_prep_resumes_at_its_shard_and_ends_with_the_same_fingerprint(corpus, prepared, tmp_path, capsys,
                                                                              monkeypatch, config):
  ref, reference = prepared(config)
  monkeypatch.setattr(shards, "MAX_SHARD_EXAMPLES", 4)
  out = tmp_path / "out"
  child = subprocess.run([sys.executable, "-c", KILLED_PREP, str(corpus), str(out), "3", config], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
  assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
  assert not out.exists() and len(list(tmp_path.glob(".out.partial-*/.shards/*/*.array_record"))) == 3
  capsys.readouterr()
  resumed = prepare.prepare_voxceleb1(corpus, out, config=config, workers=2, corpus="synthetic")
  assert "reusing its 3 finished shards" in capsys.readouterr().out
  assert resumed["fingerprint"] == reference["fingerprint"] and resumed["splits"] == reference["splits"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the killed build is gone
  a, b = data.Dataset(out), data.Dataset(ref)
  for split in a.splits:
    x, y = a.read(split, range(a.num_examples(split))), b.read(split, range(b.num_examples(split)))
    assert all(np.array_equal(x[k], y[k]) for k in x)
