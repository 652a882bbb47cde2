"""Orbax checkpoints of the train state (last K, and best by validation cross-modal MRR) and loading a finished run."""

import hashlib
import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

LAST, BEST = "last", "best"


def _name(path) -> str:
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
  flat = {_name(path): np.asarray(leaf) for path, leaf in leaves}
  if len(flat) != len(leaves):
    raise ValueError("two state leaves share a checkpoint name; rename the modules")
  return flat


def unflatten(template, flat: dict):
  """The tree of `template` (e.g. a freshly initialised state) holding the arrays of `flat`."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  missing = [_name(p) for p, _ in leaves if _name(p) not in flat]
  if missing:
    raise ValueError(f"checkpoint lacks {missing[:5]}...: it was written by a different model config")
  arrays = []
  for path, leaf in leaves:
    value = np.asarray(flat[_name(path)])
    if value.shape != np.shape(leaf):
      raise ValueError(f"checkpoint entry {_name(path)} has shape {value.shape}, the model expects "
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


class Checkpoints:
  """Two Orbax managers under workdir/checkpoints: `last` keeps the newest K, `best` the highest validation score.

  The score is the mean validation cross-modal MRR: the validation loss bottoms out early (cross
  reconstruction overfits) while retrieval, what the toolkit is for, keeps improving.
  """

  def __init__(self, workdir, keep: int):
    root = pathlib.Path(workdir).absolute() / "checkpoints"
    self.last = ocp.CheckpointManager(root / LAST, options=ocp.CheckpointManagerOptions(max_to_keep=max(1, keep)))
    self.best = ocp.CheckpointManager(
        root / BEST, options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["score"], best_mode="max"))

  def latest_step(self):
    return self.last.latest_step()

  def save(self, step: int, host_state, val_score=None) -> None:
    """Saves the last checkpoint (and the best one when a validation score is given); waits until written."""
    flat = flatten(host_state)
    self.last.save(step, args=ocp.args.StandardSave(flat), force=True)
    if val_score is not None and np.isfinite(val_score):
      best = self.best.best_step()
      best_score = self.best.metrics(best)["score"] if best is not None else -np.inf
      if val_score > best_score:
        self.best.save(step, args=ocp.args.StandardSave(flat), metrics={"score": float(val_score)}, force=True)
    self.last.wait_until_finished()
    self.best.wait_until_finished()

  def restore(self, template, which: str = LAST, step=None):
    """The state saved at `step` (default: newest / best) in the structure of `template`; None if none saved."""
    manager = self.best if which == BEST else self.last
    if step is None:
      step = manager.best_step() if which == BEST else manager.latest_step()
    if step is None:
      return None
    flat_template = flatten(template)
    flat = manager.restore(step, args=ocp.args.StandardRestore(flat_template))
    return unflatten(template, flat)

  def close(self) -> None:
    self.last.close()
    self.best.close()


def load_run(workdir, which: str = BEST):
  """(model, config, data_dir) of a trained run, from its config.json, run.json and checkpoints."""
  import ml_collections
  from mmvae import data, models
  from mmvae.train import step as step_lib
  if which not in (BEST, LAST):
    raise ValueError(f"which={which!r}: use 'best' or 'last'")
  workdir = pathlib.Path(workdir)
  for name in ("config.json", "run.json"):
    if not (workdir / name).is_file():
      raise FileNotFoundError(f"{workdir / name} not found: is {workdir} a training workdir (mmvae train --workdir)?")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  for section, key in (("model", "hidden"), ("model", "conv_channels")):
    config[section][key] = tuple(config[section][key])
  run = json.loads((workdir / "run.json").read_text())
  data_dir = run["data_dir"]
  shapes = {k: tuple(v) for k, v in run["input_shapes"].items()} if "input_shapes" in run else \
      data.Dataset(data_dir).input_shapes()
  model = models.build_model(config, shapes, seed=config.train.seed)
  tx = step_lib.make_optimizer(config.train)
  graphdef, state = step_lib.init_state(model, tx)
  ckpts = Checkpoints(workdir, keep=config.train.keep_checkpoints)
  try:
    restored = ckpts.restore(state, which)
    if restored is None and which == BEST:  # a run without a validation split has no best checkpoint
      restored = ckpts.restore(state, LAST)
  finally:
    ckpts.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}; train first (mmvae train --workdir {workdir})")
  from flax import nnx
  return nnx.merge(graphdef, restored["params"]), config, data_dir
