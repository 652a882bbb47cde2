"""Stage-wise training: a model kind with a stage plan (`stages(config, names)`, e.g. mcvs) trains stage by stage.

WORKDIR/stages/K/ is stage K's own run (config.model.stage = K and config.data.modalities = the modalities
of its space; a normal trainer workdir: resumable, kill-safe). Stage K starts from stage K-1's best
checkpoint (train.select_by; its last when there is no validation split), with `--from` semantics: its
parameters, a fresh optimizer. So `mmvae analyze` of any stage (best by default) shows exactly the vectors
every later stage keeps for its modalities. WORKDIR/stages.json lists, per finished stage, `stage`,
`modalities` (those in the space), `new`, `trainable_params`, `seconds_per_iteration`, `branch_sha256`
(modality -> SHA-256 of that branch's parameters, as the model's `branch_of(name)` assigns them) and `run`
(the stage's folder). WORKDIR/final.json is the last stage's, with the stage list. `mmvae analyze
--workdir WORKDIR` analyses the last stage (checkpoints.run_folder); any stage can be analysed on its
own: --workdir WORKDIR/stages/K.

Rerunning the command resumes: finished stages are kept as they are, the unfinished one resumes.
`--from OLD_WORKDIR` (a staged run) takes OLD's stages whose spaces match this plan's first stages
(recorded with `from`), and trains the rest from OLD's last of them: how a modality is added to a
trained space. Parameters new to that checkpoint start fresh (checkpoints.load_params `fresh_ok`).
"""

import copy
import json
import pathlib

import jax

from mmvae import files, zoo
from mmvae.train import checkpoints as ckpt_lib
from mmvae.train import resume
from mmvae.train import trainer

STAGES_JSON = "stages.json"


def is_staged(config) -> bool:
  """Whether `mmvae train` runs this config stage by stage: its kind has a plan and no single stage is chosen."""
  kind = zoo.of(config)
  return isinstance(kind, zoo.Staged) and int(config.model.get("stage", 0)) == 0


def stage_config(config, plan, k: int):
  """The config of stage k (1-based): model.stage = k, the plan written out, and the space's modalities only."""
  c = copy.deepcopy(config)
  c.model.stage = k
  c.model.stages = tuple(tuple(s) for s in plan)
  c.data.modalities = tuple(_in_space(plan, k))
  return c


def _in_space(plan, k: int) -> list[str]:
  return [m for new in plan[:k] for m in new]


def _chosen_checkpoint(run: pathlib.Path) -> pathlib.Path:
  """The checkpoint a finished stage hands on: its best (as `mmvae analyze` picks it), else its last."""
  final = json.loads((run / "final.json").read_text())
  best = final.get("best_step")
  if best is not None and (run / "checkpoints" / ckpt_lib.BEST / str(best)).is_dir():
    return run / "checkpoints" / ckpt_lib.BEST / str(best)
  return run / "checkpoints" / ckpt_lib.LAST / str(final["step"])


def branch_digests(model, names: list[str]) -> tuple[dict, int]:
  """({modality: SHA-256 of its branch's parameters}, number of trainable parameters) of a staged model."""
  from flax import nnx
  flat = ckpt_lib.flatten(nnx.state(model, nnx.Param))
  # The checkpoint digest (names, shapes, dtypes, bytes) of the parameters of each modality's branch.
  digests = {m: ckpt_lib.params_sha256({n: v for n, v in flat.items() if m in model.branch_of(n)}) for m in names}
  trainable = sum(int(v.size) for n, v in flat.items() if model.trainable(n))
  return digests, trainable


def _record(run: pathlib.Path, k: int, plan, config, final: dict) -> dict:
  model, _, _ = ckpt_lib.load_run(run, which=ckpt_lib.BEST)  # the parameters the next stage starts from
  space = _in_space(plan, k)
  digests, trainable = branch_digests(model, space)
  rate = final.get("samples_per_second")
  steps = max(1, int(final["step"]) - int(final.get("resumed_from", 0)))
  seconds = config.train.batch_size / rate if rate else final["elapsed_seconds"] / steps
  return {"stage": k, "modalities": space, "new": list(plan[k - 1]), "trainable_params": trainable,
          "seconds_per_iteration": seconds, "branch_sha256": digests, "run": str(run)}


def _write_json(path: pathlib.Path, value) -> None:
  if jax.process_index() != 0:
    return
  files.write_json_atomic(path, value, indent=2)


def _adopted(init_from, plan) -> tuple[list[dict], str | None]:
  """(the records of a staged OLD run's stages that match this plan's first stages, the checkpoint to go on from)."""
  if not init_from or not (pathlib.Path(init_from) / STAGES_JSON).is_file():
    return [], init_from
  old_dir = pathlib.Path(init_from).absolute()
  old = json.loads((old_dir / STAGES_JSON).read_text())
  taken = []
  for k, rec in enumerate(old, start=1):
    if k > len(plan) or rec["modalities"] != _in_space(plan, k):
      break
    taken.append(dict(rec, **{"from": str(old_dir)}))
  if not taken:
    raise ValueError(f"--from {old_dir}: its first stage ({old[0]['modalities'] if old else 'none'}) is not this "
                     f"plan's first stage ({_in_space(plan, 1)}); nothing to continue from")
  return taken, str(_chosen_checkpoint(pathlib.Path(taken[-1]["run"])))


def train(config, data_dir, workdir, allow_data_change: bool = False, init_from=None) -> dict:
  """Runs every stage of the plan in WORKDIR/stages/K (resuming what is done); returns the last stage's final.json.

  Each stage is one trainer.run; entry.train calls this for a staged kind.
  init_from: a checkpoint folder (stage 1 starts from it) or a staged workdir (see the module docstring).
  """
  from mmvae import data
  names = tuple(data.Dataset(data_dir).modalities(config.data.get("modalities", ())))
  plan = zoo.of(config).stages(config, names)
  workdir = resume.checked_workdir(workdir)
  with resume.lock(workdir, owner=jax.process_index() == 0):
    records, start_from = _adopted(init_from, plan)
    final = None
    for k in range(len(records) + 1, len(plan) + 1):
      run = workdir / "stages" / str(k)
      print(f"mmvae train: stage {k}/{len(plan)}: adding {', '.join(plan[k - 1])} to the space "
            f"({', '.join(_in_space(plan, k))}) -> {run}", flush=True)
      cfg = stage_config(config, plan, k)
      created = resume.created_folders(run)
      try:
        final = trainer.run(cfg, data_dir, run, allow_data_change=allow_data_change, init_from=start_from)
      except BaseException:
        if jax.process_index() == 0:  # a stage refused before it wrote anything leaves no empty folder
          resume.remove_empty(created)
        raise
      records.append(_record(run, k, plan, cfg, final))
      _write_json(workdir / STAGES_JSON, records)
      start_from = str(_chosen_checkpoint(run))
    if final is None:  # every stage came from --from
      _write_json(workdir / STAGES_JSON, records)
      final = json.loads((pathlib.Path(records[-1]["run"]) / "final.json").read_text())
    final = dict(final, stages=records)
    _write_json(workdir / "final.json", final)
    # config.json of the whole run (model.stage = 0: every stage), for `mmvae analyze` and reruns.
    from mmvae import config as config_lib
    _write_json(workdir / "config.json", config_lib.to_dict(config))
  return final
