"""`mmvae prep`: corpus layout -> per-example features on all cores -> TFDS array_record + manifest.json.

Everything that can be checked cheaply (arguments, config, the output folder) is checked before the
slow work; the dataset is built beside OUT and swapped in only when complete (storage.Build).
"""

import io
import multiprocessing
import os
import pathlib
import sys
import time
import warnings

import ml_collections
import numpy as np
from PIL import Image

from data_prep import audio, avdigits, digit_text, faces, mmdigits, storage, voxceleb1
from mmvae import config as config_lib
from mmvae import progress

SPLITS = ("train", "validation", "test")
STD_FLOOR = 1e-8  # a constant bin (e.g. all-zero) would otherwise divide by zero


def _load_config(config) -> ml_collections.ConfigDict:
  return config_lib.load(config) if isinstance(config, str) else config


def _face_shape(data_cfg) -> tuple[int, int, int, int]:
  k, size = int(data_cfg.frames_per_utterance), int(data_cfg.face_size)
  if k < 1 or size < 1:
    raise ValueError(f"data.frames_per_utterance={k} and data.face_size={size} must both be >= 1")
  return (k, size, size, 1 if data_cfg.grayscale else 3)


def _face(spec: dict, data_cfg) -> np.ndarray:
  """uint8 [K, S, S, C]: K frames of the utterance's video, or K copies of its paired image."""
  k, size = int(data_cfg.frames_per_utterance), int(data_cfg.face_size)
  if "face_image" in spec:  # AV-digits: an MNIST array, PNG-encoded so it takes the same path as a face file
    buf = io.BytesIO()
    Image.fromarray(np.asarray(spec["face_image"], np.uint8)).save(buf, format="PNG")
    one = faces.load_face(buf.getvalue(), size, bool(data_cfg.grayscale))
    return np.repeat(one[None], k, axis=0)
  return faces.face_stack(spec["faces"], k, size, bool(data_cfg.grayscale), spec.get("frame_shift", 0.5))


def _extract(task):
  """Worker: (index, spec, data_cfg, strict) -> (index, audio, face, skip record or None, warning records)."""
  index, spec, data_cfg, strict = task
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    index, audio_features, face, skip = _extract_one(index, spec, data_cfg, strict)
  notes = []
  for w in caught:
    if issubclass(w.category, (audio.AudioWarning, faces.FaceWarning)):
      # Inputs changed to fit (resampled up, clipped, padded, upscaled): recorded in manifest['warnings'].
      face_path = str(pathlib.Path(spec["faces"][0]).parent) if spec.get("faces") else spec["id"]
      notes.append({"path": spec["wav"] if issubclass(w.category, audio.AudioWarning) else face_path,
                    "warning": str(w.message)})
    else:
      warnings.showwarning(w.message, w.category, w.filename, w.lineno)
  return index, audio_features, face, skip, notes


def _extract_one(index, spec, data_cfg, strict):
  # Seeded by (data seed, example index): the result does not depend on the worker count.
  rng = np.random.default_rng((int(data_cfg.seed), index))
  train = spec["split"] == "train"  # random crops for training, centred crops elsewhere
  try:
    audio_features = np.asarray(audio.utterance_features(spec["wav"], data_cfg, train, rng), np.float32)
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
  return index, audio_features, face, None


def _modalities(corpus: voxceleb1.Corpus, audio_shape, face_shape) -> list[dict]:
  """The manifest entries of what the corpus stores: audio, its image modality, text when it has one, its extras."""
  entries = storage.audio_and_face(audio_shape, face_shape)
  entries[1]["name"] = corpus.image_name
  if corpus.text_vocab:
    entries.append({"name": "text", "kind": "tokens", "shape": [digit_text.MAX_TOKENS], "dtype": "int32",
                    "vocab": list(corpus.text_vocab)})
  entries.extend(dict(m, shape=[int(d) for d in m["shape"]]) for m in corpus.extra_modalities)
  return entries


def _extra(spec: dict, entry: dict) -> np.ndarray:
  """The spec's array of an extra modality, in its declared dtype; ValueError when its shape is not the declared one."""
  value = np.asarray(spec["extra"][entry["name"]], entry["dtype"])
  if value.shape != tuple(entry["shape"]):
    raise ValueError(f"{spec['id']}: {entry['name']} has shape {list(value.shape)}, the corpus declares "
                     f"{list(entry['shape'])}")
  return value


def _record(spec: dict, audio_features, face, corpus: voxceleb1.Corpus) -> dict:
  record = {"label": int(spec["label"]), "id": spec["id"], "identity": spec["identity"], "video": spec["video"],
            "gender": spec["gender"]}
  # Modalities after the text fields: one named like a field (multi-modal digits' `video` clip) replaces it.
  record.update({"audio": audio_features, corpus.image_name: face})
  if corpus.text_vocab:
    record["text"] = digit_text.encode(spec["text"])
  record.update({m["name"]: _extra(spec, m) for m in corpus.extra_modalities})
  return record


class _Extractor:
  """Runs `_extract` over tasks in order, in a process pool (or inline with one worker), with a progress bar."""

  def __init__(self, workers: int):
    self.workers = workers or os.cpu_count() or 1
    self.pool = None

  def __enter__(self):
    if self.workers > 1:
      # spawn, not fork: the parent may hold JAX or reader threads, which fork does not copy safely.
      self.pool = multiprocessing.get_context("spawn").Pool(self.workers)
    return self

  def __exit__(self, *exc):
    if self.pool is not None:
      self.pool.terminate() if exc[0] else self.pool.close()
      self.pool.join()

  def map(self, tasks: list, desc: str):
    chunk = max(1, min(64, len(tasks) // (self.workers * 8)))
    results = self.pool.imap(_extract, tasks, chunk) if self.pool else map(_extract, tasks)
    yield from progress.bar(results, total=len(tasks), desc=desc, unit="utt", dynamic_ncols=True)


def _checked_config(config):
  """(config, audio shape, face shape): a config that cannot give features fails before any work."""
  config = _load_config(config)
  return config, tuple(audio.feature_shape(config.data)), _face_shape(config.data)


def _moved(records: list[dict], build: pathlib.Path, out: pathlib.Path) -> list[dict]:
  """Records naming files inside the build folder (the synthetic corpus), renamed to where they end up."""
  def move(path):
    return str(out / pathlib.Path(path).relative_to(build)) if pathlib.Path(path).is_relative_to(build) else path
  return [dict(r, path=move(r["path"])) for r in records]


def _prepare(corpus: voxceleb1.Corpus, corpus_name: str, build: storage.Build, config, strict: bool, workers: int,
             notes: list[str]) -> dict:
  """Shared back half of every prep: features for every spec, normalisation, TFDS write, manifest, swap."""
  start = time.time()
  config, audio_shape, face_shape = _checked_config(config)
  notes = [*notes, *corpus.notes]
  data_cfg = config.data
  tasks = {s: [] for s in SPLITS}
  for index, spec in enumerate(corpus.examples):
    tasks[spec["split"]].append((index, spec, data_cfg, strict))
  tasks = {s: t for s, t in tasks.items() if t}
  if not tasks:
    raise ValueError(f"no usable examples found for {corpus_name}; skipped: {corpus.skipped[:5]}")
  specs = corpus.examples
  # Paths inside the build folder (the synthetic corpus) are recorded where they will be after the swap.
  skipped, changed = _moved(corpus.skipped, build.path, build.out), []

  seen = set()

  def keep(skip, notes_) -> bool:
    for note in _moved(notes_, build.path, build.out):
      if (note["path"], note["warning"]) not in seen:  # frames shared by utterances warn once, not per utterance
        seen.add((note["path"], note["warning"]))
        changed.append(note)
    skipped.extend(_moved([skip] if skip else [], build.path, build.out))
    return not skip
  normalisation = None

  with _Extractor(workers) as extractor:
    if data_cfg.time_average:
      # Small [F] vectors: keep them all, then standardise every split with the train split's per-bin stats.
      kept = {s: [] for s in tasks}
      for s, split_tasks in tasks.items():
        for index, a, f, skip, notes_ in extractor.map(split_tasks, f"{corpus_name} {s}"):
          if keep(skip, notes_):
            kept[s].append((index, a, f))
      if not kept.get("train"):
        raise ValueError(f"no usable training examples in {corpus_name}: cannot compute the audio normalisation")
      train_audio = np.stack([a for _, a, _ in kept["train"]]).astype(np.float64)
      mean, std = train_audio.mean(axis=0), np.maximum(train_audio.std(axis=0), STD_FLOOR)
      normalisation = {"mean": mean.tolist(), "std": std.tolist()}

      def split_fn(s):
        return lambda: (_record(specs[i], audio.apply_normalisation(a, normalisation), f, corpus) for i, a, f in kept[s])
      split_examples = {s: split_fn(s) for s in kept if kept[s]}
    else:
      # Full [T, F] spectrograms can outgrow memory: stream them from the pool straight into TFDS.
      def split_fn(s):
        def generate():
          for index, a, f, skip, notes_ in extractor.map(tasks[s], f"{corpus_name} {s}"):
            if keep(skip, notes_):
              yield _record(specs[index], a, f, corpus)
        return generate
      split_examples = {s: split_fn(s) for s in tasks}

    manifest = {"config": config.name, "data_config": data_cfg.to_dict(), "audio_normalisation": normalisation,
                "relevance": corpus.relevance,
                "identities": corpus.identities, "attributes": corpus.attributes, "skipped": skipped,
                "warnings": changed, "notes": notes}
    if corpus.split_policy:
      manifest["split_policy"] = corpus.split_policy
    manifest = storage.write_dataset(build.path, corpus_name, split_examples,
                                     _modalities(corpus, audio_shape, face_shape), manifest)
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


def prepare_voxceleb1(root, out, config="reference", strict: bool = False, workers: int = 0,
                      corpus: str = "voxceleb1", split_policy: str = "closed") -> dict:
  """Prepares a VoxCeleb1-layout root (wav/, faces/, vox1_meta.csv, iden_split.txt) into OUT."""
  config = _checked_config(config)[0]
  with storage.Build(out) as build:
    layout, notes = _vox_layout(root, strict, corpus, split_policy)
    return _prepare(layout, corpus, build, config, strict, workers, notes)


def _vox_layout(root, strict: bool, corpus: str, split_policy: str) -> tuple[voxceleb1.Corpus, list[str]]:
  """The corpus's example specs and the manifest notes: conventions, split policy, split warnings."""
  layout = voxceleb1.list_examples(root, strict=strict, split_policy=split_policy)
  notes = [f"{corpus}: label = index of the identity in the sorted list of identities present; faces per "
           "utterance (unzippedIntervalFaces) when present, else per video (faces/)",
           voxceleb1.SPLIT_NOTES[split_policy]]
  for warning in voxceleb1.split_warnings(layout.examples):
    print(f"mmvae prep: warning: {warning}", file=sys.stderr)
    notes.append(f"warning: {warning}")
  return layout, notes


def prepare_avdigits(fsdd, mnist, out, config="avdigits", seed: int = 0, strict: bool = False,
                     workers: int = 0) -> dict:
  """Prepares FSDD recordings paired with MNIST t10k digits of the same class into OUT."""
  config = _checked_config(config)[0]
  with storage.Build(out) as build:
    layout = avdigits.list_examples(fsdd, mnist, seed=seed, strict=strict)
    return _prepare(layout, "avdigits", build, config, strict, workers, [avdigits.NOTES + f" (seed {seed})"])


def prepare_mmdigits(fsdd, mnist, out, config="mcvs", seed: int = 0, strict: bool = False, workers: int = 0) -> dict:
  """Prepares the multi-modal digits corpus (audio, image, text, video, pointcloud of a digit) into OUT."""
  config = _checked_config(config)[0]
  missing = [k for k in ("video_frames", "points") if k not in config.data]
  if missing:
    raise ValueError(f"config {config.name!r} has no data.{' or data.'.join(missing)}, which mmdigits needs; "
                     "use --config mcvs, or a config that sets them")
  shape = {"video_frames": int(config.data.video_frames), "points": int(config.data.points),
           "face_size": int(config.data.face_size)}
  mmdigits.check_settings(**shape)
  with storage.Build(out) as build:
    layout = mmdigits.list_examples(fsdd, mnist, seed=seed, strict=strict, **shape)
    return _prepare(layout, "mmdigits", build, config, strict, workers, [mmdigits.NOTES + f" (seed {seed})"])


def prepare_synthetic(out, identities: int = 24, seed: int = 0, split: str = "closed", config="synthetic",
                      workers: int = 0) -> dict:
  """Generates the synthetic corpus into OUT/raw, then prepares it like VoxCeleb1.

  A killed run leaves its build folder beside OUT; the rerun takes a finished corpus from it instead
  of generating it again.
  """
  from data_prep import synthetic  # written alongside; imported late so other corpora do not need it
  args = dict(identities=identities, seed=seed, split=split)
  synthetic.check_args(**args)
  config = _checked_config(config)[0]
  with storage.Build(out, keep_on_error=True) as build:
    raw = build.path / "raw"
    if build.adopt("raw", lambda root: synthetic.is_corpus(root, **args)):
      print(f"reusing the synthetic corpus generated by an interrupted run -> {build.out / 'raw'}")
    else:
      synthetic.generate_corpus(raw, workers=workers, **args)
    layout, notes = _vox_layout(raw, False, "synthetic", "closed")  # the corpus's own iden_split.txt
    return _prepare(layout, "synthetic", build, config, False, workers, notes)
