"""The one training entry: `train(config, data_dir, workdir)` runs a staged kind's plan (stages.train) or one run (trainer.run).

Around either it joins the processes of a multi-host run (parallel.py), refuses a workdir inside a prepared
dataset, prints what the run computes on, and on failure removes the folders this call created while they
hold nothing (so a refused config leaves no empty workdir behind).
"""

import json
import pathlib

import jax

from mmvae.train import parallel
from mmvae.train import resume
from mmvae.train import stages
from mmvae.train import trainer


def check_not_in_dataset(workdir) -> None:
  """ValueError when the workdir is, or lies inside, a prepared dataset: the next prep of it would delete the run."""
  path = pathlib.Path(workdir).resolve()
  for folder in (path, *path.parents):
    try:
      prepared = json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("format") == "mmvae-prepared/1"
    except (OSError, ValueError, AttributeError):
      prepared = False
    if prepared or (folder / ".mmvae-build").is_file():
      raise ValueError(f"--workdir {workdir} lies inside the prepared dataset {folder}, which `mmvae prep` replaces; "
                       "train into a folder outside it")


def train(config, data_dir, workdir, allow_data_change: bool = False, init_from=None) -> dict:
  """Trains (or resumes) the run in `workdir` on the prepared dataset `data_dir`; returns final.json's contents.

  allow_data_change: resume on a dataset other than the one the run started on (recorded in run.json).
  init_from: a kept checkpoint (WORKDIR/checkpoints/last/N) whose parameters start a new run; the
  optimizer state and the step start fresh, so the config's whole schedule runs. A staged kind (mcvs)
  also takes a staged workdir (see stages.py).
  """
  parallel.maybe_initialize_distributed()
  check_not_in_dataset(workdir)
  if jax.process_index() == 0:  # what the run computes on (run.json records it too)
    n, kind, hosts = jax.device_count(), jax.devices()[0].device_kind, jax.process_count()
    print(f"mmvae train: jax {jax.__version__} on {jax.default_backend()}, {n} device{'s' * (n != 1)}"
          f"{f' ({kind})' if kind != jax.default_backend() else ''}{f' in {hosts} processes' if hosts > 1 else ''}, "
          f"parallel={config.parallel}", flush=True)
  created = resume.created_folders(workdir)
  try:
    if stages.is_staged(config):  # a model kind with a stage plan (mcvs): one run per stage
      final = stages.train(config, data_dir, workdir, allow_data_change, init_from)
    else:
      final = trainer.run(config, data_dir, workdir, allow_data_change, init_from)
    parallel.training_ended()  # past its last collective: the other processes stop watching it
    return final
  except BaseException as e:
    if isinstance(e, Exception):  # a collective that failed because another process is gone: exit with one line
      parallel.wait_if_lost_process(e)
    elif isinstance(e, SystemExit):  # stopped by a signal with every process's step saved: nothing more to wait for
      parallel.training_ended()
    if jax.process_index() == 0:
      resume.remove_empty(created)
    raise
