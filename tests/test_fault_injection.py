"""Fault injection through the `mmvae` CLI: every fault of issue 9, and the bad inputs that already worked.

For each fault: the exit code, a message of a few lines without a traceback, no user file deleted, no
dataset or workdir left looking complete when it is not, and the same parameters as an uninterrupted
run where recovery is possible.
"""

import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmvae import cli, data
from mmvae import config as config_lib
from mmvae.train import checkpoints
from mmvae.zoo import msvae

sys.path.insert(0, str(pathlib.Path(__file__).parent / "data_prep"))  # the VoxCeleb1 fault helpers live there
import test_prep_bad_input as vox  # noqa: E402
from slow_batches import SLOW_BATCHES, tapped  # noqa: E402  (tests/, on the path beside conftest.py)

OVERRIDES = ["--config.train.num_steps=12", "--config.train.checkpoint_every=3", "--config.train.eval_every=6",
             "--config.train.keep_checkpoints=5", "--config.train.learning_rate=0.01"]
# Runs the CLI with every batch delayed, so a kill lands mid-run.
SLOW_CLI = SLOW_BATCHES + "import sys\nfrom mmvae import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
# Runs the CLI with a pause after the synthetic corpus is generated, before its features are extracted.
PAUSED_PREP = ("import sys, time\n"
               "from data_prep import voxceleb1\n"
               "from mmvae import cli\n"
               "real = voxceleb1.list_examples\n"
               "def paused(*a, **k):\n"
               "  time.sleep(300)\n"
               "  return real(*a, **k)\n"
               "voxceleb1.list_examples = paused\n"
               "sys.exit(cli.main(sys.argv[1:]))\n")


def run_cli(capsys, *argv) -> tuple[int, list[str]]:
  """Exit code and stderr's messages (progress bars dropped) of `mmvae ARGV` run in this process."""
  capsys.readouterr()
  rc = cli.main([str(a) for a in argv])
  err = capsys.readouterr().err
  assert "Traceback" not in err, err
  return rc, [line.strip() for line in re.split(r"[\r\n]", err) if line.strip() and not re.search(r"\d+%\|", line)]


def assert_refused(rc, lines, command, pattern):
  """Exit 2 with one error line matching `pattern`, and at most two other lines."""
  errors = [line for line in lines if line.startswith(f"mmvae {command}: error: ")]
  assert rc == 2 and len(errors) == 1 and len(lines) <= 3, (rc, lines)
  assert re.search(pattern, errors[0]), errors[0]


def snapshot(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_args(dataset, workdir, *extra):
  return ["train", "--config", "synthetic:tiny", "--data", dataset, "--workdir", workdir, *OVERRIDES, *extra]


def final_sha(workdir) -> str:
  return json.loads((pathlib.Path(workdir) / "final.json").read_text())["params_sha256"]


def train_steps(workdir) -> list[int]:
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [r["step"] for r in rows if r["split"] == "train"]


@pytest.fixture(scope="module")
def reference(synthetic_dataset, tmp_path_factory):
  """An uninterrupted run: what every recovered run must equal."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  assert cli.main([str(a) for a in train_args(synthetic_dataset, workdir)]) == 0
  return workdir


@pytest.fixture
def mini(shared_data):
  return shared_data / "voxceleb1-mini"


# --- output folders -------------------------------------------------------------------------------


@pytest.mark.parametrize("foreign_manifest", [False, True])
def test_prep_never_cleans_a_folder_it_does_not_own(tmp_path, capsys, monkeypatch, foreign_manifest):
  from data_prep import synthetic
  monkeypatch.setattr(synthetic, "generate_corpus", lambda *a, **k: pytest.fail("slow work started"))
  out = tmp_path / "U"
  (out / "tfds/other/1.0.0").mkdir(parents=True)
  (out / "tfds/other/1.0.0/f").write_text("x")
  if foreign_manifest:
    (out / "manifest.json").write_text('{"format": "someone-else/2"}')
  before = snapshot(out)
  rc, lines = run_cli(capsys, "prep", "synthetic", "--out", out, "--identities", 4, "--workers", 1)
  assert_refused(rc, lines, "prep", "not empty and holds no mmvae dataset")
  assert snapshot(out) == before and list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("argv, pattern", [
    (["--identities", "1"], "identities must be between 2"),
    (["--config", "synthetic:huge"], "unknown variant 'huge'"),
    (["--split", "open", "--identities", "2"], "open split .* identities >= 3"),
])
def test_refused_arguments_leave_the_existing_dataset_untouched(synthetic_dataset, tmp_path, capsys, argv, pattern):
  out = tmp_path / "data"
  shutil.copytree(synthetic_dataset, out)
  before = snapshot(out)
  rc, lines = run_cli(capsys, "prep", "synthetic", "--out", out, "--workers", 1, *argv)
  assert_refused(rc, lines, "prep", pattern)
  assert snapshot(out) == before and list(tmp_path.iterdir()) == [out]


def _unwritable_folder(tmp_path) -> pathlib.Path:
  folder = tmp_path / "read-only"
  folder.mkdir()
  folder.chmod(0o555)
  if not os.access(folder, os.W_OK):
    return folder
  try:  # root writes anywhere; /sys refuses new folders even to root
    os.mkdir("/sys/mmvae-probe")
  except OSError:
    return pathlib.Path("/sys")
  os.rmdir("/sys/mmvae-probe")
  pytest.skip("no unwritable folder to test with")


def test_out_that_is_a_file_or_unwritable_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
  from data_prep import synthetic
  monkeypatch.setattr(synthetic, "generate_corpus", lambda *a, **k: pytest.fail("slow work started"))
  afile = tmp_path / "afile"
  afile.write_text("keep me")
  rc, lines = run_cli(capsys, "prep", "synthetic", "--out", afile, "--identities", 4)
  assert_refused(rc, lines, "prep", "is a file, not a folder")
  assert afile.read_text() == "keep me"
  rc, lines = run_cli(capsys, "prep", "synthetic", "--out", _unwritable_folder(tmp_path) / "data", "--identities", 4)
  assert_refused(rc, lines, "prep", "not writable|Permission denied|Operation not permitted|Read-only")
  rc, lines = run_cli(capsys, "train", "--config", "synthetic:tiny", "--data", tmp_path, "--workdir", afile)
  assert_refused(rc, lines, "train", "--workdir .*afile is a file")
  assert afile.read_text() == "keep me"


def test_killed_prep_synthetic_reruns_and_reuses_its_corpus(synthetic_dataset, tmp_path, capsys, monkeypatch):
  out = tmp_path / "data"
  shutil.copytree(synthetic_dataset, out)  # the complete dataset a re-prep replaces
  before = snapshot(out)
  (tmp_path / "unrelated").mkdir()
  (tmp_path / "unrelated/notes.txt").write_text("mine")
  child = subprocess.Popen(
      [sys.executable, "-c", PAUSED_PREP, "prep", "synthetic", "--out", str(out), "--identities", "4",
       "--workers", "1"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None and not list(
        tmp_path.glob(".data.partial-*/raw/synthetic.json")):
      time.sleep(0.2)
    assert child.poll() is None, "the child finished or died before it could be killed"
    child.send_signal(signal.SIGKILL)  # the corpus is generated, the features are not
    child.wait()
  finally:
    if child.poll() is None:
      child.kill()
  assert snapshot(out) == before  # the kill cost nothing: the previous dataset is whole
  from data_prep import synthetic
  monkeypatch.setattr(synthetic, "generate_corpus", lambda *a, **k: pytest.fail("the finished corpus was not reused"))
  capsys.readouterr()
  assert cli.main(["prep", "synthetic", "--out", str(out), "--identities", "4", "--workers", "1"]) == 0
  assert "reusing the synthetic corpus generated by an interrupted run" in capsys.readouterr().out
  assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "unrelated"]  # the leftover build is gone
  assert (tmp_path / "unrelated/notes.txt").read_text() == "mine"
  # Same content as an uninterrupted prep with the same arguments.
  assert data.Dataset(out).manifest["fingerprint"] == data.Dataset(synthetic_dataset).manifest["fingerprint"]


# --- corpus inputs --------------------------------------------------------------------------------


def truncated_wav(root, mini):
  buf = io.BytesIO()
  sf.write(buf, vox.good_wave(mini), 16000, subtype="PCM_16", format="WAV")
  return vox.add_utterance(root, "id10001/1zcIwhmdeo4/00031.wav", raw=buf.getvalue()[:20000])


def nan_wav(root, mini):
  wave = vox.good_wave(mini).astype(np.float32)
  wave[100] = np.nan
  buf = io.BytesIO()
  sf.write(buf, wave, 16000, subtype="FLOAT", format="WAV")
  return vox.add_utterance(root, "id10001/1zcIwhmdeo4/00032.wav", raw=buf.getvalue())


def renamed_jpeg(root, mini):
  jpg = next((mini / "faces/A.J._Buckley/1zcIwhmdeo4").glob("*.jpg"))
  return vox.add_utterance(root, "id10001/1zcIwhmdeo4/00033.wav", raw=jpg.read_bytes())


INPUT_FAULTS = [(truncated_wav, "truncated WAV"), (vox.silent_clip, "silent"), (nan_wav, "NaN"),
                (renamed_jpeg, "not a readable audio file"), (vox.corrupt_jpeg, "unreadable"),
                (vox.listed_but_missing, "not on disk")]


def test_bad_inputs_are_skipped_with_reasons(mini, tmp_path, capsys):
  root = vox.make_root(mini, tmp_path / "root")
  paths = {fault.__name__: fault(root, mini) for fault, _ in INPUT_FAULTS}
  rc, _ = run_cli(capsys, "prep", "voxceleb1", "--root", root, "--out", tmp_path / "out", "--config",
                  "reference:tiny", "--workers", 1)
  skipped = {s["path"]: s["reason"] for s in data.Dataset(tmp_path / "out").manifest["skipped"]}
  assert rc == 0
  for fault, reason in INPUT_FAULTS:
    assert re.search(reason, skipped[str(paths[fault.__name__])]), (fault.__name__, skipped)


@pytest.mark.parametrize("fault, reason", INPUT_FAULTS, ids=[f.__name__ for f, _ in INPUT_FAULTS])
def test_strict_prep_fails_in_one_line_and_leaves_nothing(mini, tmp_path, capsys, fault, reason):
  root = vox.make_root(mini, tmp_path / "root")
  path = fault(root, mini)
  rc, lines = run_cli(capsys, "prep", "voxceleb1", "--root", root, "--out", tmp_path / "out", "--config",
                      "reference:tiny", "--workers", 1, "--strict")
  assert_refused(rc, lines, "prep", re.escape(path.name))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # no dataset, no half-built folder


def test_malformed_split_file_is_one_line(mini, tmp_path, capsys):
  root = vox.make_root(mini, tmp_path / "root")
  with open(root / "iden_split.txt", "a") as f:
    f.write("9 not-a-split-line\n")
  rc, lines = run_cli(capsys, "prep", "voxceleb1", "--root", root, "--out", tmp_path / "out", "--config",
                      "reference:tiny", "--workers", 1)
  assert_refused(rc, lines, "prep", r"iden_split.txt:\d+: expected")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_inputs_changed_to_fit_are_recorded_and_a_bom_is_accepted(mini, tmp_path, capsys):
  root = vox.make_root(mini, tmp_path / "root")
  meta = root / "vox1_meta.csv"
  meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())  # as a spreadsheet saves UTF-8
  wave = vox.good_wave(mini)
  low = vox.add_utterance(root, "id10001/1zcIwhmdeo4/00041.wav")
  sf.write(low, wave[::2], 8000, subtype="PCM_16")
  loud = vox.add_utterance(root, "id10001/1zcIwhmdeo4/00042.wav")
  sf.write(loud, 3.0 * wave / np.abs(wave).max(), 16000, subtype="FLOAT")
  short = vox.add_utterance(root, "id10001/1zcIwhmdeo4/00043.wav", wave=wave[:8000])
  vox.add_utterance(root, "id10118/tinyFaceVid/00001.wav", wave=wave)
  (root / "faces/Caitriona_Balfe/tinyFaceVid").mkdir()
  Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(root / "faces/Caitriona_Balfe/tinyFaceVid/0000100.jpg")
  rc, _ = run_cli(capsys, "prep", "voxceleb1", "--root", root, "--out", tmp_path / "out", "--config",
                  "reference:tiny", "--workers", 1)
  manifest = data.Dataset(tmp_path / "out").manifest
  assert rc == 0 and manifest["skipped"] == []
  changed = {}
  for w in manifest["warnings"]:
    changed.setdefault(w["path"], []).append(w["warning"])
  assert any("resampled up from 8000 Hz" in w for w in changed[str(low)])
  assert any(re.search(r"samples up to 3 outside \[-1, 1\] clipped", w) for w in changed[str(loud)])
  assert any("8000 samples zero-padded" in w for w in changed[str(short)])
  assert any("8x8 image upscaled" in w for w in changed[str(root / "faces/Caitriona_Balfe/tinyFaceVid")])
  assert len(changed) == 4  # the untouched inputs raise nothing


# --- training -------------------------------------------------------------------------------------


def committed_steps(workdir) -> list[int]:
  """The finished saves under checkpoints/last, oldest first. A save in flight writes its marker inside
  "<step>.orbax-checkpoint-tmp" before the rename, so only all-digit step folders count."""
  return sorted(int(p.parent.name) for p in (workdir / "checkpoints/last").glob("*/commit_success.txt")
                if p.parent.name.isdigit())


def _newest_committed(workdir) -> int:
  return max(committed_steps(workdir), default=0)


def test_one_trainer_per_workdir_and_kills_damage_and_sigterm_recover_the_same_parameters(
    synthetic_dataset, reference, tmp_path, capsys, monkeypatch):
  workdir = tmp_path / "run"
  argv = [str(a) for a in train_args(synthetic_dataset, workdir)]
  child = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *argv], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 180
    while time.time() < deadline and child.poll() is None and _newest_committed(workdir) < 6:
      time.sleep(0.2)
    assert child.poll() is None, "the child finished or died before the second trainer could start"
    rows = (workdir / "metrics.jsonl").read_text().splitlines()
    rc, lines = run_cli(capsys, *argv)
    assert_refused(rc, lines, "train", f"is in use by process {child.pid} \\(started ")
    assert (workdir / "metrics.jsonl").read_text().splitlines()[:len(rows)] == rows  # the second one wrote nothing
    child.send_signal(signal.SIGKILL)
    child.wait()
  finally:
    if child.poll() is None:
      child.kill()
  assert (workdir / ".lock").exists() and not (workdir / "final.json").exists()
  # Silent damage to the newest checkpoint: it holds the arrays of the one before, so only the digest can tell.
  newest = _newest_committed(workdir)
  shutil.rmtree(workdir / f"checkpoints/last/{newest}/default")
  shutil.copytree(workdir / f"checkpoints/last/{newest - 3}/default", workdir / f"checkpoints/last/{newest}/default")
  # The rerun takes over the stale lock, falls back one checkpoint, and stops on SIGTERM three steps later.
  def terminate(i, batch):
    if i == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  real = data.Batches
  monkeypatch.setattr(data, "Batches", tapped(terminate))
  capsys.readouterr()
  with pytest.raises(SystemExit) as stopped:
    cli.main(argv)
  out, err = capsys.readouterr()
  assert stopped.value.code == 128 + signal.SIGTERM and "Traceback" not in err
  assert [line for line in err.splitlines() if "warning" in line] == [
      f"mmvae: warning: checkpoint {workdir}/checkpoints/last/{newest} is damaged (its contents differ from the "
      f"SHA-256 written when it was saved, moved to {workdir}/checkpoints/damaged); using step {newest - 3}"]
  assert f"received SIGTERM; saved step {newest}" in out
  assert (workdir / f"checkpoints/damaged/last-{newest}/default").is_dir()  # set aside, not deleted
  assert not (workdir / ".lock").exists() and not (workdir / "final.json").exists()
  monkeypatch.setattr(data, "Batches", real)
  rc, _ = run_cli(capsys, *argv)
  assert rc == 0 and not (workdir / ".lock").exists()
  assert final_sha(workdir) == final_sha(reference)
  assert train_steps(workdir) == list(range(1, 13))


def test_damaged_checkpoints_are_skipped_by_analysis_in_one_line(synthetic_dataset, reference, tmp_path, capsys):
  # A truncated last checkpoint and an empty _METADATA in the best one: the newest intact one is loaded.
  broken = tmp_path / "broken"
  shutil.copytree(reference, broken)
  biggest = max((p for p in (broken / "checkpoints/last/12").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
  for best in (broken / "checkpoints/best").iterdir():
    (best / "default/_METADATA").write_text("")
  before = snapshot(broken)
  capsys.readouterr()
  model, _, _, step = checkpoints.load_run(broken, which="best", return_step=True)
  err = capsys.readouterr().err
  warnings = [line for line in err.splitlines() if "warning" in line]
  # One line: which checkpoints are damaged and which one is used instead; the report's label says the same.
  assert "Traceback" not in err and len(warnings) == 1, err
  assert re.search(r"best/\d+ is damaged .* and checkpoint \S+/last/12 is damaged .*; using the last checkpoint "
                   r"of step 9$", warnings[0]), warnings
  assert (step, step.which) == (9, "last") and step.label.startswith("last (step 9): checkpoint "), step.label
  from flax import nnx
  params = nnx.state(model, nnx.Param)
  step9 = checkpoints.load_params(reference / "checkpoints/last/9", params)
  assert checkpoints.params_sha256(params) == checkpoints.params_sha256(step9)
  assert snapshot(broken) == before  # analysis moves nothing
  # Nothing intact: one error line, no Orbax traceback, no output written.
  for step in (broken / "checkpoints/last").iterdir():
    (step / "default/_METADATA").write_text("")
  wav = next((synthetic_dataset / "raw/wav").rglob("*.wav"))
  rc, lines = run_cli(capsys, "generate", "face", "--workdir", broken, "--wav", wav, "--out", tmp_path / "face.png")
  assert_refused(rc, lines, "generate", r"no intact checkpoint: checkpoints .*/last/\{12, 9, 6, 3\} are damaged")
  assert not (tmp_path / "face.png").exists()
  rc, lines = run_cli(capsys, *train_args(synthetic_dataset, broken))
  assert_refused(rc, lines, "train", "no intact checkpoint: .*JSONDecodeError")
  assert sorted(p.name for p in (broken / "checkpoints/last").iterdir()) == ["12", "3", "6", "9"]  # none moved


def test_resume_refuses_another_dataset_and_another_schedule(synthetic_dataset, reference, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  other = tmp_path / "other"
  from data_prep import prepare
  prepare.prepare_synthetic(str(other), identities=3, seed=1, config="synthetic", workers=1)
  run_json = (workdir / "run.json").read_text()
  rc, lines = run_cli(capsys, *train_args(other, workdir))
  assert_refused(rc, lines, "train", "was trained on .* not on .*other .*--allow-data-change")
  assert (workdir / "run.json").read_text() == run_json
  rc, lines = run_cli(capsys, *train_args(synthetic_dataset, workdir, "--config.train.num_steps=24"))
  assert_refused(rc, lines, "train", r"train.num_steps: 12 -> 24.*cosine.*--from .*checkpoints/last/12")
  # The same content at another path is the same dataset; the run now names the new path.
  moved = tmp_path / "moved"
  shutil.copytree(synthetic_dataset, moved)
  assert run_cli(capsys, *train_args(moved, workdir))[0] == 0
  assert json.loads((workdir / "run.json").read_text())["data_dir"] == str(moved)
  # Analysis refuses a dataset that changed under the run's path.
  shutil.rmtree(moved)
  shutil.copytree(other, moved)
  wav = next((synthetic_dataset / "raw/wav").rglob("*.wav"))
  rc, lines = run_cli(capsys, "generate", "face", "--workdir", workdir, "--wav", wav, "--out", tmp_path / "f.png")
  assert_refused(rc, lines, "generate", "changed since .* trained on it")
  # Asked explicitly, a resume on another dataset is accepted and recorded.
  assert run_cli(capsys, *train_args(other, workdir, "--allow-data-change"))[0] == 0
  run = json.loads((workdir / "run.json").read_text())
  assert run["data_dir"] == str(other) and run["data_changes"][-1]["to"]["data_dir"] == str(other)


def test_nan_messages_offer_a_restart_that_works(synthetic_dataset, reference, tmp_path, capsys, monkeypatch):
  real = data.Batches

  def poisoned_at(index):
    return tapped(lambda i, batch: dict(batch, audio=batch["audio"] * np.nan) if i == index else batch, real)

  monkeypatch.setattr(data, "Batches", poisoned_at(0))
  early = tmp_path / "early"
  rc, lines = run_cli(capsys, *train_args(synthetic_dataset, early))
  assert_refused(rc, lines, "train", "non-finite loss at step 1: .*no checkpoint was saved yet")
  assert "step None" not in lines[-1] and not (early / "final.json").exists()
  monkeypatch.setattr(data, "Batches", poisoned_at(4))
  late = tmp_path / "late"
  rc, lines = run_cli(capsys, *train_args(synthetic_dataset, late))
  assert_refused(rc, lines, "train", r"non-finite loss at step 5: .*mmvae train --from \S+/checkpoints/last/3 ")
  kept = pathlib.Path(re.search(r"--from (\S+)", lines[-1])[1])
  monkeypatch.setattr(data, "Batches", real)
  # The message's command, into the workdir that failed before its first checkpoint (which therefore takes
  # any config), with a learning rate so small that the parameters stay those of the checkpoint.
  rc, _ = run_cli(capsys, *train_args(synthetic_dataset, early, "--from", kept,
                                      "--config.train.learning_rate=1e-12", "--config.train.num_steps=3"))
  assert rc == 0 and json.loads((early / "run.json").read_text())["init_from"] == str(kept)
  model, _, _ = checkpoints.load_run(early, which="last")
  from flax import nnx
  template = nnx.state(model, nnx.Param)
  got = checkpoints.flatten(template)
  want = checkpoints.flatten(checkpoints.load_params(kept, template))
  cfg = config_lib.load("synthetic:tiny")
  fresh = msvae.build(cfg, data.Dataset(synthetic_dataset).modalities(), seed=cfg.train.seed)
  init = checkpoints.flatten(nnx.state(fresh, nnx.Param))
  assert all(np.allclose(got[k], want[k], atol=1e-7) for k in want)
  assert not all(np.allclose(got[k], init[k], atol=1e-4) for k in got)  # not a fresh initialisation
  rc, lines = run_cli(capsys, *train_args(synthetic_dataset, early, "--from", reference / "checkpoints/last/9",
                                          "--config.train.learning_rate=1e-12", "--config.train.num_steps=3"))
  assert_refused(rc, lines, "train", "already holds checkpoints .*--from starts a new run")
  rc, lines = run_cli(capsys, *train_args(synthetic_dataset, tmp_path / "x", "--from", reference))
  assert_refused(rc, lines, "train", "not a checkpoint")


def test_rejected_config_writes_nothing_and_other_messages(synthetic_dataset, reference, tmp_path, capsys):
  workdir = tmp_path / "run"
  rc, lines = run_cli(capsys, *train_args(synthetic_dataset, workdir, "--config.model.hidden=(0,)"))
  assert_refused(rc, lines, "train", r"hidden=\(0,\)")
  assert not (workdir / "config.json").exists() and not (workdir / "run.json").exists()
  wav = next((synthetic_dataset / "raw/wav").rglob("*.wav"))
  rc, lines = run_cli(capsys, "generate", "face", "--workdir", reference, "--wav", wav, "--out", tmp_path)
  assert_refused(rc, lines, "generate", "must name an image file .*it is a folder")


# --- issue 24: nothing lost, nothing silently wrong (round two) -------------------------------------


def test_an_utterance_listed_twice_or_in_two_splits_is_refused_with_its_lines(mini, tmp_path, capsys):
  root = vox.make_root(mini, tmp_path / "root")
  with open(root / "iden_split.txt", "a") as f:
    f.write("1 id10001/1zcIwhmdeo4/00001.wav\n1 id10001/utrA-v8pPm4/00001.wav\n")  # lines 6, 7 repeat lines 1, 3
  rc, lines = run_cli(capsys, "prep", "voxceleb1", "--root", root, "--out", tmp_path / "out", "--config",
                      "reference:tiny", "--workers", 1)
  assert_refused(rc, lines, "prep", r"iden_split.txt: 2 utterance\(s\) listed more than once: "
                 r"id10001/1zcIwhmdeo4/00001.wav on lines 1, 6 \(2 times in train\); "
                 r"id10001/utrA-v8pPm4/00001.wav on lines 3, 7 \(in test and train\)")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


@pytest.mark.parametrize("override, pattern", [
    ("--config.model.encoders.voice=conv", r"config.model.encoders.voice='conv' names no modality of this run, "
     r"so it would be ignored \('voice' is how reports show 'audio': use --config.model.encoders.audio\); "
     r"the run's modalities: audio, face$"),
    ("--config.loss.sigma.voice=5.0", r"config.loss.sigma.voice=5.0 .*use --config.loss.sigma.audio"),
    ("--config.loss.sigma.image=0.5", r"config.loss.sigma.image=0.5 names no modality of this run.*: audio, face$"),
    ("--config.model.encoder_hidden.text=(8,)", r"config.model.encoder_hidden.text=\(8,\) names no modality"),
    ("--config.train.warmup_steps=-10", r"config.train.warmup_steps=-10 must be >= 0"),
])
def test_a_key_for_a_modality_the_data_lacks_or_a_negative_warmup_is_refused(synthetic_dataset, tmp_path, capsys,
                                                                             override, pattern):
  workdir = tmp_path / "run"
  rc, lines = run_cli(capsys, *train_args(synthetic_dataset, workdir, override))
  assert_refused(rc, lines, "train", pattern)
  assert not (workdir / "config.json").exists() and not (workdir / "run.json").exists()


def test_the_checkpoint_loaded_is_named_with_why_in_one_warning(reference, tmp_path, capsys):
  best = json.loads((reference / "final.json").read_text())["best_step"]
  capsys.readouterr()
  _, _, _, step = checkpoints.load_run(reference, which="best", return_step=True)
  assert (step, step.label) == (best, f"best (step {best})") and capsys.readouterr().err == ""
  # Only the best checkpoint damaged: the newest last one (step 12) is used, and the label says so and why.
  broken = tmp_path / "broken"
  shutil.copytree(reference, broken)
  (broken / f"checkpoints/best/{best}/default/_METADATA").write_text("")
  _, _, _, step = checkpoints.load_run(broken, which="best", return_step=True)
  warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(warnings) == 1 and re.fullmatch(rf"mmvae: warning: checkpoint \S+/best/{best} is damaged \(.*\); "
                                             r"using the last checkpoint of step 12", warnings[0]), warnings
  assert step == 12 and re.fullmatch(rf"last \(step 12\): checkpoint \S+/best/{best} is damaged \(.*\)", step.label)
  # A run that saved no best checkpoint: the last one, said without a warning.
  shutil.rmtree(broken / "checkpoints/best")
  _, _, _, step = checkpoints.load_run(broken, which="best", return_step=True)
  assert step.label == "last (step 12): the run saved no best checkpoint" and capsys.readouterr().err == ""


# --- issue 24: prep never deletes what it did not write ---------------------------------------------


def _feature_root(folder) -> pathlib.Path:
  """A tiny `prep features` input: two modalities, train and test."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for m, d in (("img", 3), ("txt", 2)):
    for split, n in (("train", 12), ("test", 6)):
      np.save(folder / f"{m}_{split}_features.npy", rng.normal(size=(n, d)).astype(np.float32))
      np.save(folder / f"{m}_{split}_labels.npy", np.arange(n) % 3)
  return folder


def test_prep_replacing_a_dataset_keeps_the_users_files_in_it(synthetic_dataset, tmp_path, capsys):
  out = tmp_path / "syn"
  shutil.copytree(synthetic_dataset, out)
  (out / "NOTES.md").write_text("notes\n")
  (out / "my_analysis").mkdir()
  (out / "my_analysis/table.csv").write_text("a,b\n")
  rc, lines = run_cli(capsys, "prep", "features", "--root", _feature_root(tmp_path / "feat"), "--out", out)
  assert rc == 0, lines
  assert data.Dataset(out).manifest["corpus"] == "features" and not (out / "raw").exists()  # prep's own: replaced
  assert (out / "NOTES.md").read_text() == "notes\n" and (out / "my_analysis/table.csv").read_text() == "a,b\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["feat", "syn"]


@pytest.mark.parametrize("argv, flag", [
    (["voxceleb1", "--root", "{out}/raw", "--config", "synthetic:tiny"], "--root"),
    (["features", "--root", "{out}"], "--root"),
    (["features", "--join", "{other}", "--embeddings", "{out}/emb.npz", "--name", "e"], "--embeddings"),
    (["avdigits", "--fsdd", "{out}/raw/wav", "--mnist", "{other}"], "--fsdd"),
])
def test_prep_refuses_an_out_that_holds_its_input(synthetic_dataset, tmp_path, capsys, argv, flag):
  out = tmp_path / "syn"
  shutil.copytree(synthetic_dataset, out)
  np.savez(out / "emb.npz", ids=np.array(["x"]), embeddings=np.zeros((1, 2), np.float32))
  before = snapshot(out)
  argv = [a.format(out=out, other=synthetic_dataset) for a in argv]
  rc, lines = run_cli(capsys, "prep", *argv, "--out", out)
  assert_refused(rc, lines, "prep", rf"--out .*syn holds the input {flag} ")
  assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_a_run_and_a_dataset_never_share_a_folder(synthetic_dataset, reference, tmp_path, capsys, monkeypatch):
  out = tmp_path / "syn"
  shutil.copytree(synthetic_dataset, out)
  for workdir in (out, out / "run"):
    rc, lines = run_cli(capsys, *train_args(out, workdir))
    assert_refused(rc, lines, "train", r"--workdir .* lies inside the prepared dataset .*syn, which `mmvae prep` "
                   "replaces")
  assert not (out / "run").exists() and not (out / "config.json").exists()
  from data_prep import synthetic
  monkeypatch.setattr(synthetic, "generate_corpus", lambda *a, **k: pytest.fail("slow work started"))
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  before = snapshot(run)
  rc, lines = run_cli(capsys, "prep", "synthetic", "--out", run, "--identities", 4, "--workers", 1)
  assert_refused(rc, lines, "prep", r"--out .*run holds a training run \(run.json, config.json, checkpoints\)")
  assert snapshot(run) == before


# --- issue 24, item 18: a batch that cannot fit -------------------------------------------------------


def test_a_batch_that_cannot_fit_is_refused_with_its_size_and_leaves_no_workdir(synthetic_dataset, tmp_path, capsys):
  size = 10 ** 11  # about 2 TiB of examples: more than any test machine holds
  # By hand: each stored array, plus its float32 model input (one frame of a multi-frame image), plus the label.
  per_example = 4
  for m in data.Dataset(synthetic_dataset).manifest["modalities"]:
    stored = int(np.prod(m["shape"])) * np.dtype(m["dtype"]).itemsize
    shown = int(np.prod(m["shape"][1:] if m["kind"] == "image" and len(m["shape"]) == 4 else m["shape"])) * 4
    per_example += stored + (0 if m["dtype"] == "float32" and shown == stored else shown)
  workdir = tmp_path / "new" / "run"
  rc, lines = run_cli(capsys, *train_args(synthetic_dataset, workdir, f"--config.train.batch_size={size}"))
  assert_refused(rc, lines, "train", rf"^mmvae train: error: config.train.batch_size={size}: one batch takes about "
                 rf"{size * per_example / 2 ** 30:.1f} GiB \(stored examples and model inputs\), more than the "
                 r"[\d.]+ GiB of memory available; lower it$")
  assert list(tmp_path.iterdir()) == []  # the folders the refused run made are gone
  # A workdir the user made stays, and so does what is in it.
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine\n")
  for workdir in (mine, tmp_path / "empty"):
    workdir.mkdir(exist_ok=True)
    rc, lines = run_cli(capsys, *train_args(synthetic_dataset, workdir, f"--config.train.batch_size={size}"))
    assert_refused(rc, lines, "train", "one batch takes about")
  assert snapshot(mine) == {"notes.txt": b"mine\n"} and (tmp_path / "empty").is_dir()


# --- issue 24, item 19: analysis of a collapsed model -------------------------------------------------


def test_analysis_of_collapsed_latents_flags_them_and_keeps_what_is_defined(synthetic_dataset, reference, tmp_path,
                                                                           capsys):
  from mmvae.analysis import report
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  rc, lines = run_cli(capsys, "analyze", "--workdir", run)
  assert rc == 0, lines
  saved = dict(np.load(run / "report/latents.npz"))
  names = [m["name"] for m in data.Dataset(synthetic_dataset).manifest["modalities"]]
  first, other = names[0], names[1]
  for collapsed in ([other], names):  # one modality's posterior means constant, then every modality's
    latents = dict(saved)
    for k, m in enumerate(collapsed):
      latents[f"{m}_mu"] = np.full_like(saved[f"{m}_mu"], 0.25 * (k + 1))
    np.savez_compressed(run / "report/latents.npz", **latents)
    capsys.readouterr()
    metrics = report.rebuild(run)
    assert "Traceback" not in capsys.readouterr().err
    assert json.loads((run / "report/metrics.json").read_text())[f"clusters.{other}.collapsed"] is True
    for space in names + ["joint"]:
      assert metrics[f"clusters.{space}.collapsed"] is (space in collapsed or space == "joint" and collapsed == names)
    # Retrieval into a gallery of one repeated point: every item ties, so the MRR is exactly its chance level.
    key = f"retrieval.{first}_to_{other}.mrr"
    assert metrics[key] == pytest.approx(metrics[key + "_chance"], abs=1e-12)
    text = (run / "report/report.md").read_text()
    flagged = [line for line in text.splitlines() if line.startswith("**Collapsed:**")]
    assert len(flagged) == 1 and "(near-)zero variance" in flagged[0], flagged
    figures = collapsed != names  # the joint space is mapped unless every modality collapsed
    embeddings = np.load(run / "report/embeddings.npz")
    maps = [k for k in embeddings if k.startswith("tsne_")]
    assert maps == [f"tsne_{m}" for m in names if m not in collapsed] + (["tsne_joint"] if figures else []), maps
    assert all(np.isfinite(embeddings[k]).all() for k in maps)
    assert (run / "report/tsne.png").is_file() is figures and ("![t-SNE](tsne.png)" in text) is figures


# --- issue 24, item 11: a damaged checkpoint is one warning, not asyncio tracebacks ------------------------


def test_a_damaged_checkpoint_read_prints_one_warning_and_no_event_loop_traceback(synthetic_dataset, reference,
                                                                                  tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(reference, broken)
  # Truncating the largest data file fails one TensorStore read while others are in flight: Orbax then closed its
  # event loop under them, and each late one printed `RuntimeError: Event loop is closed` with a traceback.
  best = json.loads((broken / "final.json").read_text())["best_step"]
  biggest = max((p for p in (broken / f"checkpoints/best/{best}").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:1000])
  wav = next((synthetic_dataset / "raw/wav").rglob("*.wav"))
  # A process of its own: the late reads report on TensorStore's threads, possibly after the load returned.
  done = subprocess.run([sys.executable, "-c", "import sys; from mmvae import cli; sys.exit(cli.main(sys.argv[1:]))",
                         "generate", "face", "--workdir", str(broken), "--wav", str(wav), "--out",
                         str(tmp_path / "face.png")], capture_output=True, text=True, timeout=300)
  lines = [line for line in done.stderr.splitlines() if line.strip() and not re.search(r"\d+%\|", line)]
  assert done.returncode == 0 and (tmp_path / "face.png").is_file(), done.stderr
  assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr, done.stderr
  assert len(lines) == 1 and re.search(rf"checkpoint \S+/best/{best} is damaged .*; using the last checkpoint",
                                       lines[0]), lines
