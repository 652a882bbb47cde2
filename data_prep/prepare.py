"""`mmvae prep`: corpus layout -> per-example features on all cores -> TFDS array_record + manifest.json.

Everything that can be checked cheaply (arguments, config, the output folder) is checked before the
slow work; the dataset is built beside OUT and swapped in only when complete (storage.Build).
"""

import collections
import io
import itertools
import multiprocessing
import os
import pathlib
import shutil
import sys
import time
import warnings

import ml_collections
import numpy as np
from PIL import Image

from data_prep import audio, avdigits, corpora, digit_text, faces, mmdigits, resume, shards, spool, storage, voxceleb1
from data_prep import corpus as corpus_lib
from mmvae import config as config_lib
from mmvae import main_guard
from mmvae import progress, write_errors
from mmvae import workers as workers_lib

SPLITS = ("train", "validation", "test")
STD_FLOOR = 1e-8  # a constant bin (e.g. all-zero) would otherwise divide by zero
SEQUENCES = ("audio_frames", "face_frames")  # a corpus with per-utterance frame folders (Corpus.frame_sequences)


def _load_config(config) -> ml_collections.ConfigDict:
  return config_lib.load(config) if isinstance(config, str) else config


def _face_shape(data_cfg) -> tuple[int, int, int, int]:
  k, size = int(data_cfg.frames_per_utterance), int(data_cfg.face_size)
  if k < 1 or size < 1:
    raise ValueError(f"data.frames_per_utterance={k} and data.face_size={size} must both be >= 1")
  return (k, size, size, 1 if data_cfg.grayscale else 3)


def _face(spec: dict, data_cfg) -> np.ndarray:
  """uint8 [K, S, S, C]: K frames of the utterance's video, or its paired images (AV-digits: the first, then
  `more_images`, cycled to K)."""
  k, size = int(data_cfg.frames_per_utterance), int(data_cfg.face_size)
  if "face_image" in spec:  # AV-digits: MNIST arrays, PNG-encoded so they take the same path as a face file
    arrays = [spec["face_image"], *spec.get("more_images", ())]
    loaded = []
    for array in arrays[:k]:
      buf = io.BytesIO()
      Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
      loaded.append(faces.load_face(buf.getvalue(), size, bool(data_cfg.grayscale)))
    return np.stack([loaded[i % len(loaded)] for i in range(k)])
  return faces.face_stack(spec["faces"], k, size, bool(data_cfg.grayscale), spec.get("frame_shift", 0.5))


def _sequence_settings(data_cfg) -> tuple[int, float]:
  """(data.sequence_steps, data.video_fps), checked."""
  steps, fps = int(audio._cfg(data_cfg, "sequence_steps")), float(audio._cfg(data_cfg, "video_fps"))
  if steps < 1 or fps <= 0:
    raise ValueError(f"data.sequence_steps={steps} must be >= 1 and data.video_fps={fps} positive")
  return steps, fps


def _sequence_modalities(data_cfg, face_shape) -> list[dict]:
  """Manifest entries of audio_frames and face_frames (kind `sequence`: [T, D + 1] with the mask column)."""
  steps, fps = _sequence_settings(data_cfg)
  n_mels = int(audio._cfg(data_cfg, "n_mels"))
  _, size, _, channels = face_shape
  return [{"name": "audio_frames", "kind": "sequence", "shape": [steps, n_mels + 1], "dtype": "float32",
           "step_shape": [n_mels], "step_seconds": 1.0 / fps},
          {"name": "face_frames", "kind": "sequence", "shape": [steps, size * size * channels + 1], "dtype": "float32",
           "step_shape": [size, size, channels], "step_seconds": 1.0 / fps}]


def _sequences(spec: dict, wave: np.ndarray, data_cfg, train: bool, rng: np.random.Generator) -> dict:
  """{audio_frames: float32 [L, n_mels], face_frames: uint8 [L, S, S, C]}: step t of both is [t/fps, (t+1)/fps) s.

  The utterance's audio steps (audio.frame_features) and its frames (frame k at k/fps s) are aligned by time
  and cut to the shorter (a ClipWarning when their counts differ); of more than data.sequence_steps steps a
  window is kept, seeded random for train and centred otherwise, the same for both.
  """
  steps, fps = _sequence_settings(data_cfg)
  try:
    sound = audio.frame_features(wave, data_cfg, fps)
  except audio.AudioError as e:
    raise audio.AudioError(f"{spec['wav']}: {e}") from None
  frames = voxceleb1.clip_frames(spec["clip"])
  n = min(len(sound), len(frames))
  if len(frames) != len(sound):
    warnings.warn(f"{len(frames)} frames at {fps:g} fps for {len(sound)} audio steps of {1000 / fps:g} ms: aligned "
                  f"from the start, the first {n} kept", faces.ClipWarning, stacklevel=2)
  if n < 1:
    raise faces.FaceError(f"{spec['clip']}: no frames")
  start = 0
  if n > steps:
    start = int(rng.integers(0, n - steps + 1)) if train else (n - steps) // 2
    n = steps
  face = faces.frame_sequence(frames[start:start + n], int(data_cfg.face_size), bool(data_cfg.grayscale))
  return {"audio_frames": sound[start:start + n], "face_frames": face}


def _extract(task):
  """Worker: (index, spec, data_cfg, strict, sequences) -> (index, audio, {modality: array}, skip or None, warnings)."""
  index, spec, data_cfg, strict, sequences = task
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    index, audio_features, parts, skip = _extract_one(index, spec, data_cfg, strict, sequences)
  notes = []
  for w in caught:
    if issubclass(w.category, (audio.AudioWarning, faces.FaceWarning)):
      # Inputs changed to fit (resampled up, clipped, padded, upscaled): recorded in manifest['warnings'].
      face_path = str(pathlib.Path(spec["faces"][0]).parent) if spec.get("faces") else spec["id"]
      if issubclass(w.category, faces.ClipWarning):
        face_path = spec["clip"]
      notes.append({"path": spec["wav"] if issubclass(w.category, audio.AudioWarning) else face_path,
                    "warning": str(w.message)})
    else:
      warnings.showwarning(w.message, w.category, w.filename, w.lineno)
  return index, audio_features, parts, skip, notes


def _extract_one(index, spec, data_cfg, strict, sequences=False):
  # Seeded by (data seed, example index): the result does not depend on the worker count.
  rng = np.random.default_rng((int(data_cfg.seed), index))
  train = spec["split"] == "train"  # random crops for training, centred crops elsewhere
  try:
    # One read of the WAV serves the features below and, with sequences, the frame features.
    wave = audio.load_wav(spec["wav"], int(data_cfg.sample_rate), audio.resampler(data_cfg)) if sequences else spec["wav"]
    audio_features = np.asarray(audio.utterance_features(wave, data_cfg, train, rng, name=spec["wav"]), np.float32)
  except (audio.AudioError, OSError) as e:
    if strict:
      raise
    return index, None, None, {"path": spec["wav"], "reason": f"{type(e).__name__}: {e}"}
  try:
    face = _face(spec, data_cfg)
  except (faces.FaceError, OSError) as e:
    if strict:
      raise
    path = str(pathlib.Path(spec["faces"][0]).parent) if spec.get("faces") else spec["id"]
    return index, None, None, {"path": path, "reason": f"{type(e).__name__}: {e} (utterance {spec['id']})"}
  parts = {"face": face}
  if sequences:
    try:
      # Its own generator: the audio and face above stay those of a prep without sequences.
      parts.update(_sequences(spec, wave, data_cfg, train, np.random.default_rng((int(data_cfg.seed), index, 1))))
    except (audio.AudioError, faces.FaceError, OSError) as e:
      if strict:
        raise
      return index, None, None, {"path": spec["clip"], "reason": f"{type(e).__name__}: {e} (utterance {spec['id']})"}
  return index, audio_features, parts, None


def _modalities(corpus: corpus_lib.Corpus, audio_shape, face_shape, data_cfg=None) -> list[dict]:
  """The manifest entries of what the corpus stores: audio, its image modality, text when it has one, its extras,
  then audio_frames and face_frames when it has per-utterance frame folders."""
  entries = storage.audio_and_face(audio_shape, face_shape)
  entries[1]["name"] = corpus.image_name
  if corpus.text_vocab:
    entries.append({"name": "text", "kind": "tokens", "shape": [digit_text.MAX_TOKENS], "dtype": "int32",
                    "vocab": list(corpus.text_vocab)})
  entries.extend(dict(m, shape=[int(d) for d in m["shape"]]) for m in corpus.extra_modalities)
  if corpus.frame_sequences:
    entries.extend(_sequence_modalities(data_cfg, face_shape))
  return entries


def _extra(spec: dict, entry: dict) -> np.ndarray:
  """The spec's array of an extra modality, in its declared dtype; ValueError when its shape is not the declared one."""
  value = np.asarray(spec["extra"][entry["name"]], entry["dtype"])
  if value.shape != tuple(entry["shape"]):
    raise ValueError(f"{spec['id']}: {entry['name']} has shape {list(value.shape)}, the corpus declares "
                     f"{list(entry['shape'])}")
  return value


def _record(spec: dict, audio_features, parts: dict, corpus: corpus_lib.Corpus, steps: int = 0) -> dict:
  """One stored example; parts: the worker's arrays (face; audio_frames and face_frames as steps, packed here)."""
  record = {"label": int(spec["label"]), "id": spec["id"], "identity": spec["identity"], "video": spec["video"],
            "gender": spec["gender"]}
  # Modalities after the text fields: one named like a field (multi-modal digits' `video` clip) replaces it.
  record.update({"audio": audio_features, corpus.image_name: parts["face"]})
  if corpus.text_vocab:
    record["text"] = digit_text.encode(spec["text"])
  record.update({m["name"]: _extra(spec, m) for m in corpus.extra_modalities})
  if corpus.frame_sequences:
    from mmvae.modalities import sequence  # pylint: disable=g-import-not-at-top  (imports JAX: only when needed)
    record["audio_frames"] = sequence.pack(parts["audio_frames"], steps)
    record["face_frames"] = sequence.pack(parts["face_frames"].astype(np.float32) / np.float32(255.0), steps)
  return record


class _Extractor:
  """Runs `_extract` over tasks in order, in a process pool (or inline with one worker), with a progress bar.

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
    results = self._bounded(tasks, chunk) if self.pool else map(_extract, tasks)
    yield from progress.bar(results, total=len(tasks), desc=desc, unit="utt", dynamic_ncols=True)


def _extract_many(tasks: list) -> list:
  return [_extract(t) for t in tasks]


def _checked_config(config):
  """(config, audio shape, face shape): a config that cannot give features fails before any work."""
  config = _load_config(config)
  return config, tuple(audio.feature_shape(config.data)), _face_shape(config.data)


def _prepare(corpus: corpus_lib.Corpus, corpus_name: str, build: storage.Build, config, strict: bool, workers: int,
             notes: list[str], examples_per_shard: int | None = None, beam_options: str | None = None) -> dict:
  """Shared back half of every prep: features for every spec streamed into shards (normalised when
  data.time_average), manifest, swap. A killed prep's finished shards are reused (same plan); with beam_options
  (Beam pipeline options, "" for the local default) the shards are written on Apache Beam instead (beam_prep)."""
  start = time.time()
  config, audio_shape, face_shape = _checked_config(config)
  notes = [*notes, *corpus.notes]
  data_cfg = config.data
  steps = _sequence_settings(data_cfg)[0] if corpus.frame_sequences else 0  # checked before any work
  tasks = {s: [] for s in SPLITS}
  for index, spec in enumerate(corpus.examples):
    tasks[spec["split"]].append((index, spec, data_cfg, strict, corpus.frame_sequences))
  tasks = {s: t for s, t in tasks.items() if t}
  if not tasks:
    raise ValueError(f"no usable examples found for {corpus_name}; skipped: {corpus.skipped[:5]}")
  specs = corpus.examples
  modalities = _modalities(corpus, audio_shape, face_shape, data_cfg)
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
        yield _record(specs[index], audio.apply_normalisation(a, normalisation) if normalise else a, f, corpus, steps)

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
          normalisation = spool.mean_std(spool_dir, parts, "audio", STD_FLOOR)
          for part in parts[len(shards.done_shards(stage, s)):]:
            rows = (dict(r, audio=audio.apply_normalisation(r["audio"], normalisation))
                    for r in spool.read_part(spool_dir, part["index"]))
            shards.write_shard(stage, s, part["index"], rows, modalities)
        else:
          storage.write_split(build.path, s, records(s, begin, normalisation is not None), modalities, size,
                              start=len(done), meta=outcomes.snapshot)

  manifest = {"config": config.name, "data_config": data_cfg.to_dict(), "audio_normalisation": normalisation,
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


def prepare_voxceleb1(root, out, config="voxceleb1", strict: bool = False, workers: int = 0,
                      corpus: str = "voxceleb1", split_policy: str = "closed", beam_options: str | None = None) -> dict:
  """Prepares a VoxCeleb1-layout root (wav/, faces/, vox1_meta.csv, iden_split.txt) into OUT (on Beam with
  beam_options: see _prepare)."""
  config = _checked_config(config)[0]
  with storage.Build(out, inputs={"--root": root}) as build:
    layout, notes = _vox_layout(root, strict, corpus, split_policy)
    return _prepare(layout, corpus, build, config, strict, workers, notes, beam_options=beam_options)


def _vox_layout(root, strict: bool, corpus: str, split_policy: str,
                face_source: str = "utterance") -> tuple[corpus_lib.Corpus, list[str]]:
  """The corpus's example specs and the manifest notes: conventions, split policy, split warnings."""
  layout = voxceleb1.list_examples(root, strict=strict, split_policy=split_policy, face_source=face_source)
  faces_from = "faces per utterance (unzippedIntervalFaces) when present, else per video (faces/)"
  if face_source == "video":
    faces_from = "faces per video (faces/)" + ("; the per-utterance clips (unzippedIntervalFaces) feed only the "
                                               "frame sequences" if layout.frame_sequences else "")
  notes = [f"{corpus}: label = index of the identity in the sorted list of identities present; {faces_from}",
           voxceleb1.SPLIT_NOTES[split_policy]]
  if layout.frame_sequences:
    notes.append("frame sequences: per utterance, step t of audio_frames (the log-mel of [t, t + 1) / data.video_fps "
                 "s of the WAV, each band standardised over the utterance) and of face_frames (its per-utterance "
                 "frame t, frame k taken at k / data.video_fps s, values in [0, 1]) cover the same time; at most "
                 "data.sequence_steps steps: train a seeded random window, validation and test the centred one; "
                 "frame counts that differ from the audio's are cut to the shorter (manifest warnings)")
  for warning in voxceleb1.split_warnings(layout.examples):
    print(f"mmvae prep: warning: {warning}", file=sys.stderr)
    notes.append(f"warning: {warning}")
  return layout, notes


def prepare_avdigits(fsdd, mnist, out, config="avdigits", seed: int = 0, strict: bool = False,
                     workers: int = 0, beam_options: str | None = None) -> dict:
  """Prepares FSDD recordings paired with MNIST t10k digits of the same class into OUT."""
  config = _checked_config(config)[0]
  with storage.Build(out, inputs={"--fsdd": fsdd, "--mnist": mnist}) as build:
    k = int(config.data.frames_per_utterance)
    layout = avdigits.list_examples(fsdd, mnist, seed=seed, strict=strict, train_images=k)
    more = (f"; each training recording also holds up to {k - 1} further distinct images of its digit "
            "(its stored frames)") if k > 1 else ""
    return _prepare(layout, "avdigits", build, config, strict, workers, [avdigits.NOTES + f" (seed {seed}){more}"],
                    beam_options=beam_options)


def prepare_mmdigits(fsdd, mnist, out, config="mcvs", seed: int = 0, strict: bool = False, workers: int = 0,
                     beam_options: str | None = None) -> dict:
  """Prepares the multi-modal digits corpus (audio, image, text, video, pointcloud of a digit) into OUT."""
  config = _checked_config(config)[0]
  missing = [k for k in ("video_frames", "points") if k not in config.data]
  if missing:
    raise ValueError(f"config {config.name!r} has no data.{' or data.'.join(missing)}, which mmdigits needs; "
                     "use --config mcvs, or a config that sets them")
  shape = {"video_frames": int(config.data.video_frames), "points": int(config.data.points),
           "face_size": int(config.data.face_size)}
  mmdigits.check_settings(**shape)
  with storage.Build(out, inputs={"--fsdd": fsdd, "--mnist": mnist}) as build:
    layout = mmdigits.list_examples(fsdd, mnist, seed=seed, strict=strict, **shape)
    return _prepare(layout, "mmdigits", build, config, strict, workers, [mmdigits.NOTES + f" (seed {seed})"],
                    beam_options=beam_options)


def prepare_synthetic(out, identities: int = 24, seed: int = 0, split: str = "closed", config="synthetic",
                      workers: int = 0, video: bool = False, beam_options: str | None = None, **corpus) -> dict:
  """Generates the synthetic corpus into OUT/raw, then prepares it like VoxCeleb1.

  video: the corpus with lip-synced per-utterance frames, prepared with audio_frames and face_frames too
  (its audio and face modalities are those of the corpus without video). A killed run leaves its build
  folder beside OUT; the rerun takes a finished corpus from it instead of generating it again.
  corpus: further generate_corpus arguments (videos_per_identity, utterances_per_video, frames_per_video,
  utterance_seconds), e.g. for a small corpus. beam_options: prepare it on Apache Beam (see _prepare).
  """
  from data_prep import synthetic  # written alongside; imported late so other corpora do not need it
  args = dict(identities=identities, seed=seed, split=split, video=bool(video), **corpus)
  synthetic.check_args(**args)
  config = _checked_config(config)[0]
  with storage.Build(out, keep_on_error=True) as build:
    raw = build.path / "raw"
    if build.adopt("raw", lambda root: synthetic.is_corpus(root, **args)):
      print(f"reusing the synthetic corpus generated by an interrupted run -> {build.out / 'raw'}")
    else:
      synthetic.generate_corpus(raw, workers=workers, **args)
    # The corpus's own iden_split.txt; `face` from the per-video stills, as without video.
    layout, notes = _vox_layout(raw, False, "synthetic", "closed", face_source="video")
    return _prepare(layout, "synthetic", build, config, False, workers, notes, beam_options=beam_options)
