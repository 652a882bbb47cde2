"""The training loop: resume from the workdir, step, validate, checkpoint, log, stop cleanly on NaN, SIGTERM or SIGINT.

Workdir: config.json, run.json, metrics.jsonl (train rows and validation rows with split='validation'),
tb/ (TensorBoard), checkpoints/{last,best}/ (Orbax) and final.json. Rerunning the same command resumes
from the newest checkpoint. Resuming with a config that differs from config.json in anything but the
keys of RESUMABLE_CHANGES raises ValueError (those may change: they alter bookkeeping, not the maths;
`parallel` switches give the same numbers; train.num_steps only under a constant schedule, since the
cosine schedule decays to zero at num_steps). One trainer per workdir (WORKDIR/.lock); a resume must
use the same dataset (by fingerprint) and --from; config.json and run.json are written only once the
config has built a model, so a rejected config never blocks the corrected rerun. See resume.py.
Multi-host: see mmvae/train/parallel.py.
"""

import datetime
import itertools
import json
import math
import os
import pathlib
import signal
import time

import jax
import numpy as np

from mmvae import config as config_lib
from mmvae import inference, progress, version, zoo
from mmvae.metrics import retrieval
from mmvae.train import checkpoints as ckpt_lib
from mmvae.train import parallel
from mmvae.train import resume
from mmvae.train import step as step_lib
from mmvae.train import train_log

RESUMABLE_CHANGES = ("train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.prefetch", "train.data_workers", "train.steps_per_dispatch",
                     "train.log_images", "train.wandb_project", "train.wandb_mode", "parallel", "analysis")


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # exit 128 + the signal, with the current step saved


class NonFiniteError(ValueError):
  """A loss term, gradient or parameter became NaN or Inf; the last good checkpoint is kept."""


def check_config(config) -> None:
  """Raises ValueError naming the key to change when the config cannot train."""
  zoo.of(config).check_config(config)
  t = config.train
  for key in ("num_steps", "batch_size", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    if t[key] < 1:
      raise ValueError(f"config.train.{key}={t[key]} must be >= 1")
  k = t.steps_per_dispatch
  if k != "auto" and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
    raise ValueError(f"config.train.steps_per_dispatch={k!r} must be an integer >= 1 or 'auto'")
  if not t.learning_rate > 0:
    raise ValueError(f"config.train.learning_rate={t.learning_rate} must be > 0")
  step_lib.check_schedule(t)
  step_lib.check_augment(t)
  if t.select_by not in SELECT_BY:
    raise ValueError(f"config.train.select_by={t.select_by!r} is unknown; use one of {SELECT_BY}")
  if config.parallel not in parallel.MODES:
    raise ValueError(f"config.parallel={config.parallel!r} is unknown; use one of {parallel.MODES}")
  parallel.check_batch_size(t.batch_size, jax.device_count())


def available_memory() -> int | None:
  """Bytes of memory this process can still take: MemAvailable, capped by a cgroup limit; None where unknown."""
  try:
    meminfo = pathlib.Path("/proc/meminfo").read_text()
    free = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemAvailable:"))) * 1024
  except (OSError, StopIteration, ValueError, IndexError):
    try:
      free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
      return None
  # A container's limit is not in /proc/meminfo, which shows the whole machine.
  cgroup = pathlib.Path("/sys/fs/cgroup")
  for limit, used in (("memory.max", "memory.current"),
                      ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
    try:
      cap = int((cgroup / limit).read_text()) - int((cgroup / used).read_text())
    except (OSError, ValueError):  # no such cgroup file, or "max": unlimited
      continue
    free = min(free, max(cap, 0))
  return free


def example_bytes(specs: dict) -> int:
  """Bytes one training example occupies while its batch is built: its stored arrays plus its model inputs."""
  total = 0
  for m in specs.values():
    stored = np.zeros((1, *m.shape), m.dtype)
    model_input = np.asarray(m.kind_module.inputs(m, stored, np.zeros(1, np.int64)))
    # Both live at once while a batch is assembled, unless the input is a view of the stored array.
    total += stored.nbytes + (0 if np.shares_memory(model_input, stored) else model_input.nbytes)
  return total + np.dtype(np.int32).itemsize  # the label


def check_batch_memory(batch_size: int, specs: dict, available=None) -> None:
  """ValueError when one batch of the run's modalities cannot fit in this host's available memory.

  Checked before anything is allocated: a batch that cannot fit otherwise ends in a long MemoryError or the kernel's
  OOM killer. The estimate is a lower bound (prefetched batches and device copies add more), so the check never
  refuses a batch that fits.
  """
  per_example = example_bytes(specs)
  hosts = jax.process_count()
  need = -(-batch_size // hosts) * per_example  # each process reads its rows of the global batch
  free = available_memory() if available is None else available
  if free is not None and need > free:
    share = f"this host's 1/{hosts} of " if hosts > 1 else ""
    raise ValueError(f"config.train.batch_size={batch_size}: {share}one batch takes about {need / 2**30:.1f} GiB "
                     f"(stored examples and model inputs), more than the {free / 2**30:.1f} GiB of memory available; "
                     "lower it")


def _check_resume_config(path: pathlib.Path, config, step=None) -> None:
  new = config_lib.flat(json.loads(json.dumps(config_lib.to_dict(config))))
  old = config_lib.flat(config_lib.stored(path))  # refused in one line when an older mmvae wrote it
  # The cosine schedule decays to zero at num_steps: another length would change the rate of every later step.
  free = [r for r in RESUMABLE_CHANGES if r != "train.num_steps" or config.train.lr_schedule != "cosine"]
  changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
             and not any(k == r or k.startswith(r + ".") for r in free)]
  if changed:
    diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
    why = (" (the cosine learning-rate schedule ends at train.num_steps, so its length cannot change on resume)"
           if "train.num_steps" in changed else "")
    where = path.parent / "checkpoints" / "last" / (str(step) if step is not None else "N")
    raise ValueError(f"{path.parent} holds a run with a different config ({diffs}){why}; resume with the same "
                     f"config, or start a new run from its checkpoint with the new settings: mmvae train --from "
                     f"{where} --workdir NEW_WORKDIR ...")


SELECT_BY = ("cross_mrr", "loss")

# train.steps_per_dispatch='auto' (the default): the block length follows from the config alone (the step's FLOPs
# from XLA's cost analysis, the batch's bytes, the eval and checkpoint spacing), never from timing, so one config
# trains the same numbers on every run of a platform, and a resumed run dispatches the same blocks as one never
# stopped.
AUTO_DISPATCH_FLOP = {"cpu": 5e9}  # per dispatch: about 100 ms of a CPU's step (the per-dispatch host work ~3 ms)
AUTO_DISPATCH_FLOP_ACCELERATOR = 5e12  # GPU and TPU: small steps there are bound by launches, not FLOPs
AUTO_MAX_STEPS = 100  # the longest block (each holds that many batches on the host and the devices)
AUTO_MAX_BYTES = 256 * 2**20  # and at most this many bytes of batches
AUTO_MIN_RUN = 500  # runs of fewer steps keep one a dispatch: the lowering and the block's compilation would not pay


def auto_steps_per_dispatch(step_flop: float, batch_bytes: int, period: int, num_steps: int, platform: str) -> int:
  """Steps per dispatch for 'auto': the smallest divisor of `period` whose block holds the platform's
  AUTO_DISPATCH_FLOP, within AUTO_MAX_STEPS and AUTO_MAX_BYTES (the largest allowed divisor when none does).

  step_flop, batch_bytes: one global step's FLOPs and batch; period: gcd(eval_every, checkpoint_every), which
  every block length divides, so no block crosses an eval or checkpoint step; num_steps: the run's length.
  1 when one step already holds the target or the run is shorter than AUTO_MIN_RUN.
  """
  target = AUTO_DISPATCH_FLOP.get(platform, AUTO_DISPATCH_FLOP_ACCELERATOR)
  want = math.ceil(target / max(step_flop, 1.0))
  cap = min(AUTO_MAX_STEPS, AUTO_MAX_BYTES // max(batch_bytes, 1), period)
  if want < 2 or cap < 2 or num_steps < AUTO_MIN_RUN:
    return 1
  divisors = [d for d in range(1, cap + 1) if period % d == 0]
  return min((d for d in divisors if d >= want), default=divisors[-1])


def auto_steps_for(config, runner, dev_state, batch) -> int:
  """'auto''s block length for `config` on `runner`'s platform, `batch` being one of its global batches: the
  step is lowered (Runner.step_flop) only for runs of AUTO_MIN_RUN steps or more, where blocks can pay."""
  t = config.train
  flop, nbytes = runner.step_flop(dev_state, batch) if t.num_steps >= AUTO_MIN_RUN else (0.0, 0)
  return auto_steps_per_dispatch(flop, nbytes, math.gcd(t.eval_every, t.checkpoint_every), t.num_steps,
                                 runner.devices[0].platform)


class _Validator:
  """Loss terms (first stored frame) and cross-modal MRR (every ordered pair, all K frames) on the validation split.

  The MRR goes through `inference.encode_split` and the retrieval metric of `mmvae analyze`, so the
  best checkpoint is chosen by the number the report shows for the validation split.
  """

  def __init__(self, graphdef, config, dataset, specs: dict, can_generate: bool = False):
    from mmvae import data
    self.config, self.graphdef, self.specs = config, graphdef, specs
    self.arrays, self.latents = None, None
    # Image modalities to show generated (train.log_images examples), when the model has a decoder.
    self.shown = [g for g, m in specs.items() if m.kind == "image"] if can_generate else []
    if "validation" in dataset.manifest.get("splits", {}) and dataset.num_examples("validation") > 0:
      self.arrays = dataset.arrays("validation")
      # Model inputs of every example (its first stored frame) and labels: the loss terms' batches and images.
      self.inputs = {**data.model_inputs(specs, self.arrays), "label": np.asarray(self.arrays["label"], np.int32)}
    self.fn = step_lib.make_eval_fn(graphdef, config)

  def __call__(self, params) -> dict | None:
    if self.arrays is None:
      return None
    n = len(self.inputs["label"])
    size = min(self.config.train.batch_size, n)
    totals, batches = {}, 0
    for start in range(0, n - size + 1, size):  # loss terms are batch means: full chunks only
      idx = np.arange(start, start + size)
      metrics, _ = self.fn(params, {k: v[idx] for k, v in self.inputs.items()}, np.arange(size, dtype=np.int32))
      for k, v in jax.device_get(metrics).items():
        totals[k] = totals.get(k, 0.0) + float(v)
      batches += 1
    row = {k: v / batches for k, v in totals.items()}
    lat = self.latents = inference.encode_split(inference.params_encoder(self.graphdef, params), self.arrays,
                                                self.specs)
    labels = self.inputs["label"]
    for q, g in itertools.permutations(self.specs, 2):
      row[f"mrr_{q}_to_{g}"] = float(retrieval.mean_reciprocal_rank(lat[f"{q}_mu"], lat[f"{g}_mu"], labels, labels))
    return row

  def warm(self, params) -> None:
    """One validation (and its images), unlogged, before the first step: its compilation and a fault in the
    validation data come at start-up instead of after eval_every steps, and stay out of the timed steps."""
    if self(params) is not None:
      self.images(params)

  def images(self, params) -> dict:
    """{'<g>_generated': grid} for each image modality g: the first train.log_images validation examples' stored
    first frame (top row), then g decoded from each modality's posterior means in turn (rows in `specs` order,
    g itself giving the reconstruction). Uses the latents of the last call; {} when there is nothing to show."""
    n = min(int(self.config.train.log_images), len(self.inputs["label"])) if self.latents is not None else 0
    if n < 1 or not self.shown:
      return {}
    decode = inference.params_decoder(self.graphdef, params)
    decoded = {q: decode(np.asarray(self.latents[f"{q}_mu"][:n], np.float32)) for q in self.specs}
    out = {}
    for g in self.shown:
      rows = [self.inputs[g][:n]] + [self.specs[g].kind_module.to_data(np.asarray(decoded[q][g])) for q in self.specs]
      out[f"{g}_generated"] = train_log.image_grid(rows)
    return out

  def score(self, row: dict) -> float:
    """Higher is better: the selection metric of config.train.select_by."""
    if self.config.train.select_by == "loss":
      return -row["loss"]
    cross = [row[f"mrr_{q}_to_{g}"] for q, g in itertools.permutations(self.specs, 2)]
    return sum(cross) / len(cross)


def _any_process(signum: int) -> int:
  """The highest of `signum` over all processes (one all-gather per dispatch in a multi-process run; none otherwise)."""
  if jax.process_count() == 1:
    return signum
  from jax.experimental import multihost_utils
  return int(np.max(multihost_utils.process_allgather(np.array([signum], np.int32))))


def _min_over_processes(value: int) -> int:
  """The lowest of `value` over all processes (one all-gather in a multi-process run; none otherwise)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  return int(np.min(multihost_utils.process_allgather(np.array([value], np.int32))))


def _nonfinite(metrics: dict) -> list[str]:
  """Names of the non-finite numbers, loss terms first (the total and the gradient norm follow from them)."""
  terms = sorted(k for k in metrics if k not in ("loss", "grad_norm")) + ["loss", "grad_norm"]
  return [k for k in terms if k in metrics and not np.isfinite(metrics[k])]


def run(config, data_dir, workdir, allow_data_change: bool = False, init_from=None) -> dict:
  """One run (no stage plan) in `workdir`, created and locked; returns final.json's contents. Callers: entry.train.

  allow_data_change: resume on a dataset other than the one the run started on (recorded in run.json).
  init_from: a kept checkpoint (WORKDIR/checkpoints/last/N) whose parameters start a new run; the
  optimizer state and the step start fresh, so the config's whole schedule runs.
  """
  workdir = resume.checked_workdir(workdir)
  with resume.lock(workdir, owner=jax.process_index() == 0):
    return _train(config, data_dir, workdir, allow_data_change, init_from)


def _train(config, data_dir, workdir: pathlib.Path, allow_data_change: bool, init_from) -> dict:
  from mmvae import data
  dataset, specs = _open_dataset(config, data_dir)
  t = config.train
  log = train_log.RunLog(workdir, enabled=jax.process_index() == 0, wandb_project=t.wandb_project,
                         wandb_mode=t.wandb_mode, config=config_lib.to_dict(config), name=config.name)
  graphdef, tx, host_template, fresh_ok, can_generate = _build(config, dataset, specs)
  ckpts = ckpt_lib.Checkpoints(workdir, keep=t.keep_checkpoints)
  parallel.on_lost_process(lambda: ckpts.last_good)  # named if another process of the run is lost
  restored, host_template = _restore(config, dataset, specs, workdir, log, ckpts, host_template, fresh_ok,
                                     allow_data_change, init_from)
  start = int(restored["step"]) if restored is not None else 0
  if start > t.num_steps:
    raise ValueError(f"{workdir} already holds step {start} > config.train.num_steps={t.num_steps}")
  if start == t.num_steps and (workdir / "final.json").is_file():
    ckpts.close()
    print(f"mmvae train: {workdir} already finished step {start}; returning its final.json")
    return json.loads((workdir / "final.json").read_text())
  log.truncate_after(start)  # rows a killed run logged after its last checkpoint are redone
  runner = parallel.Runner(graphdef, tx, config, config.parallel)
  dev_state = runner.put_state(restored if restored is not None else host_template)
  validator = _Validator(graphdef, config, dataset, specs, can_generate)
  if start < t.num_steps:
    validator.warm((restored if restored is not None else host_template)["params"])
  batches = data.Batches(dataset, "train", t.batch_size, seed=t.seed, start_step=start, prefetch=t.prefetch,
                         pairing=config.data.pairing, modality_names=tuple(specs), rows=runner.local_slice(),
                         workers=data.worker_count(t.data_workers, dataset, "train"))
  if restored is not None and ckpts.restore_batches(batches, start) and batches.step != start:
    batches.close()
    raise ValueError(f"the input pipeline state saved with step {start} in {workdir / 'checkpoints'} is at step "
                     f"{batches.step}; the checkpoint is inconsistent: train into a new --workdir")
  loop = _Loop(config, workdir, log, ckpts, runner, validator, batches, start)
  dev_state = loop.run(dev_state)
  host = runner.host_state(dev_state)
  if restored is not None and start == t.num_steps:  # a finished run whose final.json was lost: validate again
    loop.last_val = validator(host["params"])
  final = loop.final(host)
  ckpts.close()
  log.write_json("final.json", final)
  return final


def _open_dataset(config, data_dir):
  """(dataset, {name: Modality}) after every check that needs no model; a damaged shard is found before any write."""
  from mmvae import data
  check_config(config)
  dataset = data.Dataset(data_dir)
  dataset.check_config(config)
  specs = dataset.modalities(config.data.get("modalities", ()))
  config_lib.check_modality_keys(config, specs)
  check_batch_memory(config.train.batch_size, specs)
  if dataset.num_examples("train") < 1:
    raise ValueError(f"{data_dir} has no training examples; prepare a dataset with a train split")
  # Read before anything is written, so a damaged shard leaves the workdir as it was: the splits this process
  # holds whole anyway (the validator's; train's when no worker process reads it), else checked without decoding.
  for split in ("train", "validation"):
    if split in dataset.splits and dataset.in_memory(split):
      if split == "train" and data.worker_count(config.train.data_workers, dataset, split):
        dataset.verify(split)
      else:
        dataset.arrays(split)
  return dataset, specs


def _build(config, dataset, specs: dict):
  """(graphdef, optimizer, host state template, parameters new to a --from checkpoint may hold, can_generate)."""
  t = config.train
  model = zoo.of(config).build(config, specs, seed=t.seed, num_classes=len(dataset.manifest["identities"]))
  tx = step_lib.make_optimizer(t, model)
  graphdef, state = step_lib.init_state(model, tx)
  mask = step_lib.trainable_mask(graphdef, state["params"])
  # A staged model's trained parameters may be new to the --from checkpoint (a modality added to a space).
  fresh_ok = {k for k, v in ckpt_lib.flatten(mask).items() if v} if mask is not None else set()
  return graphdef, tx, jax.tree.map(np.asarray, state), fresh_ok, bool(getattr(model, "can_generate", False))


def _restore(config, dataset, specs: dict, workdir: pathlib.Path, log, ckpts, host_template, fresh_ok,
             allow_data_change: bool, init_from):
  """(restored state or None, host template) of a resume or a new run, then config.json and run.json written."""
  history = {}
  if ckpts.latest_step() is not None:  # a resume: only the run that was started may continue
    if (workdir / "config.json").is_file():
      _check_resume_config(workdir / "config.json", config, ckpts.latest_step())
    history = resume.check_resume(workdir, dataset, allow_data_change, init_from)
    restored = ckpts.restore(host_template, set_aside=True)
  else:  # nothing trained yet: whatever a failed earlier attempt wrote is replaced
    restored = None
    if init_from:
      host_template = dict(host_template, params=ckpt_lib.load_params(init_from, host_template["params"], fresh_ok))
      history = {"init_from": str(pathlib.Path(init_from).absolute())}
  # Written only now: a config that cannot build a model, or a refused resume, leaves them as they were.
  log.write_json("config.json", config_lib.to_dict(config))
  log.write_json("run.json", {
      **resume.dataset_record(dataset), **history, "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind, "process_count": jax.process_count(),
      "mmvae": version.__version__, "jax": jax.__version__, "parallel": config.parallel,
      "modalities": [m.to_dict() for m in specs.values()], "num_classes": len(dataset.manifest["identities"]),
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
  return restored, host_template


class _Loop:
  """Steps start+1..num_steps: dispatch, fetch each dispatch's metrics while the next runs, validate, checkpoint.

  SIGTERM (a preempted job) and SIGINT (Ctrl-C) stop it after the current dispatch, with that step saved.
  """

  def __init__(self, config, workdir: pathlib.Path, log, ckpts, runner, validator, batches, start: int):
    self.config, self.t, self.workdir, self.log, self.ckpts = config, config.train, workdir, log, ckpts
    self.runner, self.validator, self.batches, self.start = runner, validator, batches, start
    # Evaluated for each logged row: one compiled call, not a dozen op-by-op dispatches (each compiled on first use).
    self.schedule = jax.jit(step_lib.make_schedule(config.train))
    self.last_metrics, self.last_val = {}, None
    self.wait_s, self.timed_from, self.timed_steps = 0.0, None, 0
    # Steps per dispatch: the config's integer, or None until 'auto' has lowered the first step.
    auto = self.t.get("steps_per_dispatch", "auto") == "auto"
    self.per_dispatch = None if auto else int(self.t.get("steps_per_dispatch", 1))
    self.held = []  # batches read ahead of their dispatch ('auto' lowers the step with the first)
    self.excluded_s = 0.0
    self.signal = 0  # the stop signal this process received
    self.t_start = time.perf_counter()
    self.bar = progress.bar(total=self.t.num_steps, initial=start, desc=f"train {config.name}", unit="step",
                            disable=jax.process_index() != 0, dynamic_ncols=True)

  def run(self, dev_state):
    """Trains to train.num_steps and returns the device state; SystemExit(128 + signal) once a stop is saved."""
    t = self.t
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
      signal.signal(s, self._on_signal)
    try:
      pending, step, compiled = None, self.start, set()
      if self.per_dispatch is None and step < t.num_steps:
        self._choose_auto(dev_state)
      while step < t.num_steps:
        k = self._block_length(step)
        # The first dispatch of each length compiles: waited for alone, and left out of the timed steps
        # (final.json's samples/s).
        compiling = k not in compiled
        if compiling and pending is not None:
          jax.block_until_ready(pending[1])
        t0 = time.perf_counter()
        block = [self.held.pop(0) if self.held else next(self.batches) for _ in range(k)]
        fetch_s = time.perf_counter() - t0
        self.wait_s += fetch_s
        dev_state, metrics = self.runner.steps(dev_state, block) if k > 1 else self.runner.step(dev_state, block[0])
        if compiling:
          jax.block_until_ready(metrics)
          compiled.add(k)
          self._compiled_dispatch(step, time.perf_counter() - t0, fetch_s)
        if pending is not None:  # fetch the previous dispatch's numbers while this one runs
          self._fetch(*pending)
        pending = (step + 1, metrics, k)
        if step == self.start:  # the first dispatch of a process includes compilation: time the rest
          self.timed_from, self.wait_s = time.perf_counter(), 0.0
        elif not compiling:
          self.timed_steps += k
        step = done = step + k
        self.bar.update(k)
        stopping = _any_process(self.signal)  # every process saves the same step, then exits
        due_eval = done % t.eval_every == 0 or done == t.num_steps
        due_ckpt = done % t.checkpoint_every == 0 or done == t.num_steps or stopping
        if not (due_eval or due_ckpt):
          continue
        self._fetch(*pending)
        pending = None
        self._validate_and_save(self.runner.host_state(dev_state), done, due_eval, due_ckpt)
        if stopping:
          self._stop(done, stopping)
      if pending is not None:
        self._fetch(*pending)
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
      self.bar.close()
      self.log.close()
      self.batches.close()
    return dev_state

  def _on_signal(self, signum, frame) -> None:
    self.signal = signum

  def _compiled_dispatch(self, step: int, elapsed_s: float, fetch_s: float) -> None:
    """Books a compiling dispatch, which was waited for: left out of the timing (the first is before timed_from)."""
    if step != self.start:
      self.excluded_s += elapsed_s
      self.wait_s -= fetch_s

  def _choose_auto(self, dev_state) -> None:
    """'auto''s block length, from the first batch (held for the first dispatch) and the lowered step."""
    self.held.append(next(self.batches))
    k = auto_steps_for(self.config, self.runner, dev_state, self.held[0])
    self.per_dispatch = _min_over_processes(k)  # every process must dispatch the same programs

  def _block_length(self, step: int) -> int:
    """steps_per_dispatch steps when they end at or before the next eval, checkpoint or the last step; else 1.
    A function of the step alone, so a resumed run dispatches the same blocks as one never stopped."""
    t = self.t
    k = self.per_dispatch or 1
    boundary = min(t.num_steps, *((step // every + 1) * every for every in (t.eval_every, t.checkpoint_every)))
    return k if step + k <= boundary else 1

  def _fetch(self, first: int, metrics, k: int) -> None:
    """Fetches the metrics of steps first..first+k-1 (one fetch), stops on NaN/Inf at the first bad step, logs."""
    t = self.t
    fetched = jax.device_get(metrics)
    elapsed = time.perf_counter() - self.t_start
    for i in range(k):
      step = first + i
      host = {name: float(np.ravel(v)[i]) for name, v in fetched.items()}  # a block's: [k]; one step's: a scalar
      bad = _nonfinite(host)
      if bad:
        raise NonFiniteError(
            f"non-finite loss at step {step}: {', '.join(f'{n}={host[n]}' for n in bad)}; stopped without "
            f"saving; {resume.restart_hint(self.workdir, self.ckpts.last_good)}; or check the data")
      self.last_metrics = host
      if step % t.log_every == 0 or step == t.num_steps:
        rate = (first + k - 1 - self.start) * t.batch_size / max(elapsed, 1e-9)
        self.log.row({"step": step, "split": "train", **host, "learning_rate": float(self.schedule(step - 1)),
                      "samples_per_second": rate})
        progress.set_fields(self.bar, loss=f"{host['loss']:.4g}", samples_per_s=f"{rate:.4g}")

  def _validate_and_save(self, host, done: int, due_eval: bool, due_ckpt: bool) -> None:
    """Refuses non-finite parameters, validates when due (logged, shown on the bar), checkpoints when due."""
    bad = [k for k, v in ckpt_lib.flatten(host["params"]).items() if not np.all(np.isfinite(v))]
    if bad:
      raise NonFiniteError(f"parameter {bad[0]} became non-finite after step {done} (loss terms were finite); "
                           f"stopped without saving; {resume.restart_hint(self.workdir, self.ckpts.last_good)} "
                           "(or set config.train.grad_clip)")
    val_score = None
    if due_eval:
      self.last_val = self.validator(host["params"])
      if self.last_val is not None:
        self.log.row({"step": done, "split": "validation", **self.last_val})
        self.log.images(done, self.validator.images(host["params"]))
        val_score = self.validator.score(self.last_val)
        # The bar shows the selection score of the last validation (train.select_by: mean cross MRR, or loss).
        shown = ("val_loss", -val_score) if self.t.select_by == "loss" else ("val_mrr", val_score)
        progress.set_fields(self.bar, **{shown[0]: f"{shown[1]:.4g}"})
    if due_ckpt:
      self.ckpts.save(done, host, val_score=val_score, batches=self.batches)

  def _stop(self, done: int, stopping: int) -> None:
    """Says which signal stopped the run at the saved step `done`, then exits with 128 + that signal."""
    self.bar.close()
    who = (f"received {signal.Signals(self.signal).name}" if self.signal
           else f"another process received {signal.Signals(stopping).name}")
    print(f"mmvae train: {who}; saved step {done} to {self.workdir / 'checkpoints'}; "
          "rerun the same command to resume", flush=True)
    raise SystemExit(128 + stopping)

  def final(self, host) -> dict:
    """final.json's contents for the trained host state."""
    t = self.t
    elapsed = time.perf_counter() - self.t_start
    timed = time.perf_counter() - self.timed_from - self.excluded_s if self.timed_from is not None else 0.0
    return {
        "step": int(host["step"]), "losses": self.last_metrics, "validation": self.last_val,
        "elapsed_seconds": elapsed,
        "samples_per_second": self.timed_steps * t.batch_size / timed if self.timed_steps and timed > 0 else None,
        "data_wait_fraction": self.wait_s / timed if self.timed_steps and timed > 0 else None,
        "params_sha256": ckpt_lib.params_sha256(host["params"]),
        "steps_per_dispatch": self.per_dispatch or 1,  # the block length used ('auto': the one it chose)
        "resumed_from": self.start, "best_step": self.ckpts.best.best_step(), "devices": jax.device_count(),
        "parallel": self.config.parallel}
