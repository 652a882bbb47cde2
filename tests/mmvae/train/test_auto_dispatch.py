"""train.steps_per_dispatch='auto' (the default): the block length it picks, the config key, and the same run."""

import json

import numpy as np
import pytest

import mmvae
from mmvae import config as config_lib
from mmvae.train import checkpoints, entry, parallel, trainer

OVERRIDES = ["train.num_steps=40", "train.checkpoint_every=8", "train.eval_every=20", "train.log_every=1",
             "train.learning_rate=0.01"]


@pytest.mark.parametrize("step_ms, compile_s, remaining, period, expected", [
    (30.0, 1.0, 10_000, 500, 1),  # a step longer than the target: one per dispatch
    (12.0, 1.0, 10_000, 500, 1),  # 20 / 12 < 2
    (5.0, 1.0, 10_000, 500, 4),  # 20 / 5 = 4 divides 500
    (3.0, 1.0, 10_000, 500, 5),  # int(20 / 3) = 6: 5 divides 500 and is within a factor 2
    (3.0, 1.0, 10_000, 7, 6),  # no divisor of 7 in [3, 6]: 6, with single steps before each boundary
    (3.0, 1.0, 10_000, 4, 4),  # never longer than the spacing of the eval/checkpoint steps
    (0.01, 1.0, 1_000_000, 1000, 100),  # capped at AUTO_MAX_STEPS
    (0.5, 1.0, 1000, 500, 1),  # the rest of the run (0.5 s) does not pay for the block's compilation (1 s)
    (0.5, 0.1, 1000, 500, 25),  # int(20 / 0.5) = 40: 25 divides 500
    (0.5, 0.0, 3, 500, 2),  # never longer than what is left (3), and 2 divides 500
])
def test_auto_block_length(step_ms, compile_s, remaining, period, expected):
  assert trainer.auto_steps_per_dispatch(step_ms / 1000, compile_s, remaining, period) == expected


def test_an_integer_or_auto_is_accepted_and_one_is_the_default():
  assert config_lib.load("synthetic:tiny").train.steps_per_dispatch == 1  # reproducible bit for bit
  assert config_lib.load("msvae_public").train.steps_per_dispatch == 10  # a config file may set an integer
  cfg = config_lib.load("synthetic:tiny", ["train.steps_per_dispatch=3"])
  assert cfg.train.steps_per_dispatch == 3
  config_lib.apply_override(cfg, "train.steps_per_dispatch=auto")  # and back
  assert cfg.train.steps_per_dispatch == "auto"
  trainer.check_config(cfg)
  # The API's ConfigDict path copies the config (its references resolved) before the overrides.
  assert mmvae._config(config_lib.load("synthetic:tiny"), ["train.steps_per_dispatch=2"]).train.steps_per_dispatch == 2
  assert json.loads(json.dumps(config_lib.to_dict(cfg)))["train"]["steps_per_dispatch"] == "auto"


@pytest.mark.parametrize("value", ["fast", "0", "-2", "2.5", "True"])
def test_bad_steps_per_dispatch_is_one_line_naming_the_key(value):
  cfg = config_lib.load("synthetic:tiny", [f"train.steps_per_dispatch={value}"])
  with pytest.raises(ValueError, match=r"config.train.steps_per_dispatch=.* must be an integer >= 1 or 'auto'"):
    trainer.check_config(cfg)


def test_a_run_stored_with_an_integer_resumes_under_auto(tmp_path):
  """config.json of a run made before 'auto' (steps_per_dispatch: 1) is today's, and may resume with 'auto'."""
  old = config_lib.to_dict(config_lib.load("synthetic:tiny"))
  old["train"]["steps_per_dispatch"] = 1
  path = tmp_path / "config.json"
  path.write_text(json.dumps(old))
  assert config_lib.stored(path)["train"]["steps_per_dispatch"] == 1  # not 'made by an older mmvae'
  trainer._check_resume_config(path, config_lib.load("synthetic:tiny", ["train.steps_per_dispatch=auto"]))  # resumable
  with pytest.raises(ValueError, match="different config"):  # the check still compares the rest
    trainer._check_resume_config(path, config_lib.load("synthetic:tiny", ["model.latent_dim=9"]))


def _rows(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if r["split"] == "train"]


def test_auto_blocks_train_the_same_run_as_single_steps(synthetic_dataset, tmp_path, monkeypatch):
  """'auto' made to pick blocks (a long target, no payback rule) against steps_per_dispatch=1 on the same data."""
  single = entry.train(config_lib.load("synthetic:tiny", OVERRIDES + ["train.steps_per_dispatch=1"]),
                       synthetic_dataset, tmp_path / "single")
  monkeypatch.setattr(trainer, "AUTO_DISPATCH_S", 10.0)
  monkeypatch.setattr(trainer, "AUTO_PAYBACK", 0.0)
  blocks = []
  steps = parallel.Runner.steps

  def counted(self, state, batches):
    blocks.append(len(batches))
    return steps(self, state, batches)

  monkeypatch.setattr(parallel.Runner, "steps", counted)
  auto = entry.train(config_lib.load("synthetic:tiny", OVERRIDES + ["train.steps_per_dispatch=auto"]),
                     synthetic_dataset, tmp_path / "auto")
  # Steps 1-6 single (compile, 5 timed), 7-8 single (a block would cross 8), then blocks of gcd(20, 8) = 4.
  assert blocks == [4] * 8, blocks
  assert auto["step"] == single["step"] == 40
  a, b = _rows(tmp_path / "single"), _rows(tmp_path / "auto")
  assert [r["step"] for r in b] == list(range(1, 41))
  np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-5)
  saved = sorted(int(p.name) for p in (tmp_path / "auto" / "checkpoints" / "last").iterdir() if p.name.isdigit())
  assert saved[-1] == 40 and all(s % 8 == 0 for s in saved)
  from flax import nnx
  x, _, _ = checkpoints.load_run(tmp_path / "single", which="last")
  y, _, _ = checkpoints.load_run(tmp_path / "auto", which="last")
  for (path, u), (_, v) in zip(nnx.state(x, nnx.Param).flat_state(), nnx.state(y, nnx.Param).flat_state()):
    np.testing.assert_allclose(np.asarray(v[...]), np.asarray(u[...]), rtol=1e-5, atol=1e-6, err_msg=str(path))
  assert auto["samples_per_second"] > 0 and auto["steps_per_dispatch"] == 4 and single["steps_per_dispatch"] == 1
