"""Prepared-dataset storage: TFDS array_record shards (data_prep/shards.py), then manifest.json written last.

Prep never works inside OUT: `Build` makes a fresh folder beside it (`.OUT.partial-PID@HOST`), prep
fills it, and only a complete dataset is swapped in for OUT (old renamed away, new renamed in, old
deleted). An interrupted or failed prep leaves the previous dataset untouched, and a rerun can adopt
the finished parts of the killed build (one that ran out of space or hit a read-only place removes its
build and says so in one line). Only prep's own entries (OWN_ENTRIES) are ever deleted: anything
else in a replaced dataset moves into the new one. OUT is refused before any work when it is a file,
unwritable, a non-empty folder that holds no mmvae dataset, holds a training run, or is or holds an input.
"""

import hashlib
import importlib.metadata
import itertools
import json
import keyword
import os
import pathlib
import re
import shutil
import sys
from typing import Callable, Iterable

from data_prep import shards
from mmvae import files, locks, write_errors

FORMAT = "mmvae-prepared/1"
VERSION = shards.VERSION
MANIFEST = "manifest.json"
MARKER = ".mmvae-build"  # in every folder prep builds: tells an interrupted mmvae build from a user's folder
TEXT_FEATURES = shards.TEXT_FEATURES
RESERVED = ("label", *TEXT_FEATURES)  # per-example fields beside the modalities: no modality takes these names


def valid_name(name: str) -> bool:
  """Whether `name` can name a modality: a Python identifier, not a keyword, not a per-example field."""
  return name.isidentifier() and not keyword.iskeyword(name) and name not in RESERVED
# What prep writes at the top of a dataset folder: a re-prep replaces these and keeps every other entry (a user's).
OWN_ENTRIES = (MANIFEST, MARKER, "tfds", "columns", "raw", ".shards", ".spool", ".yt8m-gunzip", "tokenizer.json")
RUN_FILES = ("run.json", "config.json", "checkpoints")  # a training workdir: never inside a dataset


# Corpus -> TFDS builder name (the folder under OUT/tfds/); register_corpus adds new corpora.
BUILDERS = {corpus: f"mmvae_{corpus}" for corpus in ("voxceleb1", "avdigits", "synthetic", "mmdigits")}


def versions() -> dict:
  """Versions of the packages that wrote the dataset."""
  out = {}
  for package in ("mmvae", "tensorflow_datasets", "numpy", "jax", "librosa", "soxr"):  # librosa, soxr: the audio features
    try:
      out[package] = importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
      out[package] = None
  return out




def _is_own(folder: pathlib.Path) -> bool:
  """Whether prep may replace a folder: empty, a prepared dataset, or a build it left behind."""
  if not any(folder.iterdir()) or (folder / MARKER).is_file():
    return True
  try:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
  return path == folder or folder in path.parents


def check_out(out, inputs=()) -> pathlib.Path:
  """OUT as an absolute path, or ValueError when prep must not write or replace it; checked before any work.

  inputs: {flag: path} (or (flag, path) pairs) of what prep reads: OUT must neither be nor hold one, since
  replacing OUT would delete it.
  """
  out = pathlib.Path(os.path.realpath(out))  # a symlinked OUT: build beside the folder it points to
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {out} is a file, not a folder")
  for flag, path in (inputs.items() if isinstance(inputs, dict) else inputs):
    if path is not None and _inside(pathlib.Path(os.path.realpath(path)), out):
      raise ValueError(f"--out {out} holds the input {flag} {path}; replacing it would delete the input: "
                       "write the dataset to another folder")
  run = [name for name in RUN_FILES if (out / name).exists()]
  if run:
    raise ValueError(f"--out {out} holds a training run ({', '.join(run)}); prep would replace it: choose another "
                     "folder for the dataset")
  if out.is_dir() and not _is_own(out):
    raise ValueError(f"--out {out} is not empty and holds no mmvae dataset (no {MANIFEST}); prep replaces only "
                     "its own datasets: choose an empty or new folder")
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create {out.parent} for --out: {e.strerror}") from None
  for folder in (out.parent, out) if out.is_dir() else (out.parent,):
    if not os.access(folder, os.W_OK | os.X_OK):
      raise ValueError(f"--out {out}: {folder} is not writable")
  return out


def _remove_own(folder: pathlib.Path) -> None:
  """Deletes what prep wrote in FOLDER, then FOLDER if nothing else is left (a user's file never goes)."""
  if not folder.is_dir():
    return
  for entry in folder.iterdir():
    if entry.name in OWN_ENTRIES or entry.name.startswith(f".{MANIFEST}."):
      shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
  try:
    folder.rmdir()
  except OSError:
    print(f"mmvae prep: kept {folder}: it holds files prep did not write", file=sys.stderr)


def _killed_builds(out: pathlib.Path) -> list[pathlib.Path]:
  """Leftover build folders of OUT (`.OUT.partial-PID@HOST`, `.OUT.old-PID@HOST`) of gone processes, newest first."""
  found = []
  for p in out.parent.iterdir():
    m = re.fullmatch(rf"\.{re.escape(out.name)}\.(partial|old)-(\d+)@(.+)", p.name)
    if m and p.is_dir() and not locks.is_running({"pid": int(m[2]), "host": m[3]}):
      found.append(p)
  return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


class Build:
  """A fresh folder beside OUT that prep fills; `commit` swaps it in for OUT, leaving nothing half-done.

  Leftovers of killed builds into the same OUT (their process gone) are removed after a commit; until
  then `adopt` can move finished parts out of them (the synthetic corpus).
  """

  def __init__(self, out, keep_on_error: bool = False, inputs=()):
    self.out = check_out(out, inputs)
    me = locks.this_process()
    self.path = self.out.parent / f".{self.out.name}.partial-{me['pid']}@{me['host']}"
    self.keep_on_error = keep_on_error
    self.needed = 0  # bytes the whole build takes, once prep can tell (named when the disk fills)
    self.stale = _killed_builds(self.out)
    try:
      self.path.mkdir()
    except OSError as e:
      raise ValueError(f"cannot create a build folder beside --out {self.out}: {e.strerror}") from None
    (self.path / MARKER).write_text(json.dumps(me) + "\n")

  def adopt(self, name: str, accept: Callable[[pathlib.Path], bool]) -> bool:
    """Moves NAME from the newest killed build that holds an acceptable one into this build."""
    for stale in self.stale:
      if (stale / MARKER).is_file() and (stale / name).exists() and accept(stale / name):
        os.replace(stale / name, self.path / name)
        return True
    return False

  def commit(self) -> pathlib.Path:
    """Replaces OUT by the finished build, carrying over entries prep did not write; returns OUT.

    The old OUT is renamed away first and its own entries deleted last; a user's file is moved into the
    new dataset, and a folder that still holds one is never deleted (see _remove_own).
    """
    old = None
    if self.out.exists():
      if not self.out.is_dir() or not _is_own(self.out):  # changed while prep ran
        self.keep_on_error = True
        raise ValueError(f"--out {self.out} was replaced by something else while prep ran; the new dataset is "
                         f"kept in {self.path}")
      old = self.path.with_name(self.path.name.replace(".partial-", ".old-", 1))
      os.replace(self.out, old)
      for entry in sorted(old.iterdir()):
        if entry.name not in OWN_ENTRIES and not (self.path / entry.name).exists():
          os.replace(entry, self.path / entry.name)
    os.replace(self.path, self.out)
    for folder in ([old] if old else []) + self.stale:
      _remove_own(folder)
    return self.out

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    code = write_errors.refused(exc, self.path) if exc_type is not None and issubclass(exc_type, Exception) else None
    if code is not None:  # a full disk or a read-only place: the build goes (whatever keep_on_error), one line says why
      written = write_errors.folder_bytes(self.path)
      if self.path.exists():
        _remove_own(self.path)
      raise write_errors.WriteError(write_errors.message(code, self.out, max(written, self.needed),
                                                         at_least=not self.needed)) from None
    # Ctrl-C keeps the build, as a kill would: the rerun adopts its finished parts (data_prep/resume.py).
    interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
    if exc_type is not None and self.path.exists() and not self.keep_on_error and not interrupted:
      _remove_own(self.path)


def fingerprint(manifest: dict, split_digests: dict[str, str]) -> str:
  """SHA-256 over every stored example (in order, per split) and the manifest's content keys.

  split_digests: per split, SHA-256 over the examples' own digests in stored order (shards.example_digest),
  so neither the shard size, the worker count nor a resume changes it. A function of the content, not the
  path or the file bytes (TFDS's serialisation is not byte-stable): a moved dataset keeps it, a re-prepared
  one with other inputs or settings gets a new one. Versions, notes, skipped files and warnings do not count.
  """
  essentials = {k: manifest.get(k) for k in ("corpus", "data_config", "audio_normalisation", "identities",
                                              "splits", "features")}
  # Kinds and vocabularies count too; a voice-and-face dataset keeps the fingerprint it had before
  # manifests declared modalities (its two entries follow from `features`).
  features = manifest.get("features") or {}
  if manifest.get("modalities") and manifest["modalities"] != audio_and_face(
      features.get("audio", {}).get("shape", []), features.get("face", {}).get("shape", [])):
    essentials["modalities"] = manifest["modalities"]
  text = json.dumps({"examples": split_digests, **essentials}, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()


def audio_and_face(audio_shape, face_shape) -> list[dict]:
  """The manifest modalities of a voice-and-face corpus: `audio` (a spectrogram) and `face` (K image frames)."""
  return [{"name": "audio", "kind": "spectrogram", "shape": [int(d) for d in audio_shape], "dtype": "float32"},
          {"name": "face", "kind": "image", "shape": [int(d) for d in face_shape], "dtype": "uint8"}]


def write_split(out, split: str, records: Iterable[dict], modalities: list[dict], examples_per_shard: int,
                start: int = 0, meta: Callable[[], dict] | None = None) -> int:
  """Writes `records` (in order) as shards START, START + 1, ... of SPLIT into OUT/.shards; returns the next index.

  meta: called when a shard's records are consumed; what it returns is kept in the shard's summary (a resume
  reads it back).
  """
  records, index = iter(records), start
  for first in records:
    group = itertools.chain([first], itertools.islice(records, examples_per_shard - 1))
    shards.write_shard(pathlib.Path(out) / shards.STAGE, split, index, group, modalities, meta)
    index += 1
  return index


def finish_dataset(out, corpus: str, modalities: list[dict], manifest: dict, splits: list[str]) -> dict:
  """Turns the written shards of every split into the TFDS builder directory and columns, then writes the manifest."""
  out = pathlib.Path(out)
  name = register_corpus(corpus)
  modalities = [dict(m, shape=[int(d) for d in m["shape"]]) for m in modalities]
  written = shards.finalize(out, name, modalities, splits)
  manifest = dict(manifest)
  manifest.update({
      "format": FORMAT, "corpus": corpus, "tfds_dir": str(pathlib.Path("tfds") / name / VERSION),
      "tfds_name": name, "tfds_version": VERSION, "columns": shards.COLUMNS,
      "splits": {s: {"examples": int(w["examples"])} for s, w in written.items()},
      "features": {m["name"]: {"shape": m["shape"], "dtype": m["dtype"]} for m in modalities},
      "modalities": modalities,
      "versions": versions()})
  manifest["fingerprint"] = fingerprint(manifest, {s: w["digest"] for s, w in written.items()})
  manifest["complete"] = True
  files.write_json_atomic(out / MANIFEST, manifest, indent=1)
  return manifest


def write_dataset(out, corpus: str, split_examples: dict[str, Callable[[], Iterable[dict]]],
                  modalities: list[dict], manifest: dict, examples_per_shard: int | None = None) -> dict:
  """Writes OUT/tfds/<name>/<version> from the split generators (streamed, shard by shard), then the manifest.

  OUT is a fresh folder (see Build). modalities: the manifest entries {name, kind, shape, dtype, ...} of the
  stored modalities, in order. examples_per_shard: default shards.shard_size(modalities).
  """
  out = pathlib.Path(out)
  if (out / "tfds").exists() or (out / MANIFEST).exists():
    raise ValueError(f"{out} already holds a dataset; write into a fresh folder (storage.Build)")
  register_corpus(corpus)
  out.mkdir(parents=True, exist_ok=True)
  size = examples_per_shard or shards.shard_size(modalities)
  for split, examples in split_examples.items():
    write_split(out, split, examples(), modalities, size)
  return finish_dataset(out, corpus, modalities, manifest, list(split_examples))


def register_corpus(corpus: str) -> str:
  """The TFDS builder name of CORPUS (`mmvae_<corpus>`), added to BUILDERS on first use for a new one."""
  if corpus not in BUILDERS:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", corpus):
      raise ValueError(f"corpus name {corpus!r}: use lowercase letters, digits and underscores")
    BUILDERS[corpus] = f"mmvae_{corpus}"
  return BUILDERS[corpus]
