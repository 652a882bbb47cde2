"""Prepared-dataset storage: a TFDS array_record builder directory, then manifest.json written last.

The manifest is the completion marker: it is removed before a build starts and written atomically
(tmp file + os.replace) only after TFDS has finished, so an interrupted run never leaves a dataset
that looks complete; rerunning deletes the partial build and starts over.
"""

import importlib.metadata
import json
import os
import pathlib
import shutil
from typing import Callable, Iterable

import numpy as np
import tensorflow_datasets as tfds

FORMAT = "mmvae-prepared/1"
VERSION = "1.0.0"
MANIFEST = "manifest.json"
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

  def __init__(self, *, audio_shape, face_shape, split_examples: dict[str, Callable[[], Iterable[dict]]], **kwargs):
    self._audio_shape = tuple(int(d) for d in audio_shape)
    self._face_shape = tuple(int(d) for d in face_shape)
    self._split_examples = split_examples
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo(builder=self) rather than dataset_info_from_configs: this builder lives outside a TFDS package.
    features = {"audio": tfds.features.Tensor(shape=self._audio_shape, dtype=np.float32),
                "face": tfds.features.Tensor(shape=self._face_shape, dtype=np.uint8),
                "label": np.int64}
    features.update({name: tfds.features.Text() for name in TEXT_FEATURES})
    return tfds.core.DatasetInfo(builder=self, description="mmvae prepared dataset; see manifest.json",
                                 features=tfds.features.FeaturesDict(features), disable_shuffling=True)

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


BUILDERS = {"voxceleb1": MmvaeVoxceleb1, "avdigits": MmvaeAvdigits, "synthetic": MmvaeSynthetic}


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


def start_build(out) -> pathlib.Path:
  """Marks OUT incomplete (manifest removed first) and deletes any previous or partial TFDS build."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / MANIFEST).unlink(missing_ok=True)
  shutil.rmtree(out / "tfds", ignore_errors=True)
  return out


def write_dataset(out, corpus: str, split_examples: dict[str, Callable[[], Iterable[dict]]],
                  audio_shape, face_shape, manifest: dict) -> dict:
  """Builds OUT/tfds/<name>/<version> from the split generators, then writes the manifest; returns it."""
  out = start_build(out)
  tfds.disable_progress_bar()  # the caller's feature-extraction bar already counts every example
  if corpus not in BUILDERS:
    raise ValueError(f"unknown corpus {corpus!r}; expected one of {sorted(BUILDERS)}")
  builder = BUILDERS[corpus](audio_shape=audio_shape, face_shape=face_shape, split_examples=split_examples,
                             data_dir=str(out / "tfds"), file_format="array_record")
  try:
    builder.download_and_prepare(download_dir=str(out / "tfds" / "downloads"))
  except AssertionError as e:  # TFDS asserts on a split whose every example was skipped
    raise ValueError(f"could not write the prepared dataset to {out}: {e}; see the skipped files") from None
  shutil.rmtree(out / "tfds" / "downloads", ignore_errors=True)
  data_dir = pathlib.Path(builder.data_dir)
  manifest = dict(manifest)
  manifest.update({
      "format": FORMAT, "corpus": corpus, "tfds_dir": str(data_dir.relative_to(out)),
      "tfds_name": builder.name, "tfds_version": VERSION,
      "splits": {s: {"examples": int(info.num_examples)} for s, info in builder.info.splits.items()},
      "features": {"audio": {"shape": list(builder._audio_shape), "dtype": "float32"},
                   "face": {"shape": list(builder._face_shape), "dtype": "uint8"}},
      "versions": versions(), "complete": True})
  write_json_atomic(out / MANIFEST, manifest)
  return manifest

