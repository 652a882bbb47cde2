"""Config loading, overrides and the CLI's handling of bad arguments."""

import re

import pytest

from mmvae import cli
from mmvae import config as config_lib


def test_every_config_and_tiny_variant_loads():
  names = config_lib.available()
  assert {"reference", "conv", "synthetic", "avdigits"} <= set(names)
  for name in names:
    full, tiny = config_lib.load(name), config_lib.load(f"{name}:tiny")
    assert full.to_dict().keys() == tiny.to_dict().keys()
    assert tiny.train.num_steps < full.train.num_steps


def test_reference_config_matches_the_reference_experiment():
  c = config_lib.load("reference")
  # 47,760 samples, 25 ms windows with a 10 ms hop at 16 kHz: 1 + (47760 - 400) // 160 frames.
  assert 1 + (c.data.segment_samples - 400) // 160 == 297
  assert (c.data.n_bins, c.data.face_size, c.data.grayscale, c.model.latent_dim) == (512, 23, True, 100)
  assert c.data.time_average and c.loss.wasserstein == "w2_gaussian"


def test_path_form_and_overrides(tmp_path):
  path = config_lib.CONFIG_DIR / "synthetic.py"
  c = config_lib.load(f"{path}:tiny", ["--config.train.batch_size=256", "parallel=pmap",
                                       "train.learning_rate=1", "model.hidden=[8, 4]"])
  assert c.name == "synthetic_tiny"
  assert (c.train.batch_size, c.parallel, c.train.learning_rate) == (256, "pmap", 1.0)
  assert c.model.hidden == (8, 4) and isinstance(c.train.learning_rate, float)


@pytest.mark.parametrize("override, error", [
    ("train.batchsize=3", KeyError),
    ("nosection.x=1", KeyError),
    ("train.batch_size=big", TypeError),
    ("train.batch_size", ValueError),
])
def test_bad_overrides_are_refused(override, error):
  with pytest.raises(error):
    config_lib.load("reference", [override])


def test_unknown_config_and_variant():
  with pytest.raises(FileNotFoundError, match="reference"):
    config_lib.load("nonexistent")
  with pytest.raises(ValueError, match="variant"):
    config_lib.load("reference:huge")


def test_cli_reports_bad_input_in_one_line(capsys, tmp_path):
  rc = cli.main(["train", "--config", "nonexistent", "--data", str(tmp_path), "--workdir", str(tmp_path)])
  err = capsys.readouterr().err
  assert rc == 2 and err.startswith("mmvae train: error:") and "Traceback" not in err
  with pytest.raises(SystemExit):
    cli.main(["analyze", "--workdir", str(tmp_path), "--bogus"])


@pytest.mark.parametrize("body, pattern", [
    ("def get_config(:\n  pass\n", r"bad\.py:1: SyntaxError: "),
    ("x = 1\n", r"bad\.py defines no get_config\(\)"),
    ("from mmvae import config_schema\n\ndef get_config():\n  c = config_schema.base_config()\n"
     "  c.train.batch_size = 1 / 0\n  return c\n", r"bad\.py:5: ZeroDivisionError: division by zero"),
    ("import no_such_module_here\n", r"bad\.py:1: ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("def get_config():\n  return {'train': {}}\n", r"bad\.py: get_config\(\) must return an ml_collections"),
])
def test_a_broken_config_file_is_one_line_naming_file_and_line(body, pattern, tmp_path, capsys):
  path = tmp_path / "bad.py"
  path.write_text(body)
  rc = cli.main(["train", "--config", str(path), "--data", str(tmp_path), "--workdir", str(tmp_path / "run")])
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert rc == 2 and len(lines) == 1 and lines[0].startswith("mmvae train: error: config "), err
  assert re.search(pattern, lines[0]) and str(tmp_path) in lines[0], lines[0]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.py"]  # nothing written
