"""Prep on Apache Beam (DirectRunner, 2 worker processes) gives single-machine prep's dataset, record for record."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from data_prep import pipeline, prepare, storage, voxceleb1
from mmvae import cli
from mmvae import config as config_lib

pytest.importorskip("apache_beam", reason="Apache Beam is not installed (pip install 'mmvae[beam]')")

BEAM = "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing"
SAME = ("fingerprint", "splits", "skipped", "warnings", "audio_normalisation", "modalities", "identities", "notes")
SMALL_SYNTHETIC = dict(identities=4, videos_per_identity=3, utterances_per_video=2, frames_per_video=2,
                       utterance_seconds=3.0)


def stored(out):
  """{split: (shard lengths, [record])} read back through TFDS, and the columns, of the dataset in OUT."""
  manifest = json.loads((out / "manifest.json").read_text())
  builder = tfds.builder_from_directory(str(out / manifest["tfds_dir"]))
  splits = {}
  for split, info in manifest["splits"].items():
    source = builder.as_data_source(split)
    splits[split] = (list(builder.info.splits[split].shard_lengths), [source[i] for i in range(info["examples"])])
  columns = {split: dict(np.load(out / "columns" / f"{split}.npz")) for split in manifest["splits"]}
  return splits, columns


def assert_same_dataset(local, beam, local_out, beam_out):
  """Same manifest content, shard boundaries, records (every field, bit for bit) and columns."""
  for key in SAME:
    assert beam[key] == local[key], key
  (local_splits, local_columns), (beam_splits, beam_columns) = stored(local_out), stored(beam_out)
  assert beam_splits.keys() == local_splits.keys()
  for split, (lengths, records) in local_splits.items():
    assert beam_splits[split][0] == lengths, split
    for mine, theirs in zip(beam_splits[split][1], records, strict=True):
      assert mine.keys() == theirs.keys()
      for key in theirs:
        np.testing.assert_array_equal(mine[key], theirs[key], err_msg=f"{split} {key}")
    for key, column in local_columns[split].items():
      np.testing.assert_array_equal(beam_columns[split][key], column)


def prep_root(root, out, config, beam, examples_per_shard=None):
  """prepare_voxceleb1's steps, with a chosen shard size so that a small corpus fills several shards."""
  with storage.Build(out, inputs={"--root": root}) as build:
    layout, notes = voxceleb1.layout_and_notes(root, False, "voxceleb1", "closed")
    return pipeline.run(layout, "voxceleb1", build, config_lib.load(config), False, 2, notes,
                            examples_per_shard=examples_per_shard, beam_options=beam)


def test_voxceleb1_mini_with_a_bad_and_a_resampled_wav(shared_data, tmp_path):
  """The real mini set (time-averaged audio: spooled train statistics), one train WAV unreadable and one an
  8 kHz 1 s clip (resampled up, zero-padded: manifest warnings), in shards of 5: the skipped example must not
  shift the shard boundaries, which follow the kept examples as local prep's do."""
  mini, root = shared_data / "voxceleb1-mini", tmp_path / "root"
  shutil.copytree(mini, root, copy_function=os.symlink)  # links: only the two files below are replaced
  train = [line.split()[1] for line in (mini / "iden_split.txt").read_text().splitlines() if line.startswith("1 ")]
  bad, short = root / "wav" / train[1], root / "wav" / train[7]
  bad.unlink()
  bad.write_bytes(b"RIFF not a wav")
  wave, rate = soundfile.read(mini / "wav" / train[7], dtype="int16")
  short.unlink()
  soundfile.write(short, wave[:rate:2], rate // 2, subtype="PCM_16")

  local = prep_root(root, tmp_path / "local", "reference:tiny", None, examples_per_shard=5)
  beam = prep_root(root, tmp_path / "beam", "reference:tiny", BEAM, examples_per_shard=5)
  assert_same_dataset(local, beam, tmp_path / "local", tmp_path / "beam")
  # Independently of either prep: the corrupt file is the one skip, the short clip gives the warnings, and the
  # train shards hold 5 kept examples each with the rest in the last.
  assert [s["path"] for s in beam["skipped"]] == [str(bad)]
  assert {w["path"] for w in beam["warnings"]} == {str(short)} and len(beam["warnings"]) == 2
  kept = len(train) - 1
  assert beam["splits"]["train"]["examples"] == kept
  assert stored(tmp_path / "beam")[0]["train"][0] == [5] * (kept // 5) + ([kept % 5] if kept % 5 else [])
  assert beam["audio_normalisation"] is not None


@pytest.fixture(scope="module")
def synthetic_raw(tmp_path_factory):
  """A small synthetic corpus generated once (OUT/raw of a prep), in VoxCeleb1 layout."""
  out = tmp_path_factory.mktemp("beam_synthetic") / "generated"
  prepare.prepare_synthetic(out, seed=0, config="synthetic:tiny", workers=1, **SMALL_SYNTHETIC)
  return out / "raw"


@pytest.mark.parametrize("time_average", [True, False])
def test_synthetic_corpus_same_as_local(synthetic_raw, tmp_path, time_average):
  """synthetic:tiny time-averages (spool, statistics, then shards); without it every split is written directly."""
  config = config_lib.load("synthetic:tiny", [f"data.time_average={time_average}"])
  local = prepare.prepare_voxceleb1(synthetic_raw, tmp_path / "local", config=config, workers=1, corpus="synthetic")
  beam = prepare.prepare_voxceleb1(synthetic_raw, tmp_path / "beam", config=config, corpus="synthetic",
                                   beam_options=BEAM)
  assert_same_dataset(local, beam, tmp_path / "local", tmp_path / "beam")
  assert (beam["audio_normalisation"] is not None) == time_average
  assert sum(s["examples"] for s in beam["splits"].values()) == 4 * 3 * 2
  assert not any(tmp_path.glob(".beam.partial-*")), "the build folder was swapped in"


def test_cli_beam_gives_the_local_fingerprint(synthetic_raw, tmp_path):
  """`mmvae prep voxceleb1 --beam` (the default DirectRunner options) against the library's local prep."""
  local = prepare.prepare_voxceleb1(synthetic_raw, tmp_path / "local", config="synthetic:tiny", workers=1)
  assert cli.main(["prep", "voxceleb1", "--root", str(synthetic_raw), "--out", str(tmp_path / "beam"),
                   "--config", "synthetic:tiny", "--beam"]) == 0
  beam = json.loads((tmp_path / "beam" / "manifest.json").read_text())
  assert beam["fingerprint"] == local["fingerprint"]


def test_cli_without_beam_installed_says_how_to_get_it(synthetic_raw, tmp_path, capsys, monkeypatch):
  """A missing apache_beam (sys.modules[name] = None is how Python marks a module unavailable): one line, no work."""
  monkeypatch.setitem(sys.modules, "apache_beam", None)
  assert cli.main(["prep", "voxceleb1", "--root", str(synthetic_raw), "--out", str(tmp_path / "out"),
                   "--config", "synthetic:tiny", "--beam-options=--runner=DirectRunner"]) == 2
  assert capsys.readouterr().err.strip() == "mmvae prep: error: --beam needs Apache Beam: pip install 'mmvae[beam]'"
  assert not (tmp_path / "out").exists()
