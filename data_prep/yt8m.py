"""`mmvae prep yt8m`: YouTube-8M TFRecords (frame-level or video-level) -> a prepared dataset, without TensorFlow.

Reads the TFRecord framing (both CRC32Cs verified; gzip-compressed files accepted) and the few protobuf
messages YouTube-8M uses (tf.train.Example, tf.train.SequenceExample) with data_prep.tfrecord.

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
from typing import NamedTuple

import numpy as np

from data_prep import corpora, storage, tfrecord
from mmvae import progress

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


def _steps(features: list[tfrecord.Feature], name: str) -> np.ndarray:
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
  context, lists = tfrecord.parse_example(buf)
  ident = context.get("id")
  if ident is None or ident.kind != "bytes" or len(ident.value) != 1:
    raise ValueError("no `id` (a bytes_list of one value) in its features")
  video_id = ident.value[0].decode("utf-8", errors="replace")
  labels = context.get("labels", tfrecord.Feature("int64", []))
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
      for offset, data in tfrecord.read_records(source, name=name):
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
  from mmvae.modalities import sequence  # pylint: disable=g-import-not-at-top  (JAX: not when `mmvae prep` parses)
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
      if tfrecord.is_gzip(path):
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
            video = decode_video(tfrecord.read_record_at(handles[e.file], files[e.file], e.offset))
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


def _add_arguments(parser, add_config) -> None:  # pylint: disable=unused-argument  (reads no config)
  parser.add_argument("--records", required=True, action="append", metavar="GLOB",
                      help="TFRecord files, a quoted glob pattern (** recursive; gzip-compressed files accepted); "
                           "repeatable; all frame-level or all video-level")
  parser.add_argument("--out", required=True, help=corpora.OUT_HELP)
  parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS,
                      help="frame-level: seconds stored per video (T); longer videos are truncated")


def _run(args, config) -> None:  # pylint: disable=unused-argument  (reads no config)
  prepare_yt8m(args.records, args.out, max_steps=args.max_steps)


corpora.register(corpora.Kind(
    CORPUS, help="YouTube-8M TFRecords (frame-level -> sequence modalities rgb, audio; video-level -> vector "
                 "modalities mean_rgb, mean_audio), read without TensorFlow",
    description="Label: the first label id of each video (YouTube-8M is multi-label), indexing the sorted first-label "
                "ids; unlabeled videos are skipped. Splits: train* -> train, valid* -> validation, test* -> test by "
                "file name; files named otherwise: sha256 of the video id (80/10/10).",
    add_arguments=_add_arguments, run=_run, prepare=prepare_yt8m))
