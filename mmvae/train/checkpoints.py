"""Orbax checkpoints of the train state (last K, and best by validation cross-modal MRR) and loading a finished run.

Every checkpoint carries the SHA-256 of its flattened state (Orbax custom metadata, written with the
step). Restoring verifies it: a damaged checkpoint (flipped bytes, truncated files, unreadable
metadata) is skipped with a one-line warning for the newest intact one. A save the file system refuses
(a full disk, a read-only folder) removes its unfinished step folders and raises one line
(write_errors.WriteError); the earlier steps stay as they were.

Multi-host: every process calls the same methods in the same order (Orbax's save is collective: process
0 writes, the others wait at its barriers); all of them read the checkpoints from the shared workdir.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import pathlib
import shutil
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from grain import checkpoint as grain_checkpoint
from jax.experimental import multihost_utils

from mmvae import write_errors

LAST, BEST = "last", "best"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # an unfinished step folder, left by a save cut short
DATA = "data"  # the item of a `last` checkpoint holding the input pipeline's state (beside "default", the train state)
DAMAGED = "damaged"  # checkpoints/damaged/: damaged steps set aside by a resuming trainer, kept for inspection


def param_name(path) -> str:
  """A tree path as the dotted name checkpoints store it under (e.g. 'encoders.image.fc1.kernel')."""
  parts = []
  for p in path:
    for attr in ("key", "name", "idx"):
      if hasattr(p, attr):
        parts.append(str(getattr(p, attr)))
        break
  return ".".join(parts)


def flatten(tree) -> dict:
  """{dotted path: array}: a flat dict of plain arrays that Orbax stores without knowing our classes."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  flat = {param_name(path): np.asarray(leaf) for path, leaf in leaves}
  if len(flat) != len(leaves):
    raise ValueError("two state leaves share a checkpoint name; rename the modules")
  return flat


def unflatten(template, flat: dict, fresh_ok=()):
  """The tree of `template` (e.g. a freshly initialised state) holding the arrays of `flat`.

  fresh_ok: names that `flat` may lack; they keep the template's values (a staged model's new modality).
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  missing = [param_name(p) for p, _ in leaves if param_name(p) not in flat and param_name(p) not in fresh_ok]
  if missing:
    raise ValueError(f"checkpoint lacks {missing[:5]}...: it was written by a different model config")
  arrays = []
  for path, leaf in leaves:
    if param_name(path) not in flat:
      arrays.append(np.asarray(leaf))
      continue
    value = np.asarray(flat[param_name(path)])
    if value.shape != np.shape(leaf):
      raise ValueError(f"checkpoint entry {param_name(path)} has shape {value.shape}, the model expects "
                       f"{np.shape(leaf)}: it was written by a different model config")
    arrays.append(value)
  return jax.tree_util.tree_unflatten(treedef, arrays)


def params_sha256(params) -> str:
  """SHA-256 over every parameter's name, shape, dtype and bytes (sorted by name)."""
  h = hashlib.sha256()
  for name, value in sorted(flatten(params).items()):
    value = np.ascontiguousarray(value)
    h.update(f"{name}:{value.shape}:{value.dtype}".encode())
    h.update(value.tobytes())
  return h.hexdigest()


class _QuietLoop(asyncio.SelectorEventLoop):
  """An event loop that drops callbacks handed to it after it closed, instead of raising, and its futures'
  unretrieved read errors.

  Orbax restores on a fresh loop that it closes as soon as one read fails; TensorStore's reads still in
  flight then complete on their own threads and hand their results to the closed loop, and each
  `RuntimeError: Event loop is closed` went to stderr as a traceback (dozens per damaged checkpoint). Nothing
  waits on those results any more, so dropping them loses nothing.
  """

  def call_soon_threadsafe(self, callback, *args, context=None):
    try:
      return super().call_soon_threadsafe(callback, *args, context=context)
    except RuntimeError:
      if self.is_closed():  # only that error; anything else still surfaces
        return None
      raise

  def call_exception_handler(self, context):
    """Drops asyncio's 'Future exception was never retrieved' for the reads of a failed restore (their error is
    what the restore reports, once); any other report goes to asyncio's handler."""
    if "never retrieved" in str(context.get("message", "")):
      return
    super().call_exception_handler(context)


class _QuietPolicy(asyncio.DefaultEventLoopPolicy):
  _loop_factory = _QuietLoop


@contextlib.contextmanager
def _orbax_logs_muted():
  """Orbax's error logs (absl) are not printed inside: the caller reports the failure itself, once."""
  logger = logging.getLogger("absl")
  previous = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(previous)


@contextlib.contextmanager
def _quiet_loops():
  """Event loops created inside (Orbax's, for one restore) are _QuietLoops."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_QuietPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)


def _read(step_dir: pathlib.Path):
  """(flat state, None) for an intact checkpoint step folder, or (None, what is wrong)."""
  try:
    meta = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())
    digest = (meta.get("custom_metadata") or {}).get("sha256")  # None: written before digests existed
    with _quiet_loops(), ocp.StandardCheckpointer() as checkpointer:
      flat = checkpointer.restore(step_dir / "default")  # as saved: unflatten checks names and shapes
  except Exception as e:  # noqa: BLE001 (damage surfaces as any of Orbax's, TensorStore's or json's errors)
    return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else 'unreadable'}"
  if digest is not None and params_sha256(flat) != digest:
    return None, "its contents differ from the SHA-256 written when it was saved"
  return flat, None


def load_params(checkpoint_dir, template, fresh_ok=()):
  """The verified params of one kept checkpoint (WORKDIR/checkpoints/last/N) in the structure of `template`.

  fresh_ok: parameter names the checkpoint may lack (they keep the template's fresh values).
  """
  path = pathlib.Path(checkpoint_dir).absolute()
  if not path.name.isdigit() or not (path / "_CHECKPOINT_METADATA").is_file():
    raise FileNotFoundError(f"--from {path}: not a checkpoint (expected a step folder such as "
                            "WORKDIR/checkpoints/last/200)")
  flat, problem = _read(path)
  if problem is not None:
    raise ValueError(f"--from {path} is damaged ({problem}); choose another kept checkpoint")
  params = {k.removeprefix("params."): v for k, v in flat.items() if k.startswith("params.")}
  return unflatten(template, params, fresh_ok)


class Checkpoints:
  """Two Orbax managers under workdir/checkpoints: `last` keeps the newest K, `best` the highest validation score.

  The score is the mean validation cross-modal MRR: the validation loss bottoms out early (cross
  reconstruction overfits) while retrieval, what the toolkit is for, keeps improving.
  """

  def __init__(self, workdir, keep: int):
    root = pathlib.Path(workdir).absolute() / "checkpoints"
    # Multi-host: each manager its own barrier names, or the two managers' saves collide at the same barrier
    # ("Barrier ThreadSaveMultiHostValueHolder:set_value_start is already ongoing").
    self.last = ocp.CheckpointManager(root / LAST, options=ocp.CheckpointManagerOptions(
        max_to_keep=max(1, keep), multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=LAST)))
    self.best = ocp.CheckpointManager(root / BEST, options=ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m["score"], best_mode="max",
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=BEST)))
    self.root = root
    self.skipped = ""  # the damaged steps the last restore skipped, in words ('' when none)
    self.last_good = None  # the newest step of `last` known intact: restored or saved by this process

  def latest_step(self):
    return self.last.latest_step()

  def save(self, step: int, host_state, val_score=None, batches=None) -> None:
    """Saves the last checkpoint (and the best one when a validation score is given); waits until written.

    batches: the training input pipeline (`data.Batches`); its state goes beside the model in `last`
    (WORKDIR/checkpoints/last/N/data/process_P-of-N.json, written by grain's Orbax handler on every process).
    """
    flat = flatten(host_state)
    digest = {"sha256": params_sha256(flat)}
    items = {"default": ocp.args.StandardSave(flat)}
    if batches is not None:
      items[DATA] = grain_checkpoint.CheckpointSave(batches)
    for folder in (self.root / LAST, self.root / BEST):  # e.g. made read-only since the last save
      write_errors.check_writable(next(p for p in (folder, *folder.parents) if p.is_dir()))
    copies, refused = 1, None
    # Orbax writes on its own threads: a full disk or a read-only folder surfaces at the wait, after its threads
    # logged it and their late callbacks hit closed event loops; that is said once, in the WriteError below.
    with _quiet_loops(), _orbax_logs_muted():
      try:
        self.last.save(step, args=ocp.args.Composite(**items), custom_metadata=digest, force=True)
        if val_score is not None and np.isfinite(val_score):
          best = self.best.best_step()
          best_score = self.best.metrics(best)["score"] if best is not None else -np.inf
          if _same_everywhere(val_score > best_score):
            copies += 1
            self.best.save(step, args=ocp.args.StandardSave(flat), metrics={"score": float(val_score)},
                           custom_metadata=digest, force=True)
        self.last.wait_until_finished()
        self.best.wait_until_finished()
      except Exception as e:  # noqa: BLE001 (Orbax and TensorStore wrap the OSError in their own errors)
        refused = write_errors.refused(e, self.root)
        if refused is None:
          raise
        self._drop_unfinished()
    if refused is not None:  # the earlier checkpoints are intact: Orbax renames a step into place only when whole
      needed = copies * sum(np.asarray(v).nbytes for v in flat.values())
      raise write_errors.WriteError(write_errors.message(refused, self.root / LAST / str(step), needed)
                                    + (f"; the newest saved step is {self.last_good}" if self.last_good else ""))
    self.last_good = step

  def _drop_unfinished(self) -> None:
    """After a failed save: closes the managers (their threads done), then removes the unfinished step folders."""
    for manager in (self.last, self.best):
      with contextlib.suppress(Exception):
        manager.close()
    if jax.process_index() != 0:
      return
    # TensorStore's native threads may still create folders of the failed step for a moment: removed until none
    # has appeared for three looks in a row (at most 5 s).
    quiet = 0
    for _ in range(50):
      leftovers = list(self.root.glob(f"*/*{TMP_SUFFIX}*"))
      for tmp in leftovers:
        shutil.rmtree(tmp, ignore_errors=True)
      quiet = 0 if leftovers else quiet + 1
      if quiet == 3:
        break
      time.sleep(0.1)

  def restore(self, template, which: str = LAST, step=None, set_aside: bool = False, warn: bool = True):
    """The newest intact state (best first for BEST, or the one at `step`) shaped like `template`; None if none saved.

    Damaged steps are skipped with one warning line on stderr (warn=False: none; `self.skipped` names them
    either way); set_aside=True (a resuming trainer) moves them to checkpoints/damaged/ so that those steps
    can be saved again. ValueError if none is intact.
    """
    manager = self.best if which == BEST else self.last
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    if which == BEST and step is None and manager.best_step() is not None:
      steps.remove(manager.best_step())
      steps.insert(0, manager.best_step())
    problems = []
    self.skipped = ""
    for s in steps:
      flat, problem = _read(self.root / which / str(s))
      if problem is None:
        if problems:
          self.skipped = self._damaged(which, problems, set_aside)
        if problems and warn:
          print(f"mmvae: warning: {self.skipped}; using step {s}", file=sys.stderr)
        for damaged, _ in problems if set_aside else ():
          self._set_aside(manager, which, damaged)
        if which == LAST:
          self.last_good = s
        return unflatten(template, flat)
      problems.append((s, problem))
    if problems:  # left where they are: nothing to resume from, and nothing a rerun should silently restart over
      self.skipped = self._damaged(which, problems, False)
      raise ValueError(f"no intact checkpoint: {self._damaged(which, problems, False)}; train into a new "
                       "--workdir, or start one from another run's checkpoint with --from")
    return None

  def restore_batches(self, batches, step: int) -> bool:
    """Sets the input pipeline to the state saved with `last` step `step`; False when that step saved none."""
    where = self.root / LAST / str(step) / DATA
    if not where.is_dir():
      return False
    grain_checkpoint.CheckpointHandler().restore(where, args=grain_checkpoint.CheckpointRestore(batches))
    return True

  def _damaged(self, which: str, problems: list, set_aside: bool) -> str:
    """One line naming the damaged steps and the first one's problem."""
    where = self.root / which
    what = (f"checkpoint {where / str(problems[0][0])} is" if len(problems) == 1 else
            f"checkpoints {where}/{{{', '.join(str(s) for s, _ in problems)}}} are")
    moved = f", moved to {self.root / DAMAGED}" if set_aside else ""
    return f"{what} damaged ({problems[0][1]}{moved})"

  def _set_aside(self, manager, which: str, step: int) -> None:
    if jax.process_index() == 0:  # one shared workdir: one process moves, the others wait for it
      target = self.root / DAMAGED / f"{which}-{step}"
      while target.exists():
        target = target.with_name(target.name + "x")
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(self.root / which / str(step)), str(target))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"mmvae_set_aside_{which}_{step}")
    manager.reload()

  def close(self) -> None:
    self.last.close()
    self.best.close()


def _same_everywhere(decision: bool) -> bool:
  """Process 0's decision on every process: a collective save taken by some processes only would hang."""
  if jax.process_count() == 1:
    return bool(decision)
  return bool(multihost_utils.broadcast_one_to_all(np.int32(decision)))


def run_folder(workdir) -> pathlib.Path:
  """The training run a workdir names: itself, or for a stage-wise run (stages.json) its last stage's folder."""
  workdir = pathlib.Path(workdir)
  staged = workdir / "stages.json"
  if staged.is_file() and not (workdir / "run.json").is_file():
    records = json.loads(staged.read_text())
    if records:
      return pathlib.Path(records[-1]["run"])
  return workdir


def dataset_of_run(workdir, data_dir=None):
  """The dataset a run trained on (run.json), refused if it changed since; or `data_dir`, warning if it differs."""
  from mmvae import data
  from mmvae.train import resume
  workdir = run_folder(workdir)
  run = json.loads((workdir / "run.json").read_text())
  dataset = data.Dataset(data_dir or run["data_dir"])
  if not resume.same_dataset(run, dataset):
    new = str(dataset.manifest.get("fingerprint"))[:12]
    if data_dir is None:
      raise ValueError(f"{run['data_dir']} changed since {workdir} trained on it (fingerprint "
                       f"{str(run.get('data_fingerprint'))[:12]}, now {new}); pass --data to use it anyway")
    print(f"mmvae: warning: {dataset.data_dir} (fingerprint {new}) is not the dataset {workdir} trained on "
          f"({run['data_dir']}); using it as asked", file=sys.stderr)
  return dataset


class LoadedStep(int):
  """The step of the checkpoint load_run used (an int), with which kind it was (`which`) and why (`why`)."""

  def __new__(cls, step: int, which: str, why: str = ""):
    out = super().__new__(cls, step)
    out.which, out.why = which, why
    return out

  @property
  def label(self) -> str:
    """What a report says about it, e.g. 'last (step 40): the best checkpoint .../best/30 is damaged (...)'."""
    return f"{self.which} (step {int(self)})" + (f": {self.why}" if self.why else "")


def load_run(workdir, which: str = BEST, return_step: bool = False):
  """(model, config, data_dir) of a trained run, from its config.json, run.json and checkpoints.

  which: 'best' (the highest validation score; the newest intact 'last' one when there is none) or 'last'.
  return_step: also return the checkpoint used, as a fourth element: a LoadedStep, the step as an int whose
  `label` says which checkpoint it was and why ('last (step 40): the run saved no best checkpoint').
  A damaged checkpoint skipped on the way gives one warning line on stderr naming what was used instead.
  """
  import ml_collections
  from mmvae import config as config_lib
  from mmvae import zoo
  if which not in (BEST, LAST):
    raise ValueError(f"which={which!r}: use 'best' or 'last'")
  workdir = run_folder(workdir)
  for name in ("config.json", "run.json"):
    if not (workdir / name).is_file():
      raise FileNotFoundError(f"{workdir / name} not found: is {workdir} a training workdir (mmvae train --workdir)?")
  config = ml_collections.ConfigDict(config_lib.stored(workdir / "config.json"))
  for section, key in (("model", "hidden"), ("model", "conv_channels"), ("loss", "triplet_margins")):
    config[section][key] = tuple(config[section][key])
  run = json.loads((workdir / "run.json").read_text())
  data_dir = run["data_dir"]
  from mmvae import modalities
  if "modalities" not in run:
    raise ValueError(f"{workdir / 'run.json'} was made by an older mmvae (it records no modalities): "
                     "train a new run with this version")
  shapes = modalities.specs({d["name"]: d for d in run["modalities"]})  # as the run's dataset declared them
  # The run's own kind (config.json), so any registered model reloads without the caller naming it.
  model = zoo.of(config).build(config, shapes, seed=config.train.seed, num_classes=int(run.get("num_classes", 0)))
  from flax import nnx
  # Only the parameters and the step: a run is loaded whatever optimizer state its checkpoints hold.
  graphdef, params = nnx.split(model, nnx.Param)
  state = {"params": params, "step": np.zeros((), np.int32)}
  restored, used, why = _restore_for_loading(Checkpoints(workdir, keep=config.train.keep_checkpoints), state, which)
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}; train first (mmvae train --workdir {workdir})")
  step = LoadedStep(int(restored["step"]), used, why)
  if why and why != NO_BEST:  # damaged checkpoints were skipped: one line saying which, and what is used instead
    print(f"mmvae: warning: {why}; using the {used} checkpoint of step {int(step)}", file=sys.stderr)
  model = nnx.merge(graphdef, restored["params"])
  return (model, config, data_dir, step) if return_step else (model, config, data_dir)


NO_BEST = "the run saved no best checkpoint"


def _restore_for_loading(ckpts: Checkpoints, state, which: str):
  """(restored state or None, the kind used: 'best' or 'last', why it is not the newest one asked for, or '')."""
  try:
    best_damaged = ""
    if which == BEST:
      try:
        restored = ckpts.restore(state, BEST, warn=False)
      except ValueError:  # every best checkpoint damaged: the last ones are the next best thing
        best_damaged, restored = ckpts.skipped, None
      if restored is not None:
        return restored, BEST, ckpts.skipped
    try:
      restored = ckpts.restore(state, LAST, warn=False)
    except ValueError as e:
      raise ValueError(f"{e} (the best ones are damaged too)" if best_damaged else str(e)) from None
    if restored is None:
      return None, LAST, ""
    first = (best_damaged or NO_BEST) if which == BEST else ""
    return restored, LAST, " and ".join(p for p in (first, ckpts.skipped) if p)
  finally:
    ckpts.close()
