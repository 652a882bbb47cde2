"""Damaged or edited prepared data through the real `mmvae` CLI (issue 24 items 6 and 12).

A manifest whose split counts were edited, a missing shard, a truncated shard and a shard with corrupted bytes
are each refused by `mmvae train` and `mmvae analyze` with exit 2 and one `mmvae <command>: error:` line naming
the split (and the shard), no traceback; a refused train leaves its new workdir empty, a refused analysis leaves
the run's report as it was. An intact copy of the same dataset still trains and analyses.
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

STEPS = ["--config.train.num_steps=4", "--config.train.checkpoint_every=2", "--config.train.eval_every=2"]
SPLIT_OF = {"train": "train", "analyze": "test"}  # the split each command is given a damaged copy of
FAULTS = ("edited_count", "missing", "truncated", "corrupted")


def mmvae(*argv, cwd=None) -> tuple[int, list[str], str]:
  """Exit code, stderr lines (progress bars dropped) and stderr of `mmvae ARGV` run as its own process."""
  out = subprocess.run([sys.executable, "-m", "mmvae.cli", *map(str, argv)], capture_output=True, text=True,
                       timeout=300, cwd=cwd)
  lines = [line.strip() for line in re.split(r"[\r\n]", out.stderr) if line.strip()]
  return out.returncode, [line for line in lines if not re.search(r"\d+%\|", line)], out.stderr


def snapshot(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_examples(dataset: pathlib.Path) -> int:
  """Test utterances in the corpus's own split file (label 3), counted without mmvae."""
  return sum(1 for line in (dataset / "raw" / "iden_split.txt").read_text().splitlines() if line.startswith("3 "))


test_examples.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
  """A tiny prepared synthetic corpus (`mmvae prep synthetic --identities 4 --config synthetic:tiny`)."""
  from data_prep import prepare
  out = tmp_path_factory.mktemp("faults_data") / "syn"
  prepare.prepare_synthetic(str(out), identities=4, seed=0, config="synthetic:tiny", workers=1)
  return out


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory) -> pathlib.Path:
  """A few steps trained and analysed on the intact dataset."""
  workdir = tmp_path_factory.mktemp("faults_data_run") / "run"
  rc, lines, err = mmvae("train", "--config", "synthetic:tiny", "--data", dataset, "--workdir", workdir, *STEPS)
  assert rc == 0 and "Traceback" not in err, err
  rc, lines, err = mmvae("analyze", "--workdir", workdir)
  assert rc == 0 and "Traceback" not in err, err
  return workdir


def damaged_copy(dataset: pathlib.Path, folder: pathlib.Path, fault: str, split: str) -> tuple[pathlib.Path, str]:
  """A copy of the dataset's records with `fault` put into `split`; (copy, the name of the shard damaged)."""
  copy = folder / f"{fault}-{split}"
  shutil.copytree(dataset, copy, ignore=shutil.ignore_patterns("raw"))
  manifest = json.loads((copy / "manifest.json").read_text())
  builder = copy / manifest["tfds_dir"]
  info = {s["name"]: s for s in json.loads((builder / "dataset_info.json").read_text())["splits"]}[split]
  shard = next(builder.glob(f"*-{split}.array_record-00000-of-*"))
  if fault == "edited_count":  # as a user editing manifest.json would: fewer examples than the shards hold
    manifest["splits"][split]["examples"] -= 6
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=1))
  elif fault == "missing":
    shard.unlink()
  elif fault == "truncated":
    with open(shard, "r+b") as f:
      f.truncate(shard.stat().st_size // 2)
  elif fault == "corrupted":  # same size, 16 bytes overwritten inside the records (not the index at the end)
    with open(shard, "r+b") as f:
      f.seek(int(info["numBytes"]) // 3)
      f.write(b"\xff" * 16)
  return copy, shard.name


def assert_one_line(rc, lines, err, command, split, shard, fault):
  errors = [line for line in lines if line.startswith(f"mmvae {command}: error: ")]
  assert rc == 2 and "Traceback" not in err, err
  assert len(errors) == 1 and len(lines) == 1, lines
  assert f"split {split!r}" in errors[0] and "mmvae prep" in errors[0], errors[0]
  if fault != "edited_count":
    assert shard in errors[0], errors[0]


def test_intact_dataset_trains_and_analyses_every_test_example(dataset, run):
  assert (run / "final.json").is_file() and (run / "report" / "report.md").is_file()
  metrics = json.loads((run / "report" / "metrics.json").read_text())
  assert metrics["examples"] == test_examples(dataset) == 16


@pytest.mark.parametrize("fault", FAULTS)
def test_damaged_data_refuses_train_in_one_line_and_leaves_the_new_workdir_empty(dataset, tmp_path, fault):
  copy, shard = damaged_copy(dataset, tmp_path, fault, SPLIT_OF["train"])
  workdir = tmp_path / "new_run"
  rc, lines, err = mmvae("train", "--config", "synthetic:tiny", "--data", copy, "--workdir", workdir, *STEPS)
  assert_one_line(rc, lines, err, "train", "train", shard, fault)
  if fault == "edited_count":
    assert "gives 74 examples" in lines[0] and "hold 80" in lines[0], lines[0]
  assert not workdir.exists() or not any(workdir.iterdir()), sorted(workdir.rglob("*"))


@pytest.mark.parametrize("fault", FAULTS)
def test_damaged_data_refuses_analyze_in_one_line_and_keeps_the_report(dataset, run, tmp_path, fault):
  copy, shard = damaged_copy(dataset, tmp_path, fault, SPLIT_OF["analyze"])
  before = snapshot(run)
  rc, lines, err = mmvae("analyze", "--workdir", run, "--data", copy)
  assert_one_line(rc, lines, err, "analyze", "test", shard, fault)
  if fault == "edited_count":  # the case: 10 examples scored instead of the 16 stored
    assert "gives 10 examples" in lines[0] and "hold 16" in lines[0], lines[0]
  assert snapshot(run) == before
