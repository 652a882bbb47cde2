"""The training loop: resume from the workdir, step, validate, checkpoint, log, stop cleanly on NaN or SIGTERM.

Workdir: config.json, run.json, metrics.jsonl (train rows and validation rows with split='validation'),
tb/ (TensorBoard), checkpoints/{last,best}/ (Orbax) and final.json. Rerunning the same command resumes
from the newest checkpoint. Resuming with a config that differs from config.json in anything but the
keys of RESUMABLE_CHANGES raises ValueError (those may change: they alter bookkeeping, not the maths;
`parallel` switches give the same numbers). Multi-host: see mmvae/train/parallel.py.
"""

import datetime
import json
import pathlib
import signal
import time

import jax
import numpy as np
import tqdm

import mmvae
from mmvae import config as config_lib
from mmvae import losses, models, modalities
from mmvae.train import checkpoints as ckpt_lib
from mmvae.train import parallel
from mmvae.train import step as step_lib
from mmvae.train import train_log

RESUMABLE_CHANGES = ("train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.prefetch", "parallel", "analysis")


class NonFiniteError(ValueError):
  """A loss term, gradient or parameter became NaN or Inf; the last good checkpoint is kept."""


def check_config(config) -> None:
  """Raises ValueError naming the key to change when the config cannot train."""
  losses.check_loss_config(config.loss)
  t = config.train
  for key in ("num_steps", "batch_size", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    if t[key] < 1:
      raise ValueError(f"config.train.{key}={t[key]} must be >= 1")
  if not t.learning_rate > 0:
    raise ValueError(f"config.train.learning_rate={t.learning_rate} must be > 0")
  if t.lr_schedule not in ("cosine", "constant"):
    raise ValueError(f"config.train.lr_schedule={t.lr_schedule!r} is unknown; use 'cosine' or 'constant'")
  if config.parallel not in parallel.MODES:
    raise ValueError(f"config.parallel={config.parallel!r} is unknown; use one of {parallel.MODES}")
  parallel.check_batch_size(t.batch_size, jax.device_count())


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _check_resume_config(path: pathlib.Path, config) -> None:
  old = _flat(json.loads(path.read_text()))
  new = _flat(json.loads(json.dumps(config_lib.to_dict(config))))
  changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
             and not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES)]
  if changed:
    diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
    raise ValueError(f"{path.parent} holds a run with a different config ({diffs}); "
                     "resume with the same config or train into a new --workdir")


def _face_float(face):
  from mmvae import data
  face = np.asarray(face)
  if face.ndim == 5:  # [N, K, S, S, C]: the first stored frame of each utterance
    face = face[:, 0]
  return data.face_to_float(face) if face.dtype == np.uint8 else face.astype(np.float32)


class _Validator:
  """Loss terms and cross-modal MRR (both directions) on the validation split."""

  def __init__(self, graphdef, config, dataset):
    self.config = config
    self.arrays = None
    if "validation" in dataset.manifest.get("splits", {}) and dataset.num_examples("validation") > 0:
      arr = dataset.arrays("validation")
      self.arrays = {modalities.AUDIO: np.asarray(arr[modalities.AUDIO], np.float32),
                     modalities.FACE: _face_float(arr[modalities.FACE]), "label": np.asarray(arr["label"])}
    self.fn = step_lib.make_eval_fn(graphdef, config)

  def __call__(self, params) -> dict | None:
    if self.arrays is None:
      return None
    from mmvae.analysis import retrieval  # analysis code stays off the import path of training
    n = len(self.arrays["label"])
    size = min(self.config.train.batch_size, n)
    totals, means, batches = {}, {m: [] for m in modalities.MODALITIES}, 0
    for start in range(0, n, size):
      idx = np.arange(start, start + size) % n  # the last chunk wraps around so every chunk has one shape
      batch = {m: self.arrays[m][idx] for m in modalities.MODALITIES}
      metrics, mu = self.fn(params, batch, np.arange(size, dtype=np.int32))
      keep = min(size, n - start)
      for m in modalities.MODALITIES:
        means[m].append(np.asarray(mu[m])[:keep])
      if keep == size:  # loss terms are batch means: only full, unrepeated chunks count
        for k, v in jax.device_get(metrics).items():
          totals[k] = totals.get(k, 0.0) + float(v)
        batches += 1
    row = {k: v / batches for k, v in totals.items()}
    mu = {m: np.concatenate(means[m]) for m in modalities.MODALITIES}
    labels = self.arrays["label"]
    a, v = modalities.AUDIO, modalities.FACE
    row["mrr_audio_to_face"] = float(retrieval.mean_reciprocal_rank(mu[a], mu[v], labels, labels, score="cosine"))
    row["mrr_face_to_audio"] = float(retrieval.mean_reciprocal_rank(mu[v], mu[a], labels, labels, score="cosine"))
    return row


def _nonfinite(metrics: dict) -> list[str]:
  """Names of the non-finite numbers, loss terms first (the total and the gradient norm follow from them)."""
  terms = sorted(k for k in metrics if k not in ("loss", "grad_norm")) + ["loss", "grad_norm"]
  return [k for k in terms if k in metrics and not np.isfinite(metrics[k])]


def train(config, data_dir, workdir) -> dict:
  """Trains (or resumes) the run in `workdir` on the prepared dataset `data_dir`; returns final.json's contents."""
  from mmvae import data
  parallel.maybe_initialize_distributed()
  check_config(config)
  dataset = data.Dataset(data_dir)
  dataset.check_config(config)
  shapes = {k: tuple(v) for k, v in dataset.input_shapes().items()}
  t = config.train
  if dataset.num_examples("train") < 1:
    raise ValueError(f"{data_dir} has no training examples; prepare a dataset with a train split")

  workdir = pathlib.Path(workdir).absolute()
  log = train_log.RunLog(workdir, enabled=jax.process_index() == 0)
  if (workdir / "config.json").is_file():
    _check_resume_config(workdir / "config.json", config)
  log.write_json("config.json", config_lib.to_dict(config))
  log.write_json("run.json", {
      "data_dir": str(pathlib.Path(data_dir).absolute()), "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind, "process_count": jax.process_count(),
      "mmvae": mmvae.__version__, "jax": jax.__version__, "parallel": config.parallel,
      "input_shapes": {k: list(v) for k, v in shapes.items()},
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})

  model = models.build_model(config, shapes, seed=t.seed)
  tx = step_lib.make_optimizer(t)
  schedule = step_lib.make_schedule(t)
  graphdef, state = step_lib.init_state(model, tx)
  host_template = jax.tree.map(np.asarray, state)
  del model
  ckpts = ckpt_lib.Checkpoints(workdir, keep=t.keep_checkpoints)
  restored = ckpts.restore(host_template)
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
  validator = _Validator(graphdef, config, dataset)

  stop = {"signal": None}
  previous = signal.getsignal(signal.SIGTERM)
  signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
  batches = data.batches(dataset, "train", t.batch_size, seed=t.seed, start_step=start, num_devices=1,
                         prefetch=t.prefetch)
  last_metrics, last_val, wait_s, timed_from, timed_steps = {}, None, 0.0, None, 0
  t_start = time.perf_counter()
  bar = tqdm.tqdm(total=t.num_steps, initial=start, desc=f"train {config.name}", unit="step",
                  disable=jax.process_index() != 0, dynamic_ncols=True)

  def finish(step, metrics):
    """Fetches one step's metrics, stops on NaN/Inf, logs."""
    nonlocal last_metrics
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    bad = _nonfinite(host)
    if bad:
      kept = ckpts.latest_step()
      raise NonFiniteError(
          f"non-finite loss at step {step}: {', '.join(f'{k}={host[k]}' for k in bad)}; stopped without "
          f"saving. The last good checkpoint "
          f"(step {kept}) is kept in {workdir / 'checkpoints'}; lower config.train.learning_rate or check the data")
    last_metrics = host
    if step % t.log_every == 0 or step == t.num_steps:
      elapsed = time.perf_counter() - t_start
      rate = (step - start) * t.batch_size / max(elapsed, 1e-9)
      log.row({"step": step, "split": "train", **host, "learning_rate": float(schedule(step - 1)),
               "samples_per_second": rate})
      bar.set_postfix(loss=f"{host['loss']:.4g}", samples_per_s=f"{rate:.4g}")

  try:
    pending = None
    for step in range(start, t.num_steps):
      t0 = time.perf_counter()
      batch = next(batches)
      wait_s += time.perf_counter() - t0
      dev_state, metrics = runner.step(dev_state, batch)
      if pending is not None:  # fetch the previous step's numbers while this one runs
        finish(*pending)
      pending = (step + 1, metrics)
      done = step + 1
      if step == start:  # the first step of a process includes compilation: time the rest
        jax.block_until_ready(metrics)
        timed_from, wait_s = time.perf_counter(), 0.0
      else:
        timed_steps += 1
      bar.update(1)
      due_eval = done % t.eval_every == 0 or done == t.num_steps
      due_ckpt = done % t.checkpoint_every == 0 or done == t.num_steps or stop["signal"] is not None
      if not (due_eval or due_ckpt):
        continue
      finish(*pending)
      pending = None
      host = runner.host_state(dev_state)
      bad = [k for k, v in ckpt_lib.flatten(host["params"]).items() if not np.all(np.isfinite(v))]
      if bad:
        raise NonFiniteError(f"parameter {bad[0]} became non-finite after step {done} (loss terms were finite); "
                             f"stopped without saving; the last good checkpoint (step {ckpts.latest_step()}) is "
                             "kept; lower config.train.learning_rate or config.train.grad_clip")
      val_score = None
      if due_eval:
        last_val = validator(host["params"])
        if last_val is not None:
          log.row({"step": done, "split": "validation", **last_val})
          val_score = 0.5 * (last_val["mrr_audio_to_face"] + last_val["mrr_face_to_audio"])
      if due_ckpt:
        ckpts.save(done, host, val_score=val_score)
      if stop["signal"] is not None:
        bar.close()
        print(f"mmvae train: received SIGTERM; saved step {done} to {workdir / 'checkpoints'}; "
              "rerun the same command to resume")
        raise SystemExit(128 + signal.SIGTERM)
    if pending is not None:
      finish(*pending)
  finally:
    signal.signal(signal.SIGTERM, previous)
    bar.close()
    log.close()
    close = getattr(batches, "close", None)
    if close is not None:
      close()

  host = runner.host_state(dev_state)
  if restored is not None and start == t.num_steps:
    last_val = validator(host["params"])
  elapsed = time.perf_counter() - t_start
  timed = time.perf_counter() - timed_from if timed_from is not None else 0.0
  final = {
      "step": int(host["step"]), "losses": last_metrics, "validation": last_val,
      "elapsed_seconds": elapsed,
      "samples_per_second": timed_steps * t.batch_size / timed if timed_steps and timed > 0 else None,
      "data_wait_fraction": wait_s / timed if timed_steps and timed > 0 else None,
      "params_sha256": ckpt_lib.params_sha256(host["params"]),
      "resumed_from": start, "best_step": ckpts.best.best_step(), "devices": jax.device_count(),
      "parallel": config.parallel}
  ckpts.close()
  log.write_json("final.json", final)
  return final
