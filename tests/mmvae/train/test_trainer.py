"""The training loop end to end on a tiny prepared synthetic corpus: learning, resume after SIGKILL, NaN stop."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mmvae import config as config_lib
from mmvae import data
from mmvae.train import checkpoints, entry, trainer
from slow_batches import SLOW_BATCHES, tapped  # tests/, on the path beside conftest.py

OVERRIDES = ["train.num_steps=40", "train.checkpoint_every=8", "train.eval_every=20", "train.log_every=1",
             "train.learning_rate=0.01"]


@pytest.fixture(scope="module")
def dataset_dir(synthetic_dataset):
  return synthetic_dataset


@pytest.fixture(scope="module")
def full_run(dataset_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  final = entry.train(config_lib.load("synthetic:tiny", OVERRIDES), dataset_dir, workdir)
  return workdir, final


def _rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_workdir_and_loss_falls(full_run, dataset_dir):
  workdir, final = full_run
  for name in ("config.json", "run.json", "metrics.jsonl", "final.json"):
    assert (workdir / name).is_file(), name
  assert list((workdir / "tb").glob("events.out.tfevents*"))
  run = json.loads((workdir / "run.json").read_text())
  assert run["data_dir"] == str(pathlib.Path(dataset_dir).absolute()) and run["devices"] == 4
  assert final["step"] == 40 and set(final) >= {"losses", "samples_per_second", "elapsed_seconds", "params_sha256"}
  terms = {"recon_audio_from_audio", "recon_face_from_face", "recon_face_from_audio", "recon_audio_from_face",
           "kl_audio", "kl_face", "wasserstein", "loss"}
  assert terms <= set(final["losses"])
  train = [r for r in _rows(workdir) if r["split"] == "train"]
  assert [r["step"] for r in train] == list(range(1, 41)) and all(terms <= set(r) for r in train)
  val = [r for r in _rows(workdir) if r["split"] == "validation"]
  assert [r["step"] for r in val] == [20, 40] and 0 < val[-1]["mrr_audio_to_face"] <= 1
  first = np.mean([r["loss"] for r in train[:5]])
  last = np.mean([r["loss"] for r in train[-5:]])
  assert last < 0.85 * first, (first, last)
  # The saved parameters are the ones final.json describes.
  model, config, data_dir = checkpoints.load_run(workdir, which="last")
  from flax import nnx
  assert checkpoints.params_sha256(nnx.state(model, nnx.Param)) == final["params_sha256"]
  assert data_dir == run["data_dir"] and config.train.num_steps == 40


def test_logged_learning_rate_is_the_warmup_cosine_schedule(full_run):
  """Each train row's learning_rate is the rate its step used (the schedule at step - 1), by the closed form:
  linear warmup from 0 over warmup_steps, then a cosine from learning_rate to 0 at num_steps."""
  workdir, _ = full_run
  t = json.loads((workdir / "config.json").read_text())["train"]
  assert t["lr_schedule"] == "cosine" and 0 < t["warmup_steps"] < t["num_steps"]
  lr, w, n = t["learning_rate"], t["warmup_steps"], t["num_steps"]

  def expected(i):  # i optimizer updates done before this step
    return lr * i / w if i < w else lr * 0.5 * (1 + np.cos(np.pi * (i - w) / (n - w)))

  train = [r for r in _rows(workdir) if r["split"] == "train"]
  np.testing.assert_allclose([r["learning_rate"] for r in train], [expected(r["step"] - 1) for r in train],
                             rtol=1e-6, atol=1e-9)


def test_validation_runs_once_unlogged_before_the_first_step(dataset_dir, tmp_path, monkeypatch):
  """The first validation (its compilation, and any fault in the validation data) comes before any training
  step; it is not logged, so the logged validations stay those of the eval steps."""
  from mmvae.train import parallel
  events = []
  validate, step = trainer._Validator.__call__, parallel.Runner.step

  def validating(self, params):
    events.append("validate")
    return validate(self, params)

  def stepping(self, state, batch):
    events.append("step")
    return step(self, state, batch)

  monkeypatch.setattr(trainer._Validator, "__call__", validating)
  monkeypatch.setattr(parallel.Runner, "step", stepping)
  entry.train(config_lib.load("synthetic:tiny", ["train.num_steps=4", "train.eval_every=4"]), dataset_dir, tmp_path)
  assert events == ["validate"] + ["step"] * 4 + ["validate"]
  assert [r["step"] for r in _rows(tmp_path) if r["split"] == "validation"] == [4]


def test_sigkill_and_resume_gives_the_same_parameters(full_run, dataset_dir, tmp_path):
  _, final = full_run
  workdir = tmp_path / "killed"
  # The child is slowed down (a pause per batch) so the kill lands mid-run, after a checkpoint.
  script = (SLOW_BATCHES + "import sys\nfrom mmvae import config as c\nfrom mmvae.train import entry\n"
            f"entry.train(c.load('synthetic:tiny', {OVERRIDES!r}), sys.argv[1], sys.argv[2])\n")
  child = subprocess.Popen([sys.executable, "-c", script, str(dataset_dir), str(workdir)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
  try:
    deadline = time.time() + 240
    while time.time() < deadline and child.poll() is None:
      done = [int(p.name) for p in (workdir / "checkpoints" / "last").glob("[0-9]*") if p.name.isdigit()
              and (p / "_CHECKPOINT_METADATA").exists()]
      if done and max(done) >= 16:
        break
      time.sleep(0.2)
    assert child.poll() is None, "the child finished or died before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
  finally:
    if child.poll() is None:
      child.kill()
  assert not (workdir / "final.json").exists()
  # The input pipeline's state was saved beside each checkpoint; a state that disagrees with its step is refused.
  newest = max(int(p.name) for p in (workdir / "checkpoints" / "last").glob("[0-9]*") if p.name.isdigit())
  saved = workdir / "checkpoints" / "last" / str(newest) / "data" / "process_0-of-1.json"
  state = saved.read_text()
  assert json.loads(state)["step"] == newest
  saved.write_text(json.dumps(dict(json.loads(state), step=newest + 1)))
  with pytest.raises(ValueError, match=f"input pipeline state saved with step {newest} .* is at step {newest + 1}"):
    entry.train(config_lib.load("synthetic:tiny", OVERRIDES), dataset_dir, workdir)
  saved.write_text(state)
  resumed = entry.train(config_lib.load("synthetic:tiny", OVERRIDES), dataset_dir, workdir)
  assert 16 <= resumed["resumed_from"] < 40
  assert resumed["params_sha256"] == final["params_sha256"]
  steps = [r["step"] for r in _rows(workdir) if r["split"] == "train"]
  assert steps == list(range(1, 41))  # rows past the last checkpoint were dropped and redone


def test_resume_with_a_different_config_fails_clearly(full_run, dataset_dir):
  workdir, _ = full_run
  with pytest.raises(ValueError, match=r"different config \(model.latent_dim: 8 -> 9"):
    entry.train(config_lib.load("synthetic:tiny", OVERRIDES + ["model.latent_dim=9"]), dataset_dir, workdir)


def test_bad_config_and_mismatched_dataset_fail_at_start(dataset_dir, tmp_path):
  with pytest.raises(ValueError, match="wasserstein"):
    entry.train(config_lib.load("synthetic:tiny", ["loss.wasserstein=emd"]), dataset_dir, tmp_path / "a")
  with pytest.raises(ValueError, match="batch_size"):
    entry.train(config_lib.load("synthetic:tiny", ["train.batch_size=6"]), dataset_dir, tmp_path / "b")
  with pytest.raises(ValueError, match="face_size"):
    entry.train(config_lib.load("reference:tiny"), dataset_dir, tmp_path / "c")
  assert not (tmp_path / "a" / "checkpoints").exists()


def test_nan_stops_with_step_and_term_and_keeps_last_good_checkpoint(dataset_dir, tmp_path, monkeypatch):
  def poison(i, batch):
    if i == 4:  # the batch of step 5 (steps count from 1)
      batch = dict(batch, audio=np.where(np.arange(batch["audio"].shape[-1]) == 0, np.nan, batch["audio"]))
    return batch

  monkeypatch.setattr(data, "Batches", tapped(poison))
  cfg = config_lib.load("synthetic:tiny", ["train.checkpoint_every=2", "train.eval_every=100"])
  with pytest.raises(trainer.NonFiniteError, match=r"non-finite loss at step 5: .*recon_audio_from_audio=nan.*checkpoint \(step 4\)"):
    entry.train(cfg, dataset_dir, tmp_path)
  model, _, _ = checkpoints.load_run(tmp_path, which="last")
  from flax import nnx
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints" / "last").iterdir() if p.name.isdigit())
  assert saved[-1] == 4
  assert all(np.all(np.isfinite(np.asarray(v))) for _, v in nnx.state(model, nnx.Param).flat_state())
  assert not (tmp_path / "final.json").exists()


def test_several_steps_per_dispatch_train_the_same_run(full_run, dataset_dir, tmp_path):
  """Blocks of 3 steps (and single steps where a block would cross a checkpoint) against the single-step run."""
  single_dir, _ = full_run
  blocked = entry.train(config_lib.load("synthetic:tiny", OVERRIDES + ["train.steps_per_dispatch=3"]),
                        dataset_dir, tmp_path)
  assert blocked["step"] == 40
  rows = {s: [r for r in _rows(d) if r["split"] == "train"] for s, d in (("single", single_dir), ("blocked", tmp_path))}
  assert [r["step"] for r in rows["blocked"]] == list(range(1, 41))  # every step logged, in order
  np.testing.assert_allclose([r["loss"] for r in rows["blocked"]], [r["loss"] for r in rows["single"]], rtol=1e-5)
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints" / "last").iterdir() if p.name.isdigit())
  assert saved[-1] == 40 and all(s % 8 == 0 for s in saved)  # blocks never skip a checkpoint step
  from flax import nnx
  a, _, _ = checkpoints.load_run(single_dir, which="last")
  b, _, _ = checkpoints.load_run(tmp_path, which="last")
  for (path, x), (_, y) in zip(nnx.state(a, nnx.Param).flat_state(), nnx.state(b, nnx.Param).flat_state()):
    np.testing.assert_allclose(np.asarray(y[...]), np.asarray(x[...]), rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_a_nan_inside_a_block_names_its_own_step(dataset_dir, tmp_path, monkeypatch):
  def poison(i, batch):
    if i == 4:  # step 5: the middle of the block of steps 4-6
      batch = dict(batch, audio=np.full_like(batch["audio"], np.nan))
    return batch

  monkeypatch.setattr(data, "Batches", tapped(poison))
  cfg = config_lib.load("synthetic:tiny", ["train.checkpoint_every=3", "train.eval_every=100",
                                           "train.steps_per_dispatch=3"])
  with pytest.raises(trainer.NonFiniteError, match=r"non-finite loss at step 5: .*checkpoint \(step 3\)"):
    entry.train(cfg, dataset_dir, tmp_path)
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints" / "last").iterdir() if p.name.isdigit()) == [3]


def test_validation_and_analysis_score_a_checkpoint_alike(full_run, dataset_dir):
  """The MRR that picked the best checkpoint is the MRR `mmvae analyze` reports for that split and step."""
  from mmvae.analysis import report
  workdir, _ = full_run
  val = [r for r in _rows(workdir) if r["split"] == "validation"]
  assert val[-1]["step"] == 40 and config_lib.load("synthetic:tiny").data.frames_per_utterance > 1  # all K frames
  metrics = report.analyze(workdir, data_dir=dataset_dir, split="validation", which="last")
  assert metrics["retrieval.audio_to_face.mrr"] == pytest.approx(val[-1]["mrr_audio_to_face"], abs=1e-6)
  assert metrics["retrieval.face_to_audio.mrr"] == pytest.approx(val[-1]["mrr_face_to_audio"], abs=1e-6)
