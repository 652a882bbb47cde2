"""`mmvae prep yt8m`: YouTube-8M TFRecords (frame-level or video-level) -> a prepared dataset, without TensorFlow.

Reads the TFRecord framing (both CRC32Cs verified; gzip-compressed files accepted) and the few protobuf
messages YouTube-8M uses (tf.train.Example, tf.train.SequenceExample) with a minimal decoder of its own.

- Frame-level records (SequenceExample: context `id`, `labels`; feature lists `rgb` and `audio`, one
  quantised uint8 vector per second) -> two `sequence` modalities `rgb` [T, 1024 + 1] and `audio`
  [T, 128 + 1] (mask in the last column, `sequence.pack`), dequantised like yt8m's `Dequantize`
  (q * 4/255 + 4/512 - 2), T = max_steps; longer videos are truncated, a video whose rgb and audio
  lengths differ is cut to the shorter.
- Video-level records (Example: `id`, `labels`, `mean_rgb`, `mean_audio`) -> two `vector` modalities.

YouTube-8M is multi-label: label = the video's first listed label id (index into the sorted first-label
ids); identity = str(that id); id = video = the video id. Unlabeled videos (YT8M's test files carry no
labels) are skipped and counted. Splits follow the file name (train* -> train, valid* -> validation,
test* -> test); videos of files named otherwise get a split from sha256 of their id (80/10/10).
Records are read twice: once to index them (ids, labels, lengths; every record verified), then each split
in id order (the order `mmvae.data` expects) by seeking to its records, so one video at a time is in memory;
gzip-compressed files are first decompressed into the build folder (for seeking) and removed before the commit.
"""

import collections
import glob
import gzip
import hashlib
import os
import pathlib
import shutil
import time
import zlib
from typing import Iterator, NamedTuple

import numpy as np

from data_prep import storage
from mmvae import progress
from mmvae.modalities import sequence

CORPUS = "yt8m"
DEFAULT_MAX_STEPS = 300  # YouTube-8M videos are at most 300 s, one step per second
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0  # yt8m's Dequantize defaults
SPLITS = ("train", "validation", "test")
FILE_SPLITS = (("train", "train"), ("valid", "validation"), ("test", "test"))  # file-name prefix -> split
FRAME_FEATURES = ("rgb", "audio")  # feature lists of frame-level records, in manifest order
VIDEO_FEATURES = ("mean_rgb", "mean_audio")  # float lists of video-level records
COUNTS = ("records", "videos", "unlabeled", "no_steps", "multi_label", "truncated", "length_mismatch", "by_name",
          "by_hash", "empty_files")  # manifest source.counts (no_steps, truncated, length_mismatch: frame-level)
_OPEN_FILES = 32  # record files kept open while writing (records are read in id order, across files)
_GZIP_MAGIC = b"\x1f\x8b"

# ---------------------------------------------------------------------------------------------- crc32c

_POLY = 0x82F63B78  # Castagnoli, reflected
_MASK32 = 0xFFFFFFFF


def _byte_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ _POLY if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _byte_table()
_TABLE_NP = np.array(_TABLE, np.uint32)
# Slicing-by-4: _SLICES[k][b] is the register after byte b followed by k zero bytes (one word per step).
_SLICES = [_TABLE_NP]
for _ in range(3):
  _SLICES.append((_SLICES[-1] >> 8) ^ _TABLE_NP[_SLICES[-1] & 0xFF])
_NUMPY_FROM = 2048  # bytes; shorter inputs go through the plain byte loop
_BITS = (np.arange(256)[:, None] >> np.arange(8)) & 1  # [256, 8] bits of every byte value
_SHIFT_TABLES: list[np.ndarray] = []  # [4, 256] uint32 per j: the register after 2**j zero bytes, by byte of it


def _crc_loop(data, register: int) -> int:
  for b in data:
    register = _TABLE[(register ^ b) & 0xFF] ^ (register >> 8)
  return register


def _shift(tables: np.ndarray, registers: np.ndarray) -> np.ndarray:
  """Registers advanced over the zero bytes `tables` stands for (linear over GF(2): one lookup per byte)."""
  return (tables[0][registers & 0xFF] ^ tables[1][(registers >> 8) & 0xFF]
          ^ tables[2][(registers >> 16) & 0xFF] ^ tables[3][registers >> 24])


def _tables_of(columns: np.ndarray) -> np.ndarray:
  """[4, 256] byte lookup tables of the linear map whose images of the 32 unit registers are `columns`."""
  return np.stack([np.bitwise_xor.reduce(np.where(_BITS, columns[8 * q:8 * q + 8], 0), axis=1).astype(np.uint32)
                   for q in range(4)])


def _shift_tables(j: int) -> np.ndarray:
  """Lookup tables that advance a register over 2**j zero bytes (made by squaring, cached)."""
  if not _SHIFT_TABLES:
    units = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    _SHIFT_TABLES.append(_tables_of(_TABLE_NP[units & 0xFF] ^ (units >> 8)))
  while len(_SHIFT_TABLES) <= j:
    previous = _SHIFT_TABLES[-1]
    units = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    _SHIFT_TABLES.append(_tables_of(_shift(previous, _shift(previous, units))))
  return _SHIFT_TABLES[j]


def crc32c(data) -> int:
  """CRC-32C (Castagnoli) of `data` (bytes-like), as TFRecord uses it; table-driven, numpy for long inputs."""
  data = memoryview(data).cast("B")
  n = len(data)
  if n < _NUMPY_FROM:
    return _crc_loop(data, _MASK32) ^ _MASK32
  # The register is linear in the input: split the input into K blocks of L = 2**j bytes, run all blocks at
  # once from register 0 (a little-endian word per step, slicing-by-4), then fold neighbours pairwise (the left
  # one advanced over the right one's length). Leading zero bytes do not change a register that starts at 0,
  # so the input is zero-padded in front; the initial register 0xFFFFFFFF is the same as inverting the first
  # 4 bytes and starting from 0.
  j = max(6, (n.bit_length() + 1) // 2 - 3)
  size = 1 << j
  blocks = -(-n // size)
  buf = np.zeros(blocks * size, np.uint8)
  pad = blocks * size - n
  buf[pad:] = np.frombuffer(data, np.uint8)
  buf[pad:pad + 4] ^= 0xFF
  words = np.ascontiguousarray(buf.view("<u4").reshape(blocks, size // 4).T).astype(np.uint32)
  t0, t1, t2, t3 = _SLICES
  registers = np.zeros(blocks, np.uint32)
  for word in words:
    x = registers ^ word
    registers = t3[x & 0xFF] ^ t2[(x >> 8) & 0xFF] ^ t1[(x >> 16) & 0xFF] ^ t0[x >> 24]
  while len(registers) > 1:
    if len(registers) % 2:  # a leading all-zero block
      registers = np.concatenate([np.zeros(1, np.uint32), registers])
    registers = _shift(_shift_tables(j), registers[0::2]) ^ registers[1::2]
    j += 1
  return int(registers[0]) ^ _MASK32


def masked_crc32c(data) -> int:
  """TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8, modulo 2**32."""
  crc = crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & _MASK32) + 0xA282EAD8) & _MASK32


# -------------------------------------------------------------------------------------------- TFRecord

def _header_error(path, offset: int, length_bytes: bytes, crc_bytes: bytes) -> str | None:
  if int.from_bytes(crc_bytes, "little") == masked_crc32c(length_bytes):
    return None
  if offset == 0:
    return (f"{path} is not a TFRecord file: the length CRC of its first record (byte 0) does not match "
            "(gzip-compressed files are read as such; other compressions are not)")
  return f"{path}: byte {offset}: corrupt TFRecord (the record length's CRC does not match)"


def _read_record(f, path, offset: int, size: int | None = None) -> tuple[bytes, int] | None:
  """(data, next offset) of the record at `offset` of open file f (positioned there); None at the file's end."""
  header = f.read(12)
  if not header:
    return None
  if len(header) < 12:
    if offset == 0:
      raise ValueError(f"{path} is not a TFRecord file, or a truncated one: {len(header)} bytes, shorter than "
                       "a record header (12)")
    raise ValueError(f"{path}: byte {offset}: truncated TFRecord: {len(header)} bytes left, a record header "
                     "needs 12")
  error = _header_error(path, offset, header[:8], header[8:])
  if error:
    raise ValueError(error)
  length = int.from_bytes(header[:8], "little")
  if size is not None and offset + 16 + length > size:
    raise ValueError(f"{path}: byte {offset}: truncated TFRecord: the record holds {length} bytes but the file "
                     f"ends at byte {size}")
  body = f.read(length + 4)
  if len(body) < length + 4:
    raise ValueError(f"{path}: byte {offset}: truncated TFRecord: the record holds {length} bytes but the file "
                     f"ends at byte {offset + 12 + len(body)}")
  data = body[:length]
  if int.from_bytes(body[length:], "little") != masked_crc32c(data):
    raise ValueError(f"{path}: byte {offset}: corrupt TFRecord (the CRC of its {length} data bytes does not match)")
  return data, offset + 16 + length


def is_gzip(path) -> bool:
  """Whether the file starts with gzip's magic bytes."""
  with open(path, "rb") as f:
    return f.read(2) == _GZIP_MAGIC


def read_records(path, name=None) -> Iterator[tuple[int, bytes]]:
  """(byte offset, data) of every record of one TFRecord file, streamed and CRC-verified; gzip is decompressed.

  Offsets of a gzip-compressed file count its decompressed bytes. `name` is the file named in errors.
  """
  name = name or path
  gz = is_gzip(path)
  try:
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
      size = None if gz else os.fstat(f.fileno()).st_size
      offset = 0
      while True:
        record = _read_record(f, name, offset, size)
        if record is None:
          return
        yield offset, record[0]
        offset = record[1]
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise ValueError(f"{name}: damaged gzip data: {e}") from None


def read_record_at(f, path, offset: int) -> bytes:
  """The data of the record at `offset` of the open, uncompressed TFRecord file f, CRC-verified."""
  f.seek(offset)
  record = _read_record(f, path, offset)
  if record is None:
    raise ValueError(f"{path}: byte {offset}: no record there (the file changed while prep ran?)")
  return record[0]


# -------------------------------------------------------------------------------------------- protobuf

class Feature(NamedTuple):
  """A decoded tf.train.Feature: kind 'bytes' (list of bytes), 'float' (float32 array), 'int64' (list of int)."""

  kind: str
  value: object


def _varint(buf, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    if pos >= len(buf):
      raise ValueError("a varint runs past the end of its message")
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift >= 70:
      raise ValueError("a varint is longer than 10 bytes")


def fields(buf) -> Iterator[tuple[int, int, object]]:
  """(field number, wire type, value) of a protobuf message: an int (varint), or bytes (fixed64, fixed32,
  length-delimited); unknown fields are returned like any other, for the caller to skip."""
  buf = memoryview(buf)
  pos, end = 0, len(buf)
  while pos < end:
    key, pos = _varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire in (1, 5):
      width = 8 if wire == 1 else 4
      if pos + width > end:
        raise ValueError(f"field {number} runs past the end of its message")
      value, pos = buf[pos:pos + width], pos + width
    elif wire == 2:
      length, pos = _varint(buf, pos)
      if pos + length > end:
        raise ValueError(f"field {number} ({length} bytes) runs past the end of its message")
      value, pos = buf[pos:pos + length], pos + length
    else:
      raise ValueError(f"field {number} has wire type {wire} (groups are not supported)")
    if number == 0:
      raise ValueError("field number 0 is not valid protobuf")
    yield number, wire, value


def _int64(v: int) -> int:
  return v - (1 << 64) if v >= 1 << 63 else v


def parse_feature(buf) -> Feature:
  """tf.train.Feature {oneof bytes_list = 1, float_list = 2, int64_list = 3}; packed or unpacked lists."""
  kind, value = "bytes", []  # an empty Feature: no list set
  for number, wire, data in fields(buf):
    if number == 1 and wire == 2:
      kind, value = "bytes", [bytes(v) for n, w, v in fields(data) if n == 1 and w == 2]
    elif number == 2 and wire == 2:
      chunks = []
      for n, w, v in fields(data):
        if n == 1 and w == 2:
          if len(v) % 4:
            raise ValueError(f"a packed float list of {len(v)} bytes (not a multiple of 4)")
          chunks.append(np.frombuffer(v, "<f4"))
        elif n == 1 and w == 5:
          chunks.append(np.frombuffer(v, "<f4"))
      kind, value = "float", (np.concatenate(chunks) if chunks else np.zeros(0, "<f4")).astype(np.float32)
    elif number == 3 and wire == 2:
      ints = []
      for n, w, v in fields(data):
        if n == 1 and w == 0:
          ints.append(_int64(v))
        elif n == 1 and w == 2:
          pos = 0
          while pos < len(v):
            x, pos = _varint(v, pos)
            ints.append(_int64(x))
      kind, value = "int64", ints
  return Feature(kind, value)


def _map_entries(buf, field: int) -> Iterator[tuple[str, memoryview]]:
  """(key, value bytes) of a map<string, message> field: entries key = 1, value = 2."""
  for number, wire, entry in fields(buf):
    if number != field or wire != 2:
      continue
    key, value = "", memoryview(b"")
    for n, w, v in fields(entry):
      if n == 1 and w == 2:
        key = bytes(v).decode("utf-8", errors="replace")
      elif n == 2 and w == 2:
        value = v
    yield key, value


def parse_features(buf) -> dict[str, Feature]:
  """tf.train.Features {map<string, Feature> feature = 1}."""
  return {key: parse_feature(value) for key, value in _map_entries(buf, 1)}


def parse_example(buf) -> tuple[dict[str, Feature], dict[str, list[Feature]]]:
  """(features or context, feature lists) of a tf.train.Example (no lists) or tf.train.SequenceExample.

  Example {Features features = 1}; SequenceExample {Features context = 1; FeatureLists feature_lists = 2},
  FeatureLists {map<string, FeatureList> feature_list = 1}, FeatureList {repeated Feature feature = 1}.
  """
  context, lists = {}, {}
  for number, wire, value in fields(buf):
    if number == 1 and wire == 2:
      context.update(parse_features(value))
    elif number == 2 and wire == 2:
      for key, entry in _map_entries(value, 1):
        lists[key] = [parse_feature(v) for n, w, v in fields(entry) if n == 1 and w == 2]
  return context, lists


# ---------------------------------------------------------------------------------------------- YT8M

def dequantize(q, min_value: float = QUANTIZE_MIN, max_value: float = QUANTIZE_MAX) -> np.ndarray:
  """yt8m's Dequantize: q * (max - min) / 255 + (max - min) / 512 + min, as float32."""
  span = max_value - min_value
  return (np.asarray(q, np.float64) * (span / 255.0) + (span / 512.0 + min_value)).astype(np.float32)


class Video(NamedTuple):
  """One decoded YT8M record: kind 'frame' or 'video', id, labels, arrays {name: uint8 [L, D] or float32 [D]}."""

  kind: str
  id: str
  labels: list
  arrays: dict


def _steps(features: list[Feature], name: str) -> np.ndarray:
  """uint8 [L, D] from a feature list of one bytes value per step."""
  values = []
  for t, f in enumerate(features):
    if f.kind != "bytes" or len(f.value) != 1:
      raise ValueError(f"step {t} of feature list {name!r} is not a bytes_list of one value")
    values.append(f.value[0])
  sizes = {len(v) for v in values}
  if len(sizes) > 1:
    raise ValueError(f"feature list {name!r} has steps of different sizes {sorted(sizes)}")
  width = sizes.pop() if sizes else 0
  return np.frombuffer(b"".join(values), np.uint8).reshape(len(values), width)


def decode_video(buf) -> Video:
  """A YT8M record: frame-level SequenceExample (rgb, audio feature lists) or video-level Example (mean_rgb,
  mean_audio); ValueError when it is neither."""
  context, lists = parse_example(buf)
  ident = context.get("id")
  if ident is None or ident.kind != "bytes" or len(ident.value) != 1:
    raise ValueError("no `id` (a bytes_list of one value) in its features")
  video_id = ident.value[0].decode("utf-8", errors="replace")
  labels = context.get("labels", Feature("int64", []))
  if labels.kind != "int64" and labels.value:
    raise ValueError(f"video {video_id}: `labels` is a {labels.kind} list, not int64")
  labels = list(labels.value) if labels.kind == "int64" else []
  if lists:
    missing = [n for n in FRAME_FEATURES if n not in lists]
    if missing:
      raise ValueError(f"video {video_id}: a SequenceExample without the feature list(s) {missing} (it has "
                       f"{sorted(lists)})")
    return Video("frame", video_id, labels, {n: _steps(lists[n], n) for n in FRAME_FEATURES})
  if all(n in context for n in VIDEO_FEATURES):
    arrays = {}
    for n in VIDEO_FEATURES:
      if context[n].kind != "float":
        raise ValueError(f"video {video_id}: `{n}` is a {context[n].kind} list, not float")
      arrays[n] = context[n].value
    return Video("video", video_id, labels, arrays)
  raise ValueError(f"video {video_id}: neither a frame-level SequenceExample (feature lists rgb, audio) nor a "
                   f"video-level Example (mean_rgb, mean_audio); its features are {sorted(context)}")


def split_of_file(path) -> str | None:
  """train* -> train, valid* (validate*, validation*) -> validation, test* -> test (case-insensitive); else None."""
  name = pathlib.Path(path).name.lower()
  return next((split for prefix, split in FILE_SPLITS if name.startswith(prefix)), None)


def split_of_id(video_id: str) -> str:
  """Deterministic split of a video: the first 8 bytes of sha256(id) big-endian, mod 10: 0-7 train, 8 validation,
  9 test."""
  bucket = int.from_bytes(hashlib.sha256(video_id.encode("utf-8")).digest()[:8], "big") % 10
  return "train" if bucket < 8 else "validation" if bucket == 8 else "test"


def find_records(patterns) -> list[pathlib.Path]:
  """The files matching any of the glob patterns (`**` recursive), sorted and without repeats; ValueError when a
  pattern matches no file."""
  if isinstance(patterns, (str, os.PathLike)):
    patterns = [patterns]
  found = {}
  for pattern in patterns:
    matches = [pathlib.Path(p) for p in glob.glob(os.path.expanduser(str(pattern)), recursive=True)]
    files = [p for p in matches if p.is_file()]
    if not files:
      hint = (f"only folders, e.g. {matches[0]}: give a pattern of files such as {matches[0] / '*.tfrecord'}"
              if matches else "quote the pattern so the shell does not expand it")
      raise ValueError(f"--records {pattern!r} matches no files ({hint})")
    for p in files:
      found.setdefault(os.path.realpath(p), p)
  return sorted(found.values(), key=str)


class _Entry(NamedTuple):
  id: str
  split: str
  label: int
  file: int
  offset: int
  steps: int


def _index(files: list[pathlib.Path], readable: list[pathlib.Path], max_steps: int):
  """(entries of the labeled videos, kind 'frame' | 'video', feature sizes, counts): the first pass, every record
  read, verified and decoded once."""
  entries, seen = [], {}
  counts = collections.Counter(dict.fromkeys(COUNTS, 0))
  kind = dims = kind_file = None
  sizes = [p.stat().st_size for p in readable]
  bar = progress.bar(total=sum(sizes), desc="yt8m index", unit="B", unit_scale=True, dynamic_ncols=True)
  try:
    for i, (path, source) in enumerate(zip(files, readable)):
      by_name = split_of_file(path)
      records = 0
      name = path if source == path else f"{path} (decompressed)"
      for offset, data in read_records(source, name=name):
        records += 1
        bar.update(len(data) + 16)
        where = f"{name}: record at byte {offset}"
        try:
          video = decode_video(data)
        except ValueError as e:
          raise ValueError(f"{where}: {e}") from None
        if kind is None:
          kind, dims, kind_file = video.kind, {}, path
        elif video.kind != kind:
          level = {"frame": "frame-level SequenceExample", "video": "video-level Example"}
          raise ValueError(f"{where} is a {level[video.kind]} but {kind_file} holds {level[kind]}s: prepare "
                           "frame-level and video-level records separately")
        for n, a in video.arrays.items():
          if kind == "frame" and not len(a):  # no steps: no size to compare
            continue
          shape = list(a.shape[1:] if kind == "frame" else a.shape)
          if not all(shape):
            raise ValueError(f"{where}: video {video.id} has an empty `{n}`")
          if dims.setdefault(n, shape) != shape:
            raise ValueError(f"{where}: video {video.id} has `{n}` of size {shape}, earlier videos {dims[n]}")
        if video.id in seen:
          first = seen[video.id]
          raise ValueError(f"video id {video.id!r} appears twice: {files[first[0]]} byte {first[1]} and {where}")
        seen[video.id] = (i, offset)
        counts["videos"] += 1
        if not video.labels:
          counts["unlabeled"] += 1
          continue
        counts["multi_label"] += len(video.labels) > 1
        steps = 0
        if kind == "frame":
          lengths = [len(video.arrays[n]) for n in FRAME_FEATURES]
          steps = min(lengths)
          if steps == 0:
            counts["no_steps"] += 1
            continue
          counts["length_mismatch"] += len(set(lengths)) > 1
          counts["truncated"] += steps > max_steps
        split = by_name or split_of_id(video.id)
        counts["by_name" if by_name else "by_hash"] += 1
        entries.append(_Entry(video.id, split, int(video.labels[0]), i, offset, steps))
      counts["records"] += records
      counts["empty_files"] += records == 0
  finally:
    bar.close()
  return entries, kind, dims, counts


def _notes(kind, dims, counts, classes, files, split_rule, max_steps, empty_splits) -> list[str]:
  n_lab = counts["videos"] - counts["unlabeled"] - counts["no_steps"]
  notes = [f"yt8m: YouTube-8M {kind}-level records, {counts['records']} in {len(files)} files; label = the first "
           f"label id listed in a video's `labels` (YouTube-8M is multi-label: {counts['multi_label']} of {n_lab} "
           f"stored videos list more than one, and only the first is kept), indexing the sorted first-label ids "
           f"({len(classes)} classes); identity = str(first label id); id = video = the YouTube-8M video id; "
           "relevance: same first label"]
  if kind == "frame":
    span, sign = QUANTIZE_MAX - QUANTIZE_MIN, "-" if QUANTIZE_MIN < 0 else "+"
    notes.append(f"rgb {dims['rgb']} and audio {dims['audio']} per second: uint8 dequantised as q * "
                 f"{span:g}/255 + {span:g}/512 {sign} {abs(QUANTIZE_MIN):g} "
                 f"(yt8m's Dequantize, min {QUANTIZE_MIN:g}, max {QUANTIZE_MAX:g}), stored as kind sequence "
                 f"[{max_steps}, D + 1] (steps, then the mask column), step_seconds 1.0; "
                 f"{counts['truncated']} videos longer than {max_steps} steps truncated to the first {max_steps}; "
                 f"{counts['length_mismatch']} videos whose rgb and audio lengths differ cut to the shorter")
  else:
    notes.append(f"mean_rgb {dims['mean_rgb']} and mean_audio {dims['mean_audio']}: float32 as stored, "
                 "kind vector")
  notes.append(split_rule)
  skipped = f"skipped {counts['unlabeled']} videos without labels (YouTube-8M's test files carry none)"
  if kind == "frame":
    skipped += f" and {counts['no_steps']} without frames"
  notes.append(skipped)
  for split in empty_splits:
    notes.append(f"warning: no labeled videos in the {split} split; it is not stored")
  if counts["empty_files"]:
    notes.append(f"{counts['empty_files']} files hold no records")
  return notes


def prepare_yt8m(records, out, max_steps: int = DEFAULT_MAX_STEPS) -> dict:
  """Prepares the YouTube-8M TFRecords matching `records` (glob patterns) into OUT; returns the manifest."""
  start = time.time()
  if int(max_steps) < 1:
    raise ValueError(f"--max-steps must be at least 1, got {max_steps}")
  max_steps = int(max_steps)
  storage.check_out(out)  # before reading: a bad OUT fails first
  patterns = [str(p) for p in ([records] if isinstance(records, (str, os.PathLike)) else records)]
  files = find_records(patterns)
  storage.register_corpus(CORPUS)
  with storage.Build(out, inputs=[("--records", f) for f in files]) as build:
    gunzip = build.path / ".yt8m-gunzip"  # gzip files decompressed for seeking; removed before the commit
    readable = []
    for i, path in enumerate(files):
      if is_gzip(path):
        gunzip.mkdir(exist_ok=True)
        target = gunzip / f"{i}.tfrecord"
        try:
          with gzip.open(path, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
          raise ValueError(f"{path}: damaged gzip data: {e}") from None
        readable.append(target)
      else:
        readable.append(path)
    entries, kind, dims, counts = _index(files, readable, max_steps)
    if not counts["records"]:
      raise ValueError(f"no records in the {len(files)} files matching --records {' '.join(patterns)}")
    if not entries:
      raise ValueError(f"no labeled videos among the {counts['videos']} records of {len(files)} files "
                       f"({counts['unlabeled']} without labels: YouTube-8M's test files carry none"
                       + (f"; {counts['no_steps']} without frames" if counts["no_steps"] else "") + ")")
    classes = sorted({e.label for e in entries})
    label_index = {c: i for i, c in enumerate(classes)}
    per_split = {s: sorted((e for e in entries if e.split == s), key=lambda e: e.id) for s in SPLITS}
    if not per_split["train"]:
      found = ", ".join(f"{s} {len(v)}" for s, v in per_split.items())
      raise ValueError(f"no labeled videos in the train split ({found}); name training files train*, or use files "
                       "named otherwise (split by a hash of the video id)")
    empty = [s for s in SPLITS if not per_split[s]]
    splits = [s for s in SPLITS if per_split[s]]
    named = sorted({split_of_file(p) for p in files} - {None})
    unnamed = [p for p in files if split_of_file(p) is None]
    rule = []
    if named:
      rule.append(f"split by file name (train* -> train, valid* -> validation, test* -> test): "
                  f"{len(files) - len(unnamed)} files, {counts['by_name']} videos")
    if unnamed:
      rule.append(f"videos of the {len(unnamed)} files named otherwise ({counts['by_hash']} videos) split by "
                  "sha256 of the video id (its first 8 bytes big-endian mod 10: 0-7 train, 8 validation, 9 test)")
    notes = _notes(kind, dims, counts, classes, files, "; ".join(rule), max_steps, empty)

    if kind == "frame":
      entries_m = [{"name": n, "kind": "sequence", "shape": [max_steps, dims[n][0] + 1], "dtype": "float32",
                    "step_shape": list(dims[n]), "step_seconds": 1.0} for n in FRAME_FEATURES]
    else:
      entries_m = [{"name": n, "kind": "vector", "shape": list(dims[n]), "dtype": "float32"} for n in VIDEO_FEATURES]

    def split_fn(split):
      def generate():
        handles = collections.OrderedDict()
        try:
          for e in progress.bar(per_split[split], desc=f"yt8m {split}", unit="video", dynamic_ncols=True):
            if e.file not in handles:
              if len(handles) >= _OPEN_FILES:
                handles.popitem(last=False)[1].close()
              handles[e.file] = open(readable[e.file], "rb")
            handles.move_to_end(e.file)
            video = decode_video(read_record_at(handles[e.file], files[e.file], e.offset))
            if video.id != e.id:
              raise ValueError(f"{files[e.file]}: byte {e.offset}: video {video.id}, not {e.id} as indexed: the file "
                               "changed while prep ran")
            if kind == "frame":
              record = {n: sequence.pack(dequantize(video.arrays[n][:e.steps]), max_steps) for n in FRAME_FEATURES}
            else:
              record = {n: np.asarray(video.arrays[n], np.float32) for n in VIDEO_FEATURES}
            record.update(label=label_index[e.label], id=e.id, identity=str(e.label), video=e.id, gender="")
            yield record
        finally:
          for f in handles.values():
            f.close()
      return generate

    manifest = {
        "config": None, "data_config": {}, "audio_normalisation": None, "relevance": "same first label",
        "identities": [{"identity": str(c), "name": str(c), "gender": "", "nationality": ""} for c in classes],
        "attributes": [], "skipped": [], "warnings": [], "notes": notes,
        "source": {"records": patterns, "files": [{"path": str(p), "split": split_of_file(p) or "sha256 of id"}
                                                  for p in files],
                   "level": kind, "max_steps": max_steps if kind == "frame" else None,
                   "dequantize": {"min": QUANTIZE_MIN, "max": QUANTIZE_MAX} if kind == "frame" else None,
                   "counts": {k: int(counts[k]) for k in COUNTS}}}
    manifest = storage.write_dataset(build.path, CORPUS, {s: split_fn(s) for s in splits}, entries_m, manifest)
    shutil.rmtree(gunzip, ignore_errors=True)
    out = build.commit()
  rows = ", ".join(f"{s} {v['examples']}" for s, v in manifest["splits"].items())
  shapes = " ".join(f"{m['name']} {m['shape']}" for m in entries_m)
  print(f"prepared yt8m ({kind}-level): {rows} videos; skipped {counts['unlabeled']} unlabeled"
        + (f", {counts['no_steps']} without frames; truncated {counts['truncated']}" if kind == "frame" else "")
        + f"; {shapes}; {len(classes)} classes -> {out} in {time.time() - start:.1f} s")
  return manifest
