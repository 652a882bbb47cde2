"""`mmvae embed`: a trained run's embeddings (posterior means) of one modality for every example of some splits.

The output is the .npz that `mmvae prep features --join` reads, so a run's space can be joined to a
corpus as a new (e.g. frozen target) modality:

    ids         [N] str      the examples' `id` field, split by split, each split in id order
    embeddings  [N, Z] float32   posterior means of the modality (`inference.encode_split`: a modality of
                             K stored frames averages its frames' posteriors, as validation and analysis do)
    splits      [N] str      the split of each row

The encoding path is the one validation and `mmvae analyze` use (`checkpoints.load_run`,
`checkpoints.dataset_of_run`, `inference.encode_split`), so the exported rows are the latents the run's
report scores.
"""

import json
import pathlib
import time

import numpy as np

from mmvae import display, files, write_errors


def _splits(requested, available: list[str]) -> list[str]:
  """The splits to export: `requested` (a list or 'a,b'), default every split of the dataset; one-line errors."""
  if requested is None:
    return list(available)
  names = [s.strip() for s in (requested.split(",") if isinstance(requested, str) else requested)]
  if not names or not all(names):
    raise ValueError(f"--splits {requested!r}: give comma-separated split names, e.g. train,validation,test")
  unknown = [s for s in names if s not in available]
  if unknown:
    raise ValueError(f"--splits names {unknown}, which the dataset does not have (it has {available})")
  if len(set(names)) != len(names):
    raise ValueError(f"--splits {requested!r} names a split twice")
  return names


def _encode(encoder, dataset, split: str, spec: dict) -> tuple[np.ndarray, np.ndarray]:
  """(ids, posterior means float32) of one split: whole when it fits in memory, else chunk by chunk from disk."""
  from mmvae import inference
  (name,) = spec
  if dataset.in_memory(split):
    arrays = dataset.arrays(split)
    mu = inference.encode_split(encoder, arrays, spec)[f"{name}_mu"]
    return np.asarray(arrays["id"]).astype(str), np.asarray(mu, np.float32)
  # Only ids and [N, Z] means are kept: the split's raw arrays are never all in memory.
  parts = inference.over_chunks(dataset, split, {
      "ids": lambda c, lo: {"id": np.asarray(c["id"]).astype(str)},
      "mu": lambda c, lo: {"mu": np.asarray(inference.encode_split(encoder, c, spec, pad=True)[f"{name}_mu"],
                                            np.float32)}})
  return parts["ids"]["id"], parts["mu"]["mu"]


def run_modalities(workdir) -> list[str] | None:
  """The modalities a run was built for, from its run.json (no JAX, no checkpoint); None when it does not say."""
  folder = pathlib.Path(workdir)
  try:
    if not (folder / "run.json").is_file() and (folder / "stages.json").is_file():  # a stage-wise run: its last
      folder = pathlib.Path(json.loads((folder / "stages.json").read_text())[-1]["run"])
    run = json.loads((folder / "run.json").read_text())
  except (OSError, ValueError, LookupError, TypeError):
    return None  # load_run says what is wrong with the workdir
  names = [m["name"] for m in run.get("modalities") or ()]
  return names or None


def export(workdir, modality: str, out, data_dir=None, splits=None, which: str = "best") -> dict:
  """Writes OUT (.npz: ids, embeddings, splits) for `modality` of the run in WORKDIR; returns those arrays.

  data_dir: the dataset to encode (default: the one the run trained on, refused if it changed since).
  splits: split names (a list or 'train,test'; default: every split of the dataset).
  which: the checkpoint, 'best' or 'last' (as `mmvae analyze --checkpoint`).
  modality: its name or how outputs show it ('voice' for 'audio'); a name the run lacks is refused before loading.
  """
  start = time.time()
  recorded = run_modalities(workdir)
  if recorded is not None:
    modality = display.modality_named(modality, recorded, where=f"the run {workdir}")
  out = pathlib.Path(out)
  if out.suffix != ".npz":
    raise ValueError(f"--out {out}: the file name must end in .npz")
  if out.is_dir():
    raise ValueError(f"--out {out} is a folder; give a file name ending in .npz")
  from mmvae import inference
  from mmvae.train import checkpoints
  model, config, _, step = checkpoints.load_run(workdir, which=which, return_step=True)
  dataset = checkpoints.dataset_of_run(workdir, data_dir)  # refuses a dataset that changed since training
  dataset.check_config(config)
  specs = dataset.modalities(config.data.get("modalities", ()))
  known = getattr(model, "specs", None)  # a --data dataset may hold more modalities than the run was built for
  usable = [n for n in specs if known is None or n in known]
  modality = display.modality_named(modality, usable, where=f"the run {workdir}")
  chosen = _splits(splits, dataset.splits)
  encoder = inference.model_encoder(model)
  ids, rows, names = [], [], []
  for split in chosen:
    split_ids, mu = _encode(encoder, dataset, split, {modality: specs[modality]})
    ids.append(split_ids)
    rows.append(mu)
    names.append(np.full(len(split_ids), split))
  result = {"ids": np.concatenate(ids), "embeddings": np.concatenate(rows),
            "splits": np.concatenate(names).astype(str)}
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic(out) as f:  # a file object: numpy appends no second suffix
      np.savez(f, **result)
  except OSError as e:  # a full disk or a read-only folder: nothing half-written left, an earlier OUT as it was
    code = write_errors.refused(e, out.parent)
    if code is None:
      raise
    needed = sum(a.nbytes for a in result.values())
    raise write_errors.WriteError(write_errors.message(code, out, needed)) from None
  counts = ", ".join(f"{s} {len(i)}" for s, i in zip(chosen, ids))
  print(f"mmvae embed: {modality} posterior means ({result['embeddings'].shape[1]} dims) of {counts} examples, "
        f"{step.which} checkpoint (step {int(step)}){f' ({step.why})' if step.why else ''} -> {out} in {time.time() - start:.1f} s", flush=True)
  return result
