"""The workdir contract: one trainer at a time, and a resume that continues exactly the run it started.

A workdir that holds checkpoints is resumed only with the same config (up to bookkeeping keys, see
trainer.RESUMABLE_CHANGES), the same dataset and the same --from. The dataset is compared by the
content fingerprint in its manifest, not its path: a moved dataset resumes, a re-prepared or other
one is refused unless the caller allows the change (recorded in run.json). Other settings for a kept
checkpoint go into a new workdir: `mmvae train --from WORKDIR/checkpoints/last/N --workdir NEW`
starts from that checkpoint's parameters with a fresh optimizer at step 0.
"""

import contextlib
import json
import os
import pathlib

from mmvae import locks


def checked_workdir(workdir) -> pathlib.Path:
  """The absolute workdir, created; ValueError when it is a file or cannot be written."""
  workdir = pathlib.Path(workdir).absolute()
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f"--workdir {workdir} is a file, not a folder")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create --workdir {workdir}: {e.strerror}") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir {workdir} is not writable")
  return workdir


def created_folders(workdir) -> list[pathlib.Path]:
  """The folders that creating `workdir` would make (those that do not exist yet), deepest first."""
  path = pathlib.Path(workdir).absolute()
  return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty(created: list[pathlib.Path]) -> None:
  """Removes the folders a refused or failed run created while they hold nothing but empty folders (its own)."""
  for folder in created:
    try:
      inside = list(folder.rglob("*"))
      if any(p.is_symlink() or not p.is_dir() for p in inside):
        return  # the run wrote something: keep it all as it is
      for sub in sorted(inside, key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
      folder.rmdir()
    except OSError:  # gone already, or another process writes into it now
      return


def lock(workdir, owner: bool = True):
  """WORKDIR/.lock for the process that writes the workdir (multi-host: process 0); released on exit."""
  return locks.Lock(workdir) if owner else contextlib.nullcontext()


def dataset_record(dataset) -> dict:
  """What run.json stores about the dataset: its path and its content fingerprint."""
  return {"data_dir": str(pathlib.Path(dataset.data_dir).absolute()),
          "data_fingerprint": dataset.manifest.get("fingerprint")}


def same_dataset(run: dict, dataset) -> bool:
  """Whether `dataset` is the one run.json names: by fingerprint, or by path for datasets prepared without one."""
  new = dataset_record(dataset)
  if run.get("data_fingerprint") and new["data_fingerprint"]:
    return run["data_fingerprint"] == new["data_fingerprint"]
  return run.get("data_dir") == new["data_dir"]


def check_resume(workdir: pathlib.Path, dataset, allow_data_change: bool, init_from) -> dict:
  """Refuses a resume on another dataset (unless allowed) or from another --from; returns run.json's history."""
  path = workdir / "run.json"
  run = json.loads(path.read_text()) if path.is_file() else {}
  history = {k: run[k] for k in ("init_from", "data_changes") if k in run}
  new_from = str(pathlib.Path(init_from).absolute()) if init_from else None
  if new_from and new_from != run.get("init_from"):
    raise ValueError(f"{workdir} already holds checkpoints (started from {run.get('init_from') or 'scratch'}); "
                     "--from starts a new run: give a new --workdir")
  if same_dataset(run, dataset):
    return history
  old = f"{run.get('data_dir')} (fingerprint {str(run.get('data_fingerprint'))[:12]})"
  new = dataset_record(dataset)
  if not allow_data_change:
    raise ValueError(f"{workdir} was trained on {old}, not on {new['data_dir']} (fingerprint "
                     f"{str(new['data_fingerprint'])[:12]}); resume with the same dataset, pass "
                     "--allow-data-change to continue on this one, or train into a new --workdir")
  change = {"from": {k: run.get(k) for k in ("data_dir", "data_fingerprint")}, "to": new}
  history["data_changes"] = history.get("data_changes", []) + [change]
  return history


def restart_hint(workdir: pathlib.Path, step) -> str:
  """How to retry with other settings (e.g. a lower learning rate) after a failure at a kept checkpoint."""
  if step is None:
    return ("no checkpoint was saved yet: rerun in the same --workdir with a lower config.train.learning_rate "
            "(a workdir without checkpoints takes any config)")
  return (f"the last good checkpoint (step {step}) is kept; to continue from it with a lower learning rate: "
          f"mmvae train --from {workdir / 'checkpoints' / 'last' / str(step)} --workdir NEW_WORKDIR "
          "--config.train.learning_rate=LOWER (plus the same --config and --data)")
