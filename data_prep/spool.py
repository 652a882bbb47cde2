"""Unnormalised records spooled to disk while dataset-level statistics are gathered (data.time_average).

Every stored train example is normalised with the train split's per-bin mean and std, which are known only
once the whole split is extracted. The split is written here first, in parts of a fixed number of examples
(one .npz of stacked fields each, its .json summary written last), then read back part by part: twice for
the statistics, once to write the final shards. Memory holds one part at a time, never the split.
"""

import json
import pathlib

import numpy as np

from mmvae import files


def write_part(folder, index: int, records, meta=None) -> int:
  """Writes records (a non-empty iterable) as part INDEX of FOLDER; `meta` (a callable) is kept in its summary."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  records = list(records)
  if not records:
    raise ValueError(f"part {index} of {folder} has no records")
  arrays = {key: np.stack([np.asarray(r[key]) for r in records]) for key in records[0]}
  with files.atomic(folder / f"{index:05d}.npz") as f:
    np.savez(f, **arrays)
  summary = {"index": int(index), "examples": len(records), "meta": (meta() if callable(meta) else meta) or {}}
  files.write_json_atomic(folder / f"{index:05d}.json", summary)  # last: its presence means the part is whole
  return len(records)


def done_parts(folder) -> list[dict]:
  """Summaries of FOLDER's finished parts 0, 1, ... up to the first missing one."""
  folder, out = pathlib.Path(folder), []
  while (folder / f"{len(out):05d}.json").is_file() and (folder / f"{len(out):05d}.npz").is_file():
    out.append(json.loads((folder / f"{len(out):05d}.json").read_text(encoding="utf-8")))
  return out


def read_part(folder, index: int) -> list[dict]:
  """The records of part INDEX as they were given: arrays, `label` as int, text fields as str."""
  with np.load(pathlib.Path(folder) / f"{index:05d}.npz", allow_pickle=False) as archive:
    arrays = {key: archive[key] for key in archive.files}
  n = len(next(iter(arrays.values())))
  convert = {key: (str if a.dtype.kind == "U" else int if key == "label" else None) for key, a in arrays.items()}
  return [{key: convert[key](a[i]) if convert[key] else a[i] for key, a in arrays.items()} for i in range(n)]


def _sequential_sum(total, rows_NxF):
  """total + rows[0] + rows[1] + ...: the order np.sum(axis=0) adds the rows of one array in (so bit-identical)."""
  return rows_NxF.sum(axis=0) if total is None else np.add.reduce(np.concatenate([total[None], rows_NxF]), axis=0)


def mean_std(folder, parts: list[dict], key: str, floor: float) -> dict:
  """{mean, std} per bin of field KEY over every spooled part, equal to np.mean / np.std (float64) of the stack.

  Two passes, as np.std computes it: the float64 row sum divided by N, then the mean of the squared
  deviations; the std is floored at `floor`.
  """
  folder = pathlib.Path(folder)

  def rows(index):
    with np.load(folder / f"{index:05d}.npz", allow_pickle=False) as archive:
      return archive[key].astype(np.float64)
  n = sum(p["examples"] for p in parts)
  if n == 0:
    raise ValueError(f"no examples spooled in {folder}")
  total = None
  for p in parts:
    total = _sequential_sum(total, rows(p["index"]))
  mean = total / n
  squares = None
  for p in parts:
    deviation = rows(p["index"]) - mean
    squares = _sequential_sum(squares, deviation * deviation)
  std = np.maximum(np.sqrt(squares / n), floor)
  return {"mean": mean.tolist(), "std": std.tolist()}
