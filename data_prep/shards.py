"""A prepared split as TFDS array_record shards of a fixed number of examples, written without TensorFlow.

The layout is TFDS's own (`tfds/<name>/<version>/<name>-<split>.array_record-0000N-of-0000M`,
dataset_info.json, features.json) and every record is serialised by the TFDS FeaturesDict serializer, so
`tfds.builder_from_directory(...).as_data_source(split)` and grain read it. Nothing passes through TFDS's
shuffler, which holds up to 1 GiB in memory and then spills through `tf.io.gfile` (TensorFlow).

Two pure steps, callable from one process or from an Apache Beam pipeline:
- `write_shard(stage, split, index, records, modalities, meta)`: one shard of a split from its records (in
  order) into STAGE/<split>/, its summary written last (its presence marks the shard done): example count,
  bytes, per-example digests, the label and text columns, and the caller's `meta` (what a resume needs).
- `finalize(out, name, modalities, splits)`: once every shard is written, moves them into the builder
  directory under their `-of-` names, writes dataset_info.json, features.json and OUT/columns/<split>.npz,
  and returns each split's example count and content digest.
"""

import functools
import hashlib
import json
import os
import pathlib
import shutil
import zipfile

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core import naming

from mmvae import files

VERSION = "1.0.0"
TEXT_FEATURES = ("id", "identity", "video", "gender")
STAGE = ".shards"  # OUT/.shards/<split>/NNNNN.array_record + NNNNN.json while prep runs
COLUMNS = "columns"  # OUT/columns/<split>.npz: label and text fields in stored order
SHARD_BYTES = 64 << 20  # about this many bytes of arrays per shard
MAX_SHARD_EXAMPLES = 4096


def example_bytes(modalities: list[dict]) -> int:
  """About the bytes one stored example takes: its arrays, from the declared shapes, and its fields."""
  return sum(np.dtype(m["dtype"]).itemsize * int(np.prod(m["shape"])) for m in modalities) + 256


def shard_size(modalities: list[dict]) -> int:
  """Examples per shard, from the declared shapes alone: the same for any worker count and on resume."""
  return int(max(1, min(MAX_SHARD_EXAMPLES, SHARD_BYTES // example_bytes(modalities))))


def text_fields(modalities: list[dict]) -> list[str]:
  """The per-example text fields: those of TEXT_FEATURES no modality replaces (multi-modal digits' `video`)."""
  names = {m["name"] for m in modalities}
  return [t for t in TEXT_FEATURES if t not in names]


def features_dict(modalities: list[dict]) -> tfds.features.FeaturesDict:
  """The TFDS features of a prepared example: the modalities, `label` int64, the text fields."""
  features = {m["name"]: tfds.features.Tensor(shape=tuple(int(d) for d in m["shape"]), dtype=np.dtype(m["dtype"]))
              for m in modalities}
  features["label"] = np.int64
  features.update({name: tfds.features.Text() for name in text_fields(modalities)})
  return tfds.features.FeaturesDict(features)


@functools.lru_cache(maxsize=8)
def _serializer(modalities_json: str):
  features = features_dict(json.loads(modalities_json))
  return features, example_serializer.ExampleSerializer(features.get_serialized_info())


def serialize(record: dict, modalities: list[dict]) -> bytes:
  """One record as TFDS stores it (FeaturesDict.encode_example, then the example serializer)."""
  features, serializer = _serializer(json.dumps(modalities, sort_keys=True))
  return serializer.serialize_example(features.encode_example(record))


def example_digest(record: dict) -> bytes:
  """SHA-256 of one example's content: every key in sorted order with its dtype, shape and value."""
  digest = hashlib.sha256()
  for key in sorted(record):
    value = np.asarray(record[key])
    digest.update(f"{key}:{value.dtype.str}:{value.shape}:".encode())
    text = value.dtype.kind in "OUS"
    digest.update(str(record[key]).encode() if text else np.ascontiguousarray(value).tobytes())
  return digest.digest()


def write_shard(stage, split: str, index: int, records, modalities: list[dict], meta=None) -> dict:
  """Writes shard INDEX of SPLIT from `records` (an iterable, consumed once) into STAGE/<split>/; returns its summary.

  meta: a dict, or a callable giving one once the records are consumed, kept in the summary (what a resume needs).
  """
  folder = pathlib.Path(stage) / split
  folder.mkdir(parents=True, exist_ok=True)
  path, tmp = folder / f"{index:05d}.array_record", folder / f".{index:05d}.array_record.tmp"
  texts = text_fields(modalities)
  columns = {"label": [], **{t: [] for t in texts}}
  digests, size = [], 0
  writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1")  # TFDS's own setting: random access
  try:
    for record in records:
      data = serialize(record, modalities)
      writer.write(data)
      size += len(data)
      digests.append(example_digest(record).hex())
      columns["label"].append(int(record["label"]))
      for t in texts:
        columns[t].append(str(record[t]))
  finally:
    writer.close()
  if not digests:
    tmp.unlink()
    raise ValueError(f"shard {index} of the {split} split has no examples")
  os.replace(tmp, path)
  summary = {"split": split, "index": int(index), "examples": len(digests), "bytes": size, "digests": digests,
             "columns": columns, "meta": (meta() if callable(meta) else meta) or {}}
  files.write_json_atomic(folder / f"{index:05d}.json", summary)  # last: its presence means the shard is whole
  return summary


def _summary(stage, split: str, index: int) -> dict:
  return json.loads((pathlib.Path(stage) / split / f"{index:05d}.json").read_text(encoding="utf-8"))


def done_shards(stage, split: str) -> list[dict]:
  """Summaries of SPLIT's finished shards 0, 1, ... up to the first missing one (a killed write's is redone),
  without their digests and columns: memory for a few numbers per shard, not per example."""
  out, folder = [], pathlib.Path(stage) / split
  while (folder / f"{len(out):05d}.json").is_file() and (folder / f"{len(out):05d}.array_record").is_file():
    try:
      summary = _summary(stage, split, len(out))
    except ValueError:
      break
    out.append({k: v for k, v in summary.items() if k not in ("digests", "columns")})
  return out


def _write_columns(path: pathlib.Path, stage, split: str, done: list[dict], widths: dict[str, int]) -> None:
  """An .npz of one array per column, streamed shard by shard into the archive (never the whole split at once)."""
  n = sum(s["examples"] for s in done)
  with files.atomic(path) as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
    for name, width in widths.items():
      dtype = np.dtype(np.int64) if name == "label" else np.dtype(f"<U{width}")  # str: the longest value's width
      with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                                 "shape": (n,)})
        for s in done:
          f.write(np.asarray(_summary(stage, split, s["index"])["columns"][name], dtype).tobytes())


def finalize(out, name: str, modalities: list[dict], splits: list[str]) -> dict[str, dict]:
  """Moves every split's shards from OUT/.shards into OUT/tfds/NAME/VERSION, writes dataset_info.json, features.json
  and OUT/columns/<split>.npz; returns {split: {examples, digest}} (digest: SHA-256 over the example digests)."""
  out = pathlib.Path(out)
  builder_dir = out / "tfds" / name / VERSION
  builder_dir.mkdir(parents=True, exist_ok=True)
  (out / COLUMNS).mkdir(exist_ok=True)
  stage = out / STAGE
  infos, result = [], {}
  for split in splits:
    done = done_shards(stage, split)
    if not done:
      raise ValueError(f"the {split} split has no examples; see the skipped files")
    template = naming.ShardedFileTemplate(data_dir=builder_dir, dataset_name=name, split=split,
                                          filetype_suffix="array_record")
    digest, widths = hashlib.sha256(), {"label": 0, **{t: 1 for t in text_fields(modalities)}}
    for s in done:  # one shard's summary in memory at a time
      summary = _summary(stage, split, s["index"])
      for d in summary["digests"]:
        digest.update(bytes.fromhex(d))
      for t in widths:
        if t != "label":
          widths[t] = max(widths[t], *(len(v) for v in summary["columns"][t]))
    _write_columns(out / COLUMNS / f"{split}.npz", stage, split, done, widths)
    for s in done:
      os.replace(stage / split / f"{s['index']:05d}.array_record",
                 template.sharded_filepath(shard_index=s["index"], num_shards=len(done)))
    infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[s["examples"] for s in done],
                                     num_bytes=sum(s["bytes"] for s in done), filename_template=template))
    result[split] = {"examples": sum(s["examples"] for s in done), "digest": digest.hexdigest()}
  identity = tfds.core.DatasetIdentity(name=name, version=tfds.core.Version(VERSION), data_dir=str(builder_dir),
                                       module_name="data_prep.storage")
  info = tfds.core.DatasetInfo(builder=identity, description="mmvae prepared dataset; see manifest.json",
                               features=features_dict(modalities), disable_shuffling=True)
  info.set_file_format("array_record")
  info.set_splits(tfds.core.SplitDict(infos))
  info.write_to_directory(builder_dir)
  shutil.rmtree(stage, ignore_errors=True)
  return result
