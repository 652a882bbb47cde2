"""train.steps_per_dispatch='auto' (the default): the block length it picks, the config key, and the same run."""

import json
import signal
import types

import numpy as np
import pytest

import mmvae
from mmvae import config as config_lib
from mmvae.train import checkpoints, entry, parallel, trainer

OVERRIDES = ["train.num_steps=40", "train.checkpoint_every=8", "train.eval_every=20", "train.log_every=1",
             "train.learning_rate=0.01"]


GF = 1e9


@pytest.mark.parametrize("step_flop, batch_bytes, period, num_steps, platform, expected", [
    (10 * GF, 1000, 500, 10_000, "cpu", 1),  # one step holds more than the CPU target (5 GFLOP)
    (3 * GF, 1000, 500, 10_000, "cpu", 2),  # ceil(5 / 3) = 2 divides 500
    (0.84 * GF, 1000, 1000, 10_000, "cpu", 8),  # ceil(5 / 0.84) = 6: the next divisor of 1000 is 8
    (0.84 * GF, 1000, 1000, 499, "cpu", 1),  # a run under AUTO_MIN_RUN steps
    (0.84 * GF, 1000, 7, 10_000, "cpu", 7),  # want 6: 7 is the smallest divisor of 7 at or above it
    (0.84 * GF, 1000, 4, 10_000, "cpu", 4),  # no divisor of 4 reaches 6: the largest, never past the spacing
    (0.84 * GF, 1000, 13, 10_000, "cpu", 13),  # 13's divisors: 1 and 13, the smallest at or above 6
    (1e3, 1000, 1000, 10_000, "cpu", 100),  # capped at AUTO_MAX_STEPS (divides 1000)
    (1e3, 1000, 990, 10_000, "cpu", 99),  # the largest divisor of 990 within the cap
    (1e3, 64 * 2**20, 1000, 10_000, "cpu", 4),  # at most AUTO_MAX_BYTES (256 MiB) of batches
    (1e3, 300 * 2**20, 1000, 10_000, "cpu", 1),  # one batch is over it
    (10 * GF, 1000, 1000, 10_000, "gpu", 100),  # an accelerator's target is 5 TFLOP: want 500, capped at 100
])
def test_auto_block_length(step_flop, batch_bytes, period, num_steps, platform, expected):
  assert trainer.auto_steps_per_dispatch(step_flop, batch_bytes, period, num_steps, platform) == expected


def test_block_lengths_never_cross_an_eval_or_checkpoint_and_depend_on_the_step_alone():
  loop = types.SimpleNamespace(t=types.SimpleNamespace(num_steps=40, eval_every=20, checkpoint_every=8), per_dispatch=3)
  lengths = {s: trainer._Loop._block_length(loop, s) for s in range(40)}
  boundaries = {8, 16, 20, 24, 32, 40}  # every checkpoint_every, eval_every and the last step
  assert all(lengths[s] == 1 or not boundaries & set(range(s + 1, s + 3)) for s in range(40))  # none inside
  step, walked = 0, []
  while step < 40:
    walked.append(step)
    step += lengths[step]
  # By hand: from each dispatch's first step, a block of 3 when it ends at or before the next boundary.
  assert walked == [0, 3, 6, 7, 8, 11, 14, 15, 16, 19, 20, 23, 24, 27, 30, 31, 32, 35, 38, 39]


def test_step_flop_is_the_global_step_on_any_device_count():
  """Both modes lower the global program: 1 and 4 devices give one FLOP count, and XLA's compiled one-device
  program agrees with it; the batch bytes are the global batch's."""
  import jax
  from mmvae.train import step as step_lib
  from mmvae.zoo import msvae
  from mmvae import modalities
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4, set in conftest.py)")
  cfg = config_lib.load("reference:tiny")
  specs = {"audio": modalities.Modality("audio", "spectrogram", (512,), "float32"),
           "face": modalities.Modality("face", "image", (1, 23, 23, 1), "uint8")}
  tx = step_lib.make_optimizer(cfg.train)
  graphdef, state = step_lib.init_state(msvae.build(cfg, specs, seed=0), tx)
  state = jax.tree.map(np.asarray, state)
  rng = np.random.default_rng(0)
  batch = {"audio": rng.normal(size=(8, 512)).astype(np.float32),
           "face": rng.uniform(size=(8, 23, 23, 1)).astype(np.float32)}
  counts = {}
  for mode in parallel.MODES:
    for n in (1, 4):
      runner = parallel.Runner(graphdef, tx, cfg, mode, devices=jax.devices()[:n])
      counts[mode, n] = runner.step_flop(runner.put_state(state), batch)
  assert counts["sharded", 1] == counts["sharded", 4] and counts["pmap", 1] == counts["pmap", 4], counts
  assert counts["pmap", 1][0] == pytest.approx(counts["sharded", 1][0], rel=1e-4)  # sharding annotations aside
  counts[1] = counts["sharded", 1]
  assert counts[1][1] == 8 * 512 * 4 + 8 * 23 * 23 * 4
  runner = parallel.Runner(graphdef, tx, cfg, "sharded", devices=jax.devices()[:1])
  compiled = runner.lower(runner.put_state(state), batch).compile().cost_analysis()
  compiled = compiled[0] if isinstance(compiled, (list, tuple)) else compiled
  assert counts[1][0] == pytest.approx(float(compiled["flops"]), rel=0.05)


def test_an_integer_or_auto_is_accepted_and_auto_is_the_default():
  assert config_lib.load("synthetic:tiny").train.steps_per_dispatch == "auto"
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


def _params(workdir):
  from flax import nnx
  model, _, _ = checkpoints.load_run(workdir, which="last")
  return {str(path): np.asarray(v[...]) for path, v in nnx.state(model, nnx.Param).flat_state()}


def test_auto_blocks_train_the_same_run_as_single_steps_and_resume_bit_for_bit(synthetic_dataset, tmp_path,
                                                                                monkeypatch):
  """'auto' made to pick blocks (no minimum run, a target no block reaches) against steps_per_dispatch=1 on the
  same data; then the same 'auto' run stopped after its third dispatch and resumed, against it bit for bit."""
  single = entry.train(config_lib.load("synthetic:tiny", OVERRIDES + ["train.steps_per_dispatch=1"]),
                       synthetic_dataset, tmp_path / "single")
  monkeypatch.setattr(trainer, "AUTO_MIN_RUN", 0)
  monkeypatch.setattr(trainer, "AUTO_DISPATCH_FLOP", {"cpu": 1e18})
  blocks = []
  steps = parallel.Runner.steps

  def counted(self, state, batches):
    blocks.append(len(batches))
    return steps(self, state, batches)

  monkeypatch.setattr(parallel.Runner, "steps", counted)
  auto_cfg = config_lib.load("synthetic:tiny", OVERRIDES)  # the default: 'auto'
  auto = entry.train(auto_cfg, synthetic_dataset, tmp_path / "auto")
  assert blocks == [4] * 10, blocks  # the largest divisor of gcd(20, 8) = 4: every step in a block
  assert auto["step"] == single["step"] == 40
  a, b = _rows(tmp_path / "single"), _rows(tmp_path / "auto")
  assert [r["step"] for r in b] == list(range(1, 41))
  np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-5)
  saved = sorted(int(p.name) for p in (tmp_path / "auto" / "checkpoints" / "last").iterdir() if p.name.isdigit())
  assert saved[-1] == 40 and all(s % 8 == 0 for s in saved)
  x, y = _params(tmp_path / "single"), _params(tmp_path / "auto")
  for path in x:
    np.testing.assert_allclose(y[path], x[path], rtol=1e-5, atol=1e-6, err_msg=path)
  assert auto["samples_per_second"] > 0 and auto["steps_per_dispatch"] == 4 and single["steps_per_dispatch"] == 1

  # Stopped as by SIGTERM after the third dispatch (step 12, between checkpoints), then the same command again.
  polls = []

  def stop_on_third(signum):
    polls.append(signum)
    return signal.SIGTERM if len(polls) == 3 else signum

  monkeypatch.setattr(trainer, "_any_process", stop_on_third)
  with pytest.raises(SystemExit) as stopped:
    entry.train(auto_cfg, synthetic_dataset, tmp_path / "stopped")
  assert stopped.value.code == 128 + signal.SIGTERM
  saved = sorted(int(p.name) for p in (tmp_path / "stopped" / "checkpoints" / "last").iterdir() if p.name.isdigit())
  assert saved[-1] == 12
  monkeypatch.setattr(trainer, "_any_process", lambda signum: signum)
  resumed = entry.train(auto_cfg, synthetic_dataset, tmp_path / "stopped")
  assert resumed["params_sha256"] == auto["params_sha256"]  # the same blocks, so the same bits
  assert [r["loss"] for r in _rows(tmp_path / "stopped")] == [r["loss"] for r in b]
