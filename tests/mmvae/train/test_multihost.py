"""Multi-host proven on CPU: 2 processes x 2 devices (jax.distributed on localhost) train as 1 process x 4 devices.

Each run is `entry.train` in fresh subprocesses (this file run as a script), since a process's device
count and its distributed client are fixed once JAX starts. The 2 x 2 run trains 2 steps in 'sharded'
mode, then resumes from its checkpoint in 'pmap' mode for 2 more: one launch pair covers both modes,
the collective Orbax save and the restore on every process. Both processes share one local disk, as
hosts share a bucket or NFS; only process 0 writes the workdir.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

STEPS, BATCH = 4, 8
# A constant schedule, so that the 2 x 2 run may stop at step 2 and resume to 4 (the cosine one ends at num_steps).
OVERRIDES = [f"train.batch_size={BATCH}", "train.lr_schedule=constant", "train.learning_rate=0.003",
             "train.log_every=1", "train.checkpoint_every=2", "train.eval_every=2"]
# XLA's backend at -O0 halves compile time, most of each run; every run here uses it, so all compute alike.
XLA_FLAGS = "--xla_backend_optimization_level=0"
TIMEOUT_S = 120  # per launch; a healthy one takes ~15 s on 2 cores, a lost peer would otherwise wait 5 minutes


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(data_dir, workdir, mode: str, steps: int, processes: int, logs: pathlib.Path, sigterm: int = -1) -> list:
  """Starts a training run as `processes` processes sharing 4 CPU devices: [(process, log, report)].

  sigterm: the process that sends itself SIGTERM as it takes its second batch (-1: none).
  """
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "MMVAE_"))}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={4 // processes} {XLA_FLAGS}", JAX_PLATFORMS="cpu")
  if processes > 1:
    env.update(MMVAE_COORDINATOR=f"localhost:{_free_port()}", MMVAE_NUM_PROCESSES=str(processes))
  logs.mkdir(parents=True)
  procs = []
  for p in range(processes):
    log, report = logs / f"process{p}.log", logs / f"process{p}.json"
    with log.open("w") as f:
      child = subprocess.Popen([sys.executable, __file__, str(data_dir), str(workdir), mode, str(steps), str(report),
                                str(sigterm)],
                               env=dict(env, MMVAE_PROCESS_ID=str(p)), stdout=f, stderr=subprocess.STDOUT)
    procs.append((child, log, report))
  return procs


def _finish(name: str, procs: list, exit_code: int = 0) -> list[dict]:
  """The processes' reports once all exit; fails with the log tail of each one that did not exit with exit_code."""
  deadline, failed = time.monotonic() + TIMEOUT_S, []
  for child, log, _ in procs:
    late = ""
    try:
      child.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      child.kill()
      child.wait()
      late = f", killed after {TIMEOUT_S} s"
    if child.returncode != exit_code:
      tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
      failed.append(f"{log.stem} (exit {child.returncode}{late}):\n{tail}")
  if failed:
    pytest.fail(f"{name} failed:\n\n" + "\n\n".join(failed), pytrace=False)
  return [json.loads(report.read_text()) for _, _, report in procs]


@pytest.fixture(scope="module")
def runs(synthetic_dataset, tmp_path_factory):
  """{name: (workdir, per-process reports)}: 1 x 4 devices straight to STEPS; 2 x 2 in two phases.

  The first 2 x 2 phase is stopped by a SIGTERM that only process 1 receives (taking its batch of step 2):
  both processes must save step 2 and exit 143; the second phase resumes there in 'pmap' mode.
  """
  root = tmp_path_factory.mktemp("multihost")
  one, two = root / "one-4", root / "two-2x2"
  out = {}
  # The single process needs no peer, so it runs beside the first 2 x 2 phase.
  single = _start(synthetic_dataset, one, "sharded", STEPS, 1, root / "one-logs")
  out["sharded-2x2"] = two, _finish("2 x 2 sharded, SIGTERM to process 1 at step 2",
                                    _start(synthetic_dataset, two, "sharded", STEPS, 2, root / "sharded-2x2-logs",
                                           sigterm=1), exit_code=128 + signal.SIGTERM)
  out["pmap-2x2"] = two, _finish("2 x 2 pmap, resumed at step 2", _start(synthetic_dataset, two, "pmap", STEPS, 2,
                                                                         root / "pmap-2x2-logs"))
  out["1x4"] = one, _finish("1 x 4 sharded", single)
  return out


def _rows(workdir) -> list[dict]:
  """metrics.jsonl without its timings."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if k != "samples_per_second"} for r in rows]


def _params(workdir) -> dict:
  """The parameters of the run's last checkpoint, loaded as `mmvae analyze` loads them."""
  from flax import nnx
  from mmvae.train import checkpoints
  model, _, _, step = checkpoints.load_run(workdir, which="last", return_step=True)
  assert step == STEPS
  return checkpoints.flatten(nnx.state(model, nnx.Param))


def test_two_processes_train_as_one(runs):
  (one, [single]), (two, reports) = runs["1x4"], runs["pmap-2x2"]
  assert (single["process_count"], single["devices"]) == (1, 4)
  for phase in ("sharded-2x2", "pmap-2x2"):
    assert [(r["process_index"], r["process_count"], r["devices"], r["local_devices"]) for r in runs[phase][1]] == \
        [(0, 2, 4, 2), (1, 2, 4, 2)], phase
  # Process 1 alone received SIGTERM, yet both saved step 2 and exited 143 (neither waited for the other).
  assert [(r["exit"], r["final"]) for r in runs["sharded-2x2"][1]] == [(128 + signal.SIGTERM, None)] * 2
  assert [r["final"]["resumed_from"] for r in reports] == [2, 2]  # both processes restored step 2
  # Both processes hold the same replicated state and saw the same metrics.
  assert reports[0]["final"]["params_sha256"] == reports[1]["final"]["params_sha256"]
  assert reports[0]["final"]["losses"] == reports[1]["final"]["losses"]
  # Equal to float tolerance, not bitwise: the all-reduce across processes (gloo) adds the devices' partial
  # sums in another order than the one inside a process (measured: differences in the last bits, ~1e-7).
  rows_one, rows_two = _rows(one), _rows(two)  # also: process 1 appended no rows of its own
  assert [(r["step"], r["split"]) for r in rows_two] == [(r["step"], r["split"]) for r in rows_one]
  assert [r["step"] for r in rows_two if r["split"] == "train"] == list(range(1, STEPS + 1))
  for a, b in zip(rows_two, rows_one):
    assert sorted(a) == sorted(b)
    keys = sorted(k for k in a if k != "split")
    np.testing.assert_allclose([a[k] for k in keys], [b[k] for k in keys], rtol=1e-5,
                               err_msg=f"{a['split']} row of step {a['step']}: {keys}")
  assert rows_two[-1]["loss"] != rows_two[0]["loss"]  # it did train
  np.testing.assert_allclose(reports[0]["final"]["losses"]["loss"], single["final"]["losses"]["loss"], rtol=1e-5)
  p_one, p_two = _params(one), _params(two)
  assert sorted(p_one) == sorted(p_two)
  for k in p_one:
    np.testing.assert_allclose(p_two[k], p_one[k], rtol=1e-5, atol=1e-6, err_msg=k)
  from mmvae.train import checkpoints
  assert checkpoints.params_sha256(p_two) == reports[0]["final"]["params_sha256"]  # saved what process 0 held


@pytest.mark.parametrize("phase", ["sharded-2x2", "pmap-2x2"])
def test_each_process_feeds_only_its_rows(runs, phase, synthetic_dataset):
  from mmvae import data
  dataset = data.Dataset(synthetic_dataset)
  workdir, reports = runs[phase]
  local = BATCH // 2
  for r in reports:
    p = r["process_index"]
    assert r["local_slice"] == [p * local, (p + 1) * local]
    # The global-batch positions on each of this process's devices, at each step it ran.
    expected = np.arange(p * local, (p + 1) * local).reshape(2, -1).tolist()
    assert len(r["fed"]) == 2 and all(fed == expected for fed in r["fed"]), r["fed"]
    # What they hold: this process's rows of the global batch of each step, which its input pipeline alone read.
    first_step = 0 if phase == "sharded-2x2" else 2
    for step, fed_audio in enumerate(r["audio"], start=first_step):
      whole = data.batch_at(dataset, "train", BATCH, 0, step)["audio"][:, 0]
      np.testing.assert_allclose(np.ravel(fed_audio), whole[p * local:(p + 1) * local], rtol=1e-6)
    # Its input pipeline's state went into each checkpoint it saved, one file per process.
    state = json.loads((workdir / "checkpoints/last" / str(first_step + 2) / "data" / f"process_{p}-of-2.json")
                       .read_text())
    assert state["step"] == first_step + 2


def test_process_zero_alone_writes_the_workdir(runs):
  workdir, _ = runs["pmap-2x2"]
  assert {p.name for p in workdir.iterdir()} - {".lock"} == {"config.json", "run.json", "metrics.jsonl", "final.json",
                                                             "checkpoints", "tb"}
  run = json.loads((workdir / "run.json").read_text())
  assert (run["process_count"], run["devices"], run["parallel"]) == (2, 4, "pmap")
  assert sorted(int(p.name) for p in (workdir / "checkpoints" / "last").iterdir()) == [2, 4]
  assert len(list((workdir / "tb").iterdir())) == 2  # one event file per launch: process 0's
  # Orbax writes the (replicated, host) arrays from the primary process alone.
  assert [p.name for p in workdir.rglob("ocdbt.process_*")] and not list(workdir.rglob("ocdbt.process_1"))
  assert not [p for p in workdir.rglob("*") if "tmp" in p.name.lower()], "a half-written file was left"


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"MMVAE_COORDINATOR": "h:1", "MMVAE_NUM_PROCESSES": "2", "MMVAE_PROCESS_ID": "1"}, ("h:1", 2, 1)),
    ({"JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}, ("h:2", 4, 3)),
    ({"MMVAE_DISTRIBUTED": "1"}, (None, None, None)),  # left to JAX's cluster detection
])
def test_the_launch_is_read_from_the_environment(monkeypatch, env, expected):
  import jax
  from mmvae.train import parallel
  for k in ("MMVAE_COORDINATOR", "MMVAE_NUM_PROCESSES", "MMVAE_PROCESS_ID", "MMVAE_DISTRIBUTED",
            "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(k, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(
      (kw["coordinator_address"], kw["num_processes"], kw["process_id"])))
  assert parallel.maybe_initialize_distributed() == (expected is not None)
  assert calls == ([expected] if expected else [])


def _worker(data_dir: str, workdir: str, mode: str, steps: str, report: str, sigterm: str) -> None:
  """One process of a run: trains, records the batch positions its devices were fed, writes `report`."""
  import jax
  from mmvae import config as config_lib
  from mmvae import data
  from mmvae.train import entry, parallel
  sys.path.insert(0, str(pathlib.Path(__file__).parents[2]))  # tests/
  from slow_batches import tapped
  if int(os.environ["MMVAE_PROCESS_ID"] if "MMVAE_PROCESS_ID" in os.environ else 0) == int(sigterm):
    data.Batches = tapped(lambda i, b: (os.kill(os.getpid(), signal.SIGTERM) if i == 1 else None) or b)
  fed, audio, local_slices = [], [], []
  real_init = parallel.Runner.__init__

  def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    local_slices.append([self.local_slice().start, self.local_slice().stop])
    real_step = self._step

    def on_devices(x) -> list:
      if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:  # sharded: this process's devices' shards
        by_device = {s.device: np.asarray(s.data).tolist() for s in x.addressable_shards}
        return [by_device[d] for d in self.local_devices]
      return np.asarray(x).tolist()  # pmap: this process's part, one row per local device

    def recording(state, batch, positions):
      fed.append(on_devices(positions))
      audio.append(on_devices(batch["audio"][..., 0]))
      return real_step(state, batch, positions)
    self._step = recording

  parallel.Runner.__init__ = init
  config = config_lib.load("synthetic:tiny", OVERRIDES + [f"train.num_steps={steps}", f"parallel={mode}"])
  try:
    final, code = entry.train(config, data_dir, workdir), 0
  except SystemExit as e:
    final, code = None, e.code
  pathlib.Path(report).write_text(json.dumps({
      "process_index": jax.process_index(), "process_count": jax.process_count(), "devices": jax.device_count(),
      "local_devices": jax.local_device_count(), "final": final, "fed": fed, "audio": audio,
      "local_slice": local_slices[0], "exit": code}))
  sys.exit(code)


if __name__ == "__main__":
  _worker(*sys.argv[1:])
