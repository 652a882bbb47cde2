"""What an older mmvae made is refused in one line that says so, never upgraded: datasets and runs."""

import json
import re
import shutil

import pytest

from mmvae import cli
from mmvae import config as config_lib


def run_cli(capsys, *argv) -> tuple[int, list[str]]:
  """Exit code and stderr's lines (progress bars dropped) of `mmvae ARGV` run in this process."""
  capsys.readouterr()
  rc = cli.main([str(a) for a in argv])
  err = capsys.readouterr().err
  assert "Traceback" not in err, err
  return rc, [line.strip() for line in re.split(r"[\r\n]", err) if line.strip() and not re.search(r"\d+%\|", line)]


@pytest.mark.parametrize("made", ["dataset", "config.json", "run.json"])
def test_what_an_older_mmvae_made_is_refused_in_one_line(made, synthetic_dataset, tmp_path, capsys):
  data_dir, workdir = tmp_path / "data", tmp_path / "run"
  shutil.copytree(synthetic_dataset, data_dir)
  manifest = json.loads((data_dir / "manifest.json").read_text())
  if made == "dataset":  # prep wrote no `modalities` before datasets declared them (audio and face in `features`)
    del manifest["modalities"]
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    argv = ["train", "--config", "synthetic:tiny", "--data", data_dir, "--workdir", workdir]
    pattern = r"made by an older mmvae .*: re-run prep$"
  else:  # a run's config.json from before model.kind existed, or a run.json from before it recorded modalities
    workdir.mkdir()
    config = config_lib.to_dict(config_lib.load("synthetic:tiny"))
    run = {"data_dir": str(data_dir), "data_fingerprint": manifest["fingerprint"], "num_classes": 4}
    if made == "config.json":
      del config["model"]["kind"]
      run["modalities"] = manifest["modalities"]
    (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "run.json").write_text(json.dumps(run))
    argv = ["analyze", "--workdir", workdir]
    pattern = rf"{re.escape(str(workdir / made))} was made by an older mmvae .*: train a new run with this version$"
  rc, lines = run_cli(capsys, *argv)
  command = argv[0]
  errors = [line for line in lines if line.startswith(f"mmvae {command}: error: ")]
  assert rc == 2 and len(errors) == 1 and len(lines) == 1, (rc, lines)
  assert re.search(pattern, errors[0]), errors[0]
  if made == "config.json":
    assert "model.kind" in errors[0]  # names what it lacks
  assert not (workdir / "report").exists() and not (workdir / "checkpoints").exists()
