"""`mmvae prep --beam`: every split's extraction and shard writing as an Apache Beam pipeline.

The pipeline calls the functions local prep calls (example.extract, example.record, shards.write_shard,
spool.write_part / mean_std), so the dataset, its fingerprint, skipped files and warnings are local prep's:
- a ParDo extracts each task; its skipped file and warnings go to small JSON lines that the driver replays in
  task order through resume.Outcomes (the same order, paths and de-duplication as local prep);
- a kept example goes to shard (split, rank // S), its rank counting only the split's kept examples before it
  (local prep fills shards with kept examples in task order), S = shards.shard_size(modalities);
- each group, sorted by task position, is written by one write_shard call (or one spool part).
With data.time_average a first pipeline spools the unnormalised train split (spool.write_part), the driver
computes the per-bin statistics once (spool.mean_std: bit-identical to local prep), and a second pipeline
writes the train shards from the spool and the other splits normalised. pipeline.run then finishes
(shards.finalize, manifest, swap) as for local prep.

Workers write into the build folder beside OUT and read the corpus by the paths prep found, so on a cluster
runner OUT's parent folder and the corpus must be on a file system every worker mounts at the same path, and
the workers need mmvae installed. A killed Beam prep starts over (the runner retries failed bundles itself).
"""

import bisect
import dataclasses
import json
import pathlib
import shlex

import apache_beam as beam
from apache_beam.options import pipeline_options

from data_prep import audio, example, resume, shards, spool

# `--beam` alone: Beam's local runner with two worker processes (whose INFO lines would bury prep's own output).
DEFAULT_OPTIONS = ("--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing "
                   "--default_sdk_harness_log_level=WARNING")
OUTCOMES = "beam-outcomes"  # STAGE/beam-outcomes-<run>*: one JSON line per task with a skipped file or warnings


class _Extract(beam.DoFn):
  """(split, position, task) -> (split, position, record) of a kept example; its outcome and skip tagged."""

  def __init__(self, corpus, steps: int, normalisation):
    self.corpus, self.steps, self.normalisation = corpus, steps, normalisation

  def process(self, element):
    split, position, task = element
    _, features, parts, skip, notes = example.extract(task)
    if skip or notes:
      yield beam.pvalue.TaggedOutput("outcome", json.dumps({"split": split, "position": position, "skip": skip,
                                                            "notes": notes}))
    if skip:
      yield beam.pvalue.TaggedOutput("skipped", (split, position))
      return
    if self.normalisation is not None:
      features = audio.apply_normalisation(features, self.normalisation)
    record = example.record(task[1], features, parts, self.corpus, self.steps)
    yield split, position, record


def _by_split(pairs) -> dict[str, list[int]]:
  """{split: sorted positions} of the skipped tasks."""
  out = {}
  for split, position in pairs:
    out.setdefault(split, []).append(position)
  return {split: sorted(positions) for split, positions in out.items()}


def _keyed(element, size: int, skipped: dict):
  """((split, shard), (position, record)): shard = the example's rank among its split's kept examples // SIZE."""
  split, position, record = element
  rank = position - bisect.bisect_left(skipped.get(split, []), position)
  return (split, rank // size), (position, record)


def _write_group(item, stage: str, spool_dir: str | None, modalities: list[dict]) -> None:
  """One shard (or, when spooling, one spool part) from its records in task order."""
  (split, index), rows = item
  records = [record for _, record in sorted(rows, key=lambda row: row[0])]
  if spool_dir:
    spool.write_part(spool_dir, index, records)
  else:
    shards.write_shard(stage, split, index, records, modalities)


def _shard_from_spool(index: int, spool_dir: str, stage: str, modalities: list[dict], normalisation: dict) -> None:
  """Train shard INDEX from spool part INDEX, normalised as local prep does."""
  rows = (dict(r, audio=audio.apply_normalisation(r["audio"], normalisation))
          for r in spool.read_part(spool_dir, index))
  shards.write_shard(stage, "train", index, rows, modalities)


def _run(options: str, run: str, tasks: dict, corpus, steps: int, size: int, stage: pathlib.Path,
         modalities: list[dict], spool_dir: pathlib.Path, to_spool: bool, normalisation=None,
         spooled: list[int] = ()) -> list[dict]:
  """One pipeline: extracts TASKS ({split: [task]}) into shards (TO_SPOOL: into spool parts), and writes the train
  shards of the SPOOLED parts; returns the outcomes of its tasks (those with a skipped file or warnings)."""
  prefix = stage / f"{OUTCOMES}-{run}"
  elements = [(split, position, task) for split, split_tasks in tasks.items()
              for position, task in enumerate(split_tasks)]
  with beam.Pipeline(options=pipeline_options.PipelineOptions(shlex.split(options))) as p:
    if elements:
      extracted = (p | "tasks" >> beam.Create(elements)
                   | "extract" >> beam.ParDo(_Extract(corpus, steps, normalisation)).with_outputs(
                       "outcome", "skipped", main="kept"))
      _ = extracted.outcome | "outcomes" >> beam.io.WriteToText(str(prefix))
      skipped = extracted.skipped | "skipped" >> beam.combiners.ToList() | "by split" >> beam.Map(_by_split)
      _ = (extracted.kept | "key" >> beam.Map(_keyed, size, beam.pvalue.AsSingleton(skipped))
           | "group" >> beam.GroupByKey()
           | "write" >> beam.Map(_write_group, str(stage), str(spool_dir) if to_spool else None, modalities))
    if spooled:
      _ = (p | "parts" >> beam.Create(list(spooled))
           | "spooled" >> beam.Map(_shard_from_spool, str(spool_dir), str(stage), modalities, normalisation))
  found = []
  for path in sorted(stage.glob(f"{OUTCOMES}-{run}*")):
    found.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
    path.unlink()
  return found


def write_splits(tasks: dict, corpus, corpus_name: str, build_path: pathlib.Path, modalities: list[dict], size: int,
                 steps: int, outcomes: resume.Outcomes, time_average: bool, options: str = "") -> dict | None:
  """Writes every split's shards into BUILD/.shards on Beam (OPTIONS: pipeline options, "" = DEFAULT_OPTIONS);
  adds the tasks' skipped files and warnings to OUTCOMES in task order; returns the audio normalisation."""
  options = options.strip() or DEFAULT_OPTIONS
  print(f"preparing {corpus_name} on Apache Beam: {options}")
  stage, spool_dir = build_path / shards.STAGE, build_path / resume.SPOOL / "train"
  stage.mkdir(parents=True, exist_ok=True)
  # Workers need the corpus's modality settings, not its list of every example.
  lite = dataclasses.replace(corpus, examples=[], skipped=[], identities=[])
  found, normalisation, parts = [], None, []
  if time_average:
    found += _run(options, "spool", {"train": tasks["train"]}, lite, steps, size, stage, modalities, spool_dir, True)
    parts = spool.done_parts(spool_dir)
    if not parts:
      raise ValueError(f"no usable training examples in {corpus_name}: cannot compute the audio normalisation")
    # Once, in the driver, over the spool in part order: bit-identical to local prep (a CombineFn would not be).
    normalisation = example.audio_statistics(spool_dir, parts)
  rest = {s: t for s, t in tasks.items() if not (time_average and s == "train")}
  if rest or parts:
    found += _run(options, "shards", rest, lite, steps, size, stage, modalities, spool_dir, False,
                  normalisation, [part["index"] for part in parts])
  order = {s: i for i, s in enumerate(example.SPLITS)}
  for outcome in sorted(found, key=lambda o: (order[o["split"]], o["position"])):
    outcomes.add(outcome["skip"], outcome["notes"], outcome["position"] + 1)
  return normalisation
