"""Resuming a killed prep: the plan its shards must match, adopting them, and replaying their outcomes.

Each shard's summary keeps the skipped files and inputs changed to fit of the tasks that produced it and where
those tasks end, so a rerun reports exactly what an uninterrupted prep reports and extracts only the rest.
"""

import hashlib
import json
import pathlib

import numpy as np

from data_prep import shards, storage
from data_prep import corpus as corpus_lib

SPOOL = ".spool"  # BUILD/.spool/train: the unnormalised train records while data.time_average's statistics are gathered


def moved(records: list[dict], build: pathlib.Path, out: pathlib.Path) -> list[dict]:
  """Records naming files inside the build folder (the synthetic corpus), renamed to where they end up."""
  def move(path):
    return str(out / pathlib.Path(path).relative_to(build)) if pathlib.Path(path).is_relative_to(build) else path
  return [dict(r, path=move(r["path"])) for r in records]


class Outcomes:
  """Skipped files and inputs changed to fit, in task order; what a shard's tasks added is kept in its summary."""

  def __init__(self, corpus: corpus_lib.Corpus, build: storage.Build):
    self.build = build
    self.skipped, self.changed, self.seen = moved(corpus.skipped, build.path, build.out), [], set()
    self.pending = {"task_end": 0, "skipped": [], "warnings": []}

  def start(self, task_end: int) -> None:
    """A split's extraction starts (or resumes) at task TASK_END, after the outcomes replayed so far."""
    self.pending = {"task_end": task_end, "skipped": [], "warnings": []}

  def add(self, skip, notes_, task_end: int) -> bool:
    """Records one task's outcome (paths as they will be after the swap); whether its example is kept."""
    self.pending["task_end"] = task_end
    self.replay({"skipped": moved([skip] if skip else [], self.build.path, self.build.out),
                 "warnings": moved(notes_, self.build.path, self.build.out)})
    return not skip

  def replay(self, meta: dict) -> None:
    """Adds a shard summary's outcomes (or one task's) as if its tasks ran now."""
    for note in meta["warnings"]:
      self.pending["warnings"].append(note)
      if (note["path"], note["warning"]) not in self.seen:  # frames shared by utterances warn once, not per utterance
        self.seen.add((note["path"], note["warning"]))
        self.changed.append(note)
    self.skipped.extend(meta["skipped"])
    self.pending["skipped"].extend(meta["skipped"])

  def snapshot(self) -> dict:
    """The outcomes since the last shard, and where its tasks end: a shard summary's `meta`."""
    meta, self.pending = self.pending, {"task_end": self.pending["task_end"], "skipped": [], "warnings": []}
    return meta


def plan(corpus: corpus_lib.Corpus, corpus_name: str, build: storage.Build, data_cfg, strict: bool,
         modalities: list[dict], size: int, notes: list[str]) -> str:
  """What fixes the stored content: a killed build's shards are reused only under the same plan.

  Every spec counts whole (paths inside the build folder relative to it, arrays such as AV-digits' images by
  their SHA-256), with the corpus's identities, the data config, the modalities, the shard size and the notes
  (which name the seed of a seeded pairing).
  """
  def content(value):
    if isinstance(value, np.ndarray):
      return f"{value.dtype.str}{list(value.shape)}:{hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()}"
    if isinstance(value, dict):
      return {str(k): content(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [content(v) for v in value]
    if isinstance(value, (str, pathlib.Path)) and pathlib.Path(str(value)).is_relative_to(build.path):
      return str(pathlib.Path(str(value)).relative_to(build.path))
    return value
  text = json.dumps({"corpus": corpus_name, "data": data_cfg.to_dict(), "strict": strict, "modalities": modalities,
                     "examples_per_shard": size, "notes": notes, "identities": corpus.identities,
                     "specs": [content(spec) for spec in corpus.examples]}, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()


def adopt(build: storage.Build, plan: str) -> tuple[int, int]:
  """Moves the shards and spool of a killed build with the same plan into this one: (shards, spooled parts) reused."""
  def same(folder):
    try:
      return json.loads((folder / "plan.json").read_text(encoding="utf-8"))["plan"] == plan
    except (OSError, ValueError, KeyError):
      return False
  reused = []
  for name in (shards.STAGE, SPOOL):
    reused.append(sum(1 for _ in (build.path / name).glob("*/0*.json")) if build.adopt(name, same) else 0)
    (build.path / name).mkdir(exist_ok=True)
    (build.path / name / "plan.json").write_text(json.dumps({"plan": plan}))
  return reused[0], reused[1]
