"""Prepared-dataset storage: a TFDS array_record builder directory, then manifest.json written last.

Prep never works inside OUT: `Build` makes a fresh folder beside it (`.OUT.partial-PID@HOST`), prep
fills it, and only a complete dataset is swapped in for OUT (old renamed away, new renamed in, old
deleted). An interrupted or failed prep leaves the previous dataset untouched. OUT is refused before
any work when it is a file, unwritable, or a non-empty folder that holds no mmvae dataset.
"""

import hashlib
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
from typing import Callable, Iterable

import numpy as np
import tensorflow_datasets as tfds

from mmvae import locks

FORMAT = "mmvae-prepared/1"
VERSION = "1.0.0"
MANIFEST = "manifest.json"
MARKER = ".mmvae-build"  # in every folder prep builds: tells an interrupted mmvae build from a user's folder
TEXT_FEATURES = ("id", "identity", "video", "gender")


class _PreparedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes examples from per-split generator functions; features are fixed by the given shapes."""

  VERSION = tfds.core.Version(VERSION)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # No source-tree checksums file to look up; TFDS's own lookup needs importlib_resources for
    # builders defined inside a regular package, which is not a dependency here.
    return None

  def __init__(self, *, modalities: list[dict], split_examples: dict[str, Callable[[], Iterable[dict]]], **kwargs):
    self._modalities = [dict(m, shape=[int(d) for d in m["shape"]]) for m in modalities]
    self._split_examples = split_examples
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo(builder=self) rather than dataset_info_from_configs: this builder lives outside a TFDS package.
    features = {m["name"]: tfds.features.Tensor(shape=tuple(m["shape"]), dtype=np.dtype(m["dtype"]))
                for m in self._modalities}
    features["label"] = np.int64
    # A modality named like a text field (multi-modal digits' `video` clip) takes its place.
    features.update({name: tfds.features.Text() for name in TEXT_FEATURES if name not in features})
    return tfds.core.DatasetInfo(builder=self, description="mmvae prepared dataset; see manifest.json",
                                 features=tfds.features.FeaturesDict(features), disable_shuffling=True)

  # TFDS prints where it prepared the data: the build folder, which prep renames to OUT (its summary names OUT).
  def _log_download_bytes(self):
    pass

  def _log_download_done(self):
    pass

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in self._split_examples}

  def _generate_examples(self, split):
    for example in self._split_examples[split]():
      yield example["id"], example


class MmvaeVoxceleb1(_PreparedBuilder):
  name = "mmvae_voxceleb1"


class MmvaeAvdigits(_PreparedBuilder):
  name = "mmvae_avdigits"


class MmvaeSynthetic(_PreparedBuilder):
  name = "mmvae_synthetic"


class MmvaeMmdigits(_PreparedBuilder):
  name = "mmvae_mmdigits"


BUILDERS = {"voxceleb1": MmvaeVoxceleb1, "avdigits": MmvaeAvdigits, "synthetic": MmvaeSynthetic,
            "mmdigits": MmvaeMmdigits}


def versions() -> dict:
  """Versions of the packages that wrote the dataset."""
  out = {}
  for package in ("mmvae", "tensorflow_datasets", "numpy", "jax"):
    try:
      out[package] = importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
      out[package] = None
  return out


def write_json_atomic(path, obj) -> None:
  """Writes JSON to a temporary sibling, then renames it into place (atomic on POSIX)."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _is_own(folder: pathlib.Path) -> bool:
  """Whether prep may replace a folder: empty, a prepared dataset, or a build it left behind."""
  if not any(folder.iterdir()) or (folder / MARKER).is_file():
    return True
  try:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def check_out(out) -> pathlib.Path:
  """OUT as an absolute path, or ValueError when prep must not write or replace it; checked before any work."""
  out = pathlib.Path(os.path.realpath(out))  # a symlinked OUT: build beside the folder it points to
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {out} is a file, not a folder")
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

  def __init__(self, out, keep_on_error: bool = False):
    self.out = check_out(out)
    me = locks.this_process()
    self.path = self.out.parent / f".{self.out.name}.partial-{me['pid']}@{me['host']}"
    self.keep_on_error = keep_on_error
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
    """Replaces OUT by the finished build (old renamed away first, deleted last); returns OUT."""
    old = None
    if self.out.exists():
      if not self.out.is_dir() or not _is_own(self.out):  # changed while prep ran
        self.keep_on_error = True
        raise ValueError(f"--out {self.out} was replaced by something else while prep ran; the new dataset is "
                         f"kept in {self.path}")
      old = self.path.with_name(self.path.name.replace(".partial-", ".old-", 1))
      os.replace(self.out, old)
    os.replace(self.path, self.out)
    for folder in ([old] if old else []) + self.stale:
      shutil.rmtree(folder, ignore_errors=True)
    return self.out

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *exc):
    if exc_type is not None and self.path.exists() and not self.keep_on_error:
      shutil.rmtree(self.path, ignore_errors=True)


def _hashed(examples: Callable[[], Iterable[dict]], digest) -> Callable[[], Iterable[dict]]:
  """The split's generator, feeding every example's decoded content into `digest` as it passes."""
  def generate():
    for example in examples():
      for key in sorted(example):
        value = np.asarray(example[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape}:".encode())
        text = value.dtype.kind in "OUS"
        digest.update(str(example[key]).encode() if text else np.ascontiguousarray(value).tobytes())
      yield example
  return generate


def fingerprint(manifest: dict, split_digests: dict[str, str]) -> str:
  """SHA-256 over every stored example (in order, per split) and the manifest's content keys.

  A function of the content, not the path or the file bytes (TFDS's serialisation is not
  byte-stable): a moved dataset keeps it, a re-prepared one with other inputs or settings gets a
  new one. Versions, notes, skipped files and warnings do not count.
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


def write_dataset(out, corpus: str, split_examples: dict[str, Callable[[], Iterable[dict]]],
                  modalities: list[dict], manifest: dict) -> dict:
  """Builds OUT/tfds/<name>/<version> from the split generators in a fresh folder (see Build), then the manifest.

  modalities: the manifest entries {name, kind, shape, dtype, ...} of the stored modalities, in order.
  """
  out = pathlib.Path(out)
  if (out / "tfds").exists() or (out / MANIFEST).exists():
    raise ValueError(f"{out} already holds a dataset; write into a fresh folder (storage.Build)")
  out.mkdir(parents=True, exist_ok=True)
  tfds.disable_progress_bar()  # the caller's feature-extraction bar already counts every example
  if corpus not in BUILDERS:
    raise ValueError(f"unknown corpus {corpus!r}; expected one of {sorted(BUILDERS)}")
  digests = {split: hashlib.sha256() for split in split_examples}
  split_examples = {split: _hashed(fn, digests[split]) for split, fn in split_examples.items()}
  builder = BUILDERS[corpus](modalities=modalities, split_examples=split_examples,
                             data_dir=str(out / "tfds"), file_format="array_record")
  try:
    builder.download_and_prepare(download_dir=str(out / "tfds" / "downloads"))
  except AssertionError as e:  # TFDS asserts on a split whose every example was skipped
    raise ValueError(f"could not write the prepared dataset: {e}; see the skipped files") from None
  shutil.rmtree(out / "tfds" / "downloads", ignore_errors=True)
  data_dir = pathlib.Path(builder.data_dir)
  manifest = dict(manifest)
  manifest.update({
      "format": FORMAT, "corpus": corpus, "tfds_dir": str(data_dir.relative_to(out)),
      "tfds_name": builder.name, "tfds_version": VERSION,
      "splits": {s: {"examples": int(info.num_examples)} for s, info in builder.info.splits.items()},
      "features": {m["name"]: {"shape": m["shape"], "dtype": m["dtype"]} for m in builder._modalities},
      "modalities": builder._modalities,
      "versions": versions()})
  manifest["fingerprint"] = fingerprint(manifest, {split: d.hexdigest() for split, d in digests.items()})
  manifest["complete"] = True
  write_json_atomic(out / MANIFEST, manifest)
  return manifest


def register_corpus(corpus: str) -> type:
  """The builder write_dataset uses for CORPUS: BUILDERS' entry, made (`mmvae_<corpus>`) on first use for a new one."""
  if corpus not in BUILDERS:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", corpus):
      raise ValueError(f"corpus name {corpus!r}: use lowercase letters, digits and underscores")
    BUILDERS[corpus] = type(f"Mmvae{corpus.title().replace('_', '')}", (_PreparedBuilder,),
                            {"name": f"mmvae_{corpus}", "__module__": __name__})
  return BUILDERS[corpus]
