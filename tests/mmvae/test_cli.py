"""Command-line conventions: help with defaults, --version, both override forms, did-you-mean, summaries, --checkpoint."""

import argparse
import importlib.metadata
import io
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from mmvae import cli, progress
from mmvae import config as config_lib

TRAIN = ["--config.train.num_steps", "8", "--config.train.eval_every=2", "--config.train.checkpoint_every", "2",
         "--config.train.keep_checkpoints=4", "--config.train.learning_rate", "0.01"]


def _commands(parser, path=()):
  """(path, parser) of every command and subcommand, e.g. (('prep', 'synthetic'), <parser>)."""
  subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # pylint: disable=protected-access
  if not subs:
    return [(path, parser)]
  return [found for name, child in subs[0].choices.items() for found in _commands(child, (*path, name))]


def _option_entries(help_text: str) -> dict[str, str]:
  """{option string: its whole entry (invocation and help, whitespace collapsed)} of a --help output's options."""
  entries, current = {}, None
  for line in help_text.split("options:", 1)[1].splitlines():
    start = re.match(r"^  (-\S+)", line)
    if start:
      current = start.group(1).rstrip(",")
      entries[current] = line.strip()
    elif current and line.strip():
      entries[current] += " " + line.strip()
  return entries


def test_help_of_every_command_exits_0_and_shows_each_default(capsys):
  commands = _commands(cli.build_parser())
  names = {" ".join(path) for path, _ in commands}
  assert names == {"prep voxceleb1", "prep folder", "prep avdigits", "prep mmdigits", "prep features", "prep synthetic",
                   "prep yt8m", "train", "analyze", "embed", "extract", "index", "query", "serve", "generate face",
                   "sweep", "demo"}
  for path, parser in commands:
    with pytest.raises(SystemExit) as exit_info:
      cli.main([*path, "--help"])
    assert exit_info.value.code == 0, path
    entries = _option_entries(capsys.readouterr().out)
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]  # pylint: disable=protected-access
    assert {a.option_strings[0] for a in actions} <= set(entries), path
    one_required = {a.dest for g in parser._mutually_exclusive_groups if g.required  # pylint: disable=protected-access
                    for a in g._group_actions}  # pylint: disable=protected-access
    for action in actions:
      text = entries[action.option_strings[0]]
      assert action.help, (path, action.dest)
      if not action.required and action.dest not in one_required:  # e.g. sweep --data | --root
        assert "default" in text, (path, action.dest, text)
        if action.default not in (None, "") and "default" not in action.help:
          assert f"(default: {action.default})" in text, (path, action.dest, text)


def test_version():
  out = subprocess.run([sys.executable, "-m", "mmvae.cli", "--version"], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == f"mmvae {importlib.metadata.version('mmvae')}"


class _Captured(Exception):
  """Raised by a stand-in for a stage: the arguments it was given, without running it."""


def _capture(monkeypatch, module, name):
  def fake(*args, **kwargs):
    raise _Captured(args, kwargs)
  monkeypatch.setattr(module, name, fake)


def _call(argv) -> tuple:
  with pytest.raises(_Captured) as info:
    cli.main(argv)
  return info.value.args


def test_both_override_forms_give_the_same_config(monkeypatch, tmp_path):
  from mmvae.train import entry
  _capture(monkeypatch, entry, "train")
  equals = ["train", "--config", "synthetic:tiny", "--config.train.batch_size=16", "--data", "D",
            "--config.model.hidden=[8, 4]", "--workdir", "W", "--config.analysis.dbscan_eps=-0.5",
            "--config.parallel=pmap", "--config.loss.wasserstein=sliced"]
  spaced = ["train", "--config.train.batch_size", "16", "--config", "synthetic:tiny", "--data", "D",
            "--config.model.hidden", "[8, 4]", "--workdir", "W", "--config.analysis.dbscan_eps", "-0.5",
            "--config.parallel", "pmap", "--config.loss.wasserstein", "sliced"]
  (config_a, data_a, workdir_a), _ = _call(equals)
  (config_b, data_b, workdir_b), _ = _call(spaced)
  expected = config_lib.load("synthetic:tiny")
  expected.train.batch_size, expected.model.hidden, expected.analysis.dbscan_eps = 16, (8, 4), -0.5
  expected.parallel, expected.loss.wasserstein = "pmap", "sliced"
  assert config_a.to_dict() == config_b.to_dict() == expected.to_dict()
  assert (data_a, workdir_a) == (data_b, workdir_b) == ("D", "W")

  from data_prep import synthetic
  _capture(monkeypatch, synthetic, "prepare_synthetic")
  args = ["prep", "synthetic", "--out", str(tmp_path), "--config", "synthetic:tiny"]
  _, kw_a = _call([*args, "--config.data.face_size=16", "--config.data.grayscale=True"])
  _, kw_b = _call([*args, "--config.data.face_size", "16", "--config.data.grayscale", "True"])
  assert kw_a["config"].to_dict() == kw_b["config"].to_dict()
  assert (kw_a["config"].data.face_size, kw_a["config"].data.grayscale) == (16, True)
  assert config_lib.load("synthetic:tiny").data.face_size != 16  # the override changed something


@pytest.mark.parametrize("override, closest", [
    ("train.batchsize", "train.batch_size"),
    ("model.latentdim", "model.latent_dim"),
    ("trian.num_steps", "train.num_steps"),
    ("batch_size", "train.batch_size"),
    ("parralel", "parallel"),
    ("loss.sigma.audo", "loss.sigma.audio"),
])
def test_unknown_key_names_the_closest_in_one_line(override, closest, capsys, tmp_path):
  for form in ([f"--config.{override}=3"], [f"--config.{override}", "3"]):
    rc = cli.main(["train", "--config", "synthetic:tiny", "--data", str(tmp_path), "--workdir",
                   str(tmp_path / "run"), *form])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("mmvae train: error: unknown config "), err
    assert f"did you mean {closest!r}?" in err, err
  assert not (tmp_path / "run").exists()


def test_unknown_key_without_a_close_one_lists_the_section(capsys, tmp_path):
  rc = cli.main(["train", "--config", "synthetic:tiny", "--data", str(tmp_path), "--workdir", str(tmp_path),
                 "--config.train.qqqqqqqq=1"])
  err = capsys.readouterr().err
  assert rc == 2 and "did you mean" not in err
  assert all(k in err for k in config_lib.load("synthetic:tiny").train.keys())


def test_overrides_are_refused_where_there_is_no_config(capsys, tmp_path):
  with pytest.raises(SystemExit) as info:
    cli.main(["analyze", "--workdir", str(tmp_path), "--config.train.seed", "1"])
  assert info.value.code == 2 and "--config" in capsys.readouterr().err
  with pytest.raises(SystemExit) as info:  # a space-form override with nothing after it
    cli.main(["train", "--config", "synthetic:tiny", "--data", "D", "--workdir", "W", "--config.train.seed"])
  assert info.value.code == 2 and "needs a value" in capsys.readouterr().err


def test_progress_is_plain_lines_when_not_a_terminal():
  log = io.StringIO()  # not a terminal
  for _ in progress.bar(range(1000), desc="work", file=log):
    pass
  lines = log.getvalue().splitlines()
  assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
  assert len(lines) == 2 and lines[0].startswith("work:") and "1000/1000" in lines[-1]  # start and end, 30 s apart

  class Terminal(io.StringIO):
    def isatty(self):
      return True

  term = Terminal()
  for _ in progress.bar(range(3), desc="work", file=term):
    pass
  assert "\r" in term.getvalue()  # a terminal keeps tqdm's redraws


def _exact_mrr_chance(labels) -> float:
  """Mean over queries of E[1/rank of the first relevant] when its R relevant items are placed at random among M."""
  labels = list(labels)
  m = len(labels)
  total = 0.0
  for label in labels:
    r = labels.count(label)
    total += sum(math.comb(m - k, r - 1) / math.comb(m, r) / k for k in range(1, m - r + 2))
  return total / m


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A corpus prepared and a run trained through the CLI (both override forms), with their captured output."""
  base = tmp_path_factory.mktemp("cli")
  capture = pytest.MonkeyPatch()
  outputs = {}
  for step, argv in (
      ("prep", ["prep", "synthetic", "--out", str(base / "data"), "--identities", "4", "--workers", "1",
                "--config", "synthetic:tiny", "--config.data.face_size", "16"]),
      ("train", ["train", "--config", "synthetic:tiny", "--data", str(base / "data"), "--workdir",
                 str(base / "run"), "--config.data.face_size=16", *TRAIN])):
    out, err = io.StringIO(), io.StringIO()
    capture.setattr(sys, "stdout", out)
    capture.setattr(sys, "stderr", err)
    try:
      rc = cli.main(argv)
    finally:
      capture.undo()
    assert rc == 0, err.getvalue()
    outputs[step] = (out.getvalue(), err.getvalue())
  return base, outputs


def test_prep_prints_no_library_noise(trained):
  base, outputs = trained
  out, err = outputs["prep"]
  assert out.splitlines() == [line for line in out.splitlines() if line.startswith("prepared synthetic")]
  assert len(out.splitlines()) == 1 and str(base / "data") in out
  for noise in ("Downloading and preparing", "downloaded and prepared", "absl", "WARNING", "\r"):
    assert noise not in out + err, noise
  manifest = json.loads((base / "data" / "manifest.json").read_text())
  assert manifest["data_config"]["face_size"] == 16  # the space-form override reached prep


def test_train_ends_with_a_summary(trained):
  base, outputs = trained
  out, err = outputs["train"]
  run = base / "run"
  final = json.loads((run / "final.json").read_text())
  assert "\r" not in err  # progress as plain lines: the captured stderr is not a terminal
  assert f"checkpoints  {run / 'checkpoints' / 'last'} (newest: step 8)" in out
  assert f"{run / 'checkpoints' / 'best'} (step {final['best_step']})" in out
  assert str(run / "metrics.jsonl") in out and str(run / "tb") in out
  from mmvae import data
  chance = _exact_mrr_chance(data.Dataset(base / "data").column("validation", "label").tolist())
  for label, key in (("voice -> face", "mrr_audio_to_face"), ("face -> voice", "mrr_face_to_audio")):
    value = re.search(rf"{label} MRR ([0-9.]+) \(([0-9.]+)x chance ([0-9.]+)\)", out)
    assert value, out
    assert float(value.group(1)) == pytest.approx(final["validation"][key], abs=5e-4)
    assert float(value.group(3)) == pytest.approx(chance, abs=5e-4)


def _step_dirs(folder: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _encode_with(run: pathlib.Path, step_dir: pathlib.Path, audio):
  """Voice posterior means with the parameters stored in one checkpoint folder, read without load_run's choice."""
  from flax import nnx
  from mmvae.train import checkpoints
  model, _, _ = checkpoints.load_run(run)
  nnx.update(model, checkpoints.load_params(step_dir, nnx.state(model, nnx.Param)))
  return np.asarray(model.encode("audio", audio)[0])


@pytest.mark.parametrize("checkpoint", ["last", "best"])
def test_analyze_checkpoint_option_picks_that_step(trained, checkpoint, capsys):
  base, _ = trained
  run = base / "run"
  final = json.loads((run / "final.json").read_text())
  last, best = _step_dirs(run / "checkpoints" / "last")[-1], _step_dirs(run / "checkpoints" / "best")
  assert last == final["step"] == 8 and best == [final["best_step"]]
  assert best[0] != last, "the fixture must leave best != last for this test to tell them apart; change TRAIN"
  step = last if checkpoint == "last" else best[0]
  argv = ["analyze", "--workdir", str(run)] + (["--checkpoint", "last"] if checkpoint == "last" else [])
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  report = run / "report"
  assert f"checkpoint: {checkpoint} (step {step})" in (report / "report.md").read_text()
  from mmvae import data
  audio = data.Dataset(base / "data").arrays("test")["audio"]
  saved = np.load(report / "latents.npz")["audio_mu"]
  np.testing.assert_allclose(saved, _encode_with(run, run / "checkpoints" / checkpoint / str(step), audio),
                             rtol=1e-4, atol=1e-5)
  other = run / "checkpoints" / ("best" if checkpoint == "last" else "last") / str(best[0] if checkpoint == "last"
                                                                                     else last)
  assert not np.allclose(saved, _encode_with(run, other, audio), rtol=1e-4, atol=1e-5)
  metrics = json.loads((report / "metrics.json").read_text())
  assert f"{checkpoint} checkpoint, test split" in out and str(report / "report.md") in out
  # Keys name the modalities (audio, face); the summary shows audio as "voice", as report.md does.
  for label, key in (("voice -> face", "audio_to_face"), ("face -> voice", "face_to_audio")):
    assert f"{label} MRR {metrics[f'retrieval.{key}.mrr']:.3f}" in out
    assert f"chance {metrics[f'retrieval.{key}.mrr_chance']:.3f}" in out


def test_multi_process_flags_reach_the_launch_settings(monkeypatch, tmp_path, capsys):
  from mmvae.train import entry
  seen = {}

  def fake_train(*args, **kwargs):
    seen.update({k: os.environ.get(k) for k in ("MMVAE_COORDINATOR", "MMVAE_NUM_PROCESSES", "MMVAE_PROCESS_ID")})
    raise ValueError("stopped by the test")

  # setenv first so that monkeypatch records each name and removes what the CLI sets once the test ends;
  # a bare delenv of an absent name records nothing and the flags would leak into later tests.
  for name in ("MMVAE_COORDINATOR", "MMVAE_NUM_PROCESSES", "MMVAE_PROCESS_ID"):
    monkeypatch.setenv(name, "unset")
    monkeypatch.delenv(name)
  monkeypatch.setattr(entry, "train", fake_train)
  rc = cli.main(["train", "--config", "synthetic:tiny", "--data", str(tmp_path), "--workdir", str(tmp_path / "r"),
                 "--coordinator", "10.0.0.1:1234", "--num-processes", "2", "--process-id", "1"])
  assert rc == 2 and "stopped by the test" in capsys.readouterr().err
  assert seen == {"MMVAE_COORDINATOR": "10.0.0.1:1234", "MMVAE_NUM_PROCESSES": "2", "MMVAE_PROCESS_ID": "1"}


def test_the_multi_process_flags_do_not_outlive_the_test_above():
  # Runs after the test above in file order; the trainer would otherwise try to reach 10.0.0.1.
  assert not {k for k in ("MMVAE_COORDINATOR", "MMVAE_NUM_PROCESSES", "MMVAE_PROCESS_ID") if k in os.environ}
