"""`mmvae prep`'s shared back half: a corpus's example specs -> features on all cores (or on Apache Beam) ->
TFDS array_record shards + manifest.json.

Every corpus module (data_prep/voxceleb1.py, avdigits.py, ...) lists its examples and calls `run`. Everything
that can be checked cheaply (arguments, config, the output folder) is checked before the slow work; the dataset
is built beside OUT and swapped in only when complete (storage.Build).
"""

import collections
import itertools
import multiprocessing
import os
import pathlib
import shutil
import time

from data_prep import audio, corpora, example, resume, shards, spool, storage
from data_prep import corpus as corpus_lib
from mmvae import main_guard
from mmvae import progress, write_errors
from mmvae import workers as workers_lib


class _Extractor:
  """Runs `example.extract` over tasks in order, in a process pool (or inline with one worker), with a progress bar.

  At most PREFETCH chunks per worker are submitted ahead of the consumer, so a slow writer holds the
  workers back instead of piling their results up in memory.
  """

  PREFETCH = 2

  def __init__(self, workers: int):
    self.workers = main_guard.processes(workers or os.cpu_count() or 1)
    self.pool = None

  def __enter__(self):
    if self.workers > 1:
      # spawn, not fork: the parent may hold JAX or reader threads, which fork does not copy safely.
      # Its workers exit when prep dies (kill -9 included) and leave Ctrl-C to prep, which stops them.
      with workers_lib.starting():
        self.pool = multiprocessing.get_context("spawn").Pool(self.workers, initializer=workers_lib.exit_with_parent,
                                                              initargs=(os.getpid(),))
    return self

  def __exit__(self, *exc):
    if self.pool is not None:
      self.pool.terminate() if exc[0] else self.pool.close()
      self.pool.join()

  def _bounded(self, tasks: list, chunk: int):
    chunks = (tasks[i:i + chunk] for i in range(0, len(tasks), chunk))
    pending = collections.deque(self.pool.apply_async(_extract_many, (c,))
                                for c in itertools.islice(chunks, self.PREFETCH * self.workers))
    while pending:
      results = pending.popleft().get()
      for c in itertools.islice(chunks, 1):
        pending.append(self.pool.apply_async(_extract_many, (c,)))
      yield from results

  def map(self, tasks: list, desc: str):
    chunk = max(1, min(64, len(tasks) // (self.workers * 8)))
    results = self._bounded(tasks, chunk) if self.pool else map(example.extract, tasks)
    yield from progress.bar(results, total=len(tasks), desc=desc, unit="utt", dynamic_ncols=True)


def _extract_many(tasks: list) -> list:
  return [example.extract(t) for t in tasks]


def run(corpus: corpus_lib.Corpus, corpus_name: str, build: storage.Build, config, strict: bool, workers: int,
        notes: list[str], examples_per_shard: int | None = None, beam_options: str | None = None) -> dict:
  """Shared back half of every prep: features for every spec streamed into shards (normalised when
  data.time_average), manifest, swap. A killed prep's finished shards are reused (same plan); with beam_options
  (Beam pipeline options, "" for the local default) the shards are written on Apache Beam instead (beam_prep)."""
  start = time.time()
  config, audio_shape, face_shape = example.checked_config(config)
  notes = [*notes, *corpus.notes]
  data_cfg = config.data
  if audio.views(data_cfg) > 1:
    notes.append(f"audio views: {int(data_cfg.audio_views)} per utterance ([V, D], kind vector, views true); view 0 "
                 "the clean features, train views 1.. from augmented waves seeded by (data.seed, id, view); "
                 "validation and test hold copies of view 0; the normalisation is view 0's train statistics")
  steps = example.sequence_settings(data_cfg)[0] if corpus.frame_sequences else 0  # checked before any work
  tasks = {s: [] for s in example.SPLITS}
  for index, spec in enumerate(corpus.examples):
    tasks[spec["split"]].append((index, spec, data_cfg, strict, corpus.frame_sequences))
  tasks = {s: t for s, t in tasks.items() if t}
  if not tasks:
    raise ValueError(f"no usable examples found for {corpus_name}; skipped: {corpus.skipped[:5]}")
  specs = corpus.examples
  modalities = example.modalities(corpus, audio_shape, face_shape, data_cfg)
  size = examples_per_shard or shards.shard_size(modalities)
  # Named if the disk fills: what is in the build now (a generated corpus) and the shards still to write (the
  # training examples twice when they are spooled for the audio statistics first).
  spooled_too = len(tasks.get("train", ())) if data_cfg.time_average else 0
  build.needed = (write_errors.folder_bytes(build.path)
                  + shards.example_bytes(modalities) * (len(specs) + spooled_too))
  reused, spooled = (0, 0) if beam_options is not None else resume.adopt(
      build, resume.plan(corpus, corpus_name, build, data_cfg, strict, modalities, size, notes))
  if reused or spooled:
    print(f"resuming an interrupted prep of {corpus_name}: reusing its {reused} finished shards"
          + (f" and {spooled} spooled parts" if spooled else ""))
  outcomes = resume.Outcomes(corpus, build)
  normalisation = None
  spool_dir, stage = build.path / resume.SPOOL / "train", build.path / shards.STAGE

  def records(split: str, begin: int, normalise: bool):
    """The split's records from task BEGIN on, in task order; outcomes noted as they pass."""
    for position, (index, a, f, skip, notes_) in enumerate(
        extractor.map(tasks[split][begin:], f"{corpus_name} {split}"), begin):
      if outcomes.add(skip, notes_, position + 1):
        a = audio.apply_normalisation(a, normalisation) if normalise else a
        yield example.record(specs[index], a, f, corpus, steps)

  if data_cfg.time_average and "train" not in tasks:
    raise ValueError(f"no usable training examples in {corpus_name}: cannot compute the audio normalisation")
  if beam_options is not None:
    try:
      from data_prep import beam_prep  # pylint: disable=g-import-not-at-top  (Apache Beam is an optional extra)
    except ModuleNotFoundError as e:
      raise ValueError(corpora.BEAM_MISSING) from e
    normalisation = beam_prep.write_splits(tasks, corpus, corpus_name, build.path, modalities, size, steps, outcomes,
                                           bool(data_cfg.time_average), beam_options)
  else:
    with _Extractor(workers) as extractor:
      for s in tasks:
        to_spool = bool(data_cfg.time_average) and s == "train"  # its statistics first, then its shards
        done = spool.done_parts(spool_dir) if to_spool else shards.done_shards(stage, s)
        for part in done:
          outcomes.replay(part["meta"])
        begin = done[-1]["meta"]["task_end"] if done else 0
        outcomes.start(begin)
        if to_spool:
          stream, index = records(s, begin, False), len(done)
          for first in stream:
            spool.write_part(spool_dir, index, itertools.chain([first], itertools.islice(stream, size - 1)),
                             outcomes.snapshot)
            index += 1
          parts = spool.done_parts(spool_dir)
          if not parts:
            raise ValueError(f"no usable training examples in {corpus_name}: cannot compute the audio normalisation")
          # Per-bin train statistics over the spooled vectors, exactly as np.mean / np.std of their stack.
          normalisation = example.audio_statistics(spool_dir, parts)
          for part in parts[len(shards.done_shards(stage, s)):]:
            rows = (dict(r, audio=audio.apply_normalisation(r["audio"], normalisation))
                    for r in spool.read_part(spool_dir, part["index"]))
            shards.write_shard(stage, s, part["index"], rows, modalities)
        else:
          storage.write_split(build.path, s, records(s, begin, normalisation is not None), modalities, size,
                              start=len(done), meta=outcomes.snapshot)

  manifest = {"config": config.name, "data_config": example.data_config(data_cfg),
              "audio_normalisation": normalisation,
              "relevance": corpus.relevance,
              "identities": corpus.identities, "attributes": corpus.attributes, "skipped": outcomes.skipped,
              "warnings": outcomes.changed, "notes": notes}
  if corpus.split_policy:
    manifest["split_policy"] = corpus.split_policy
  written = [s for s in tasks if shards.done_shards(stage, s)]  # a split whose every example was skipped is left out
  if "train" in tasks and "train" not in written:
    raise ValueError(f"no usable training examples in {corpus_name}; see the skipped files: {outcomes.skipped[:3]}")
  manifest = storage.finish_dataset(build.path, corpus_name, modalities, manifest, written)
  shutil.rmtree(build.path / resume.SPOOL, ignore_errors=True)
  out = build.commit()
  _summary(manifest, out, time.time() - start)
  return manifest


def _summary(manifest: dict, out: pathlib.Path, seconds: float) -> None:
  splits = ", ".join(f"{s} {v['examples']}" for s, v in manifest["splits"].items())
  shapes = " ".join(f"{m['name']} {m['shape']}" for m in manifest["modalities"])
  print(f"prepared {manifest['corpus']} ({manifest['config']}): {splits}; skipped {len(manifest['skipped'])}; "
        f"inputs changed to fit {len(manifest['warnings'])} (manifest warnings); "
        f"{shapes}; {len(manifest['identities'])} identities; "
        f"-> {out} in {seconds:.1f} s")
