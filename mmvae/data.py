"""Prepared-dataset reader: whole splits in memory (or random access), and batches fixed by (seed, step), read by grain."""

import functools
import json
import os
import pathlib

import numpy as np

from mmvae import main_guard, modalities
from mmvae import workers as workers_lib

FORMAT = "mmvae-prepared/1"
TEXT_FEATURES = ("id", "identity", "video", "gender")
# data.* keys that change the stored features; the rest (dither, seed, ...) only change sampling.
FEATURE_KEYS = ("sample_rate", "segment_samples", "window_ms", "hop_ms", "n_fft", "n_bins", "magnitude",
                "time_average", "pooling", "n_mels", "n_mfcc", "face_size", "grayscale", "video_frames", "points",
                "video_fps", "sequence_steps", "resampler", "audio_views")
PAIRINGS = ("utterance", "video", "identity")
_GROUP_KEY = {"video": "video", "identity": "label"}
IN_MEMORY_BYTES = 4 << 30  # splits larger than this are read by random access instead
CHUNK = 4096  # examples read from disk at a time when a split is streamed, at most
# ... and at most about this many bytes of arrays: decoding a chunk's records holds several copies of it.
CHUNK_BYTES = 32 << 20


class DamagedDataset(ValueError):
  """A prepared dataset whose records disagree with its manifest, or with a shard missing, truncated or corrupted."""


class Dataset:
  """A prepared dataset folder (manifest.json + TFDS array_record builder directory)."""

  def __init__(self, data_dir):
    self.data_dir = pathlib.Path(data_dir)
    path = self.data_dir / "manifest.json"
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found: {self.data_dir} is not a prepared dataset, or its preparation "
                              "did not finish; run `mmvae prep ... --out` to (re)build it")
    self.manifest = json.loads(path.read_text(encoding="utf-8"))
    if self.manifest.get("format") != FORMAT or not self.manifest.get("complete"):
      raise ValueError(f"{path}: format {self.manifest.get('format')!r}, complete={self.manifest.get('complete')}; "
                       f"expected a complete {FORMAT} dataset: re-run `mmvae prep`")
    self.splits = list(self.manifest["splits"])
    self._arrays: dict[str, dict[str, np.ndarray]] = {}
    self._sources = {}
    self._columns: dict[str, dict[str, np.ndarray]] = {}
    self._shards = self._check_records()

  def _damaged(self, what: str) -> DamagedDataset:
    return DamagedDataset(f"the prepared dataset {self.data_dir} is damaged: {what}; re-run `mmvae prep "
                          f"{self.manifest.get('corpus', '...')} --out {self.data_dir}` to rebuild it")

  def _check_records(self) -> dict[str, list[tuple[pathlib.Path, int]]]:
    """{split: [(shard file, examples)]}, or DamagedDataset when the records disagree with manifest.json.

    Cheap, so done on every open: each split's example count in the manifest equals its shard lengths in the
    builder's dataset_info.json (as shards.finalize wrote them), and every shard file exists and its
    array_record index holds that many records (a truncated file loses its index). No record is read: bytes
    corrupted inside a shard are found when read (`read`).
    """
    from array_record.python import array_record_module
    folder = self.data_dir / self.manifest.get("tfds_dir", "")
    try:
      info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
      raise self._damaged(f"{folder / 'dataset_info.json'} cannot be read "
                          f"({getattr(e, 'strerror', None) or e})") from None
    infos = {s.get("name"): s for s in info.get("splits", [])}
    shards = {}
    for split in self.splits:
      if split not in infos:
        raise self._damaged(f"split {split!r} of manifest.json has no shards in {folder / 'dataset_info.json'}")
      lengths = [int(n) for n in infos[split].get("shardLengths", [])]
      expected = int(self.manifest["splits"][split]["examples"])
      if sum(lengths) != expected:
        raise self._damaged(f"split {split!r}: manifest.json gives {expected} examples, its shards hold "
                            f"{sum(lengths)} ({folder / 'dataset_info.json'}); the manifest or the shards were "
                            "changed after prep")
      template = infos[split].get("filepathTemplate") or "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
      files = []
      for i, n in enumerate(lengths):
        name = template.replace("{DATASET}", str(info.get("name"))).replace("{SPLIT}", split).replace(
            "{FILEFORMAT}", "array_record").replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{len(lengths):05d}")
        path = folder / name
        if not path.is_file():
          raise self._damaged(f"shard {path} of split {split!r} is missing")
        try:
          reader = array_record_module.ArrayRecordReader(str(path), "readahead_buffer_size:0")
          found = reader.num_records() if reader.ok() else None
          reader.close()  # raises what a failed open found
        except (RuntimeError, OSError, ValueError):
          found = None
        if found != n:
          state = "has no readable index (truncated?)" if not found else f"holds {found} records"
          raise self._damaged(f"shard {path} of split {split!r} {state}; dataset_info.json gives {n} examples "
                              f"({path.stat().st_size} bytes on disk)")
        files.append((path, n))
      shards[split] = files
    return shards

  def verify(self, split: str) -> None:
    """DamagedDataset unless every record of `split` reads back intact: one pass over its shard files, each chunk's
    hash checked by the array_record reader, nothing decoded (a shard's records in memory at a time)."""
    self._check_split(split)
    for path, _ in self._shards[split]:
      error = self._shard_error(split, path)
      if error is not None:
        raise error

  def _shard_error(self, split: str, path: pathlib.Path, positions=None) -> DamagedDataset | None:
    """The DamagedDataset naming shard `path` of `split` when its records at `positions` (default all) do not read."""
    from array_record.python import array_record_module
    try:
      reader = array_record_module.ArrayRecordReader(str(path), "readahead_buffer_size:0")
      try:
        reader.read_all() if positions is None else reader.read([int(i) for i in positions])
      finally:
        reader.close()
    except (RuntimeError, OSError, ValueError) as e:
      first = (str(e).splitlines() or [type(e).__name__])[0][:200]
      return self._damaged(f"shard {path} of split {split!r} cannot be read ({first})")
    return None

  def _unreadable(self, split: str, indices, error: Exception) -> DamagedDataset:
    """The DamagedDataset naming the shard of `split` whose records at `indices` cannot be read."""
    starts = np.cumsum([0] + [n for _, n in self._shards.get(split, [])])
    positions = np.asarray(indices, np.int64)
    for k, (path, _) in enumerate(self._shards.get(split, [])):
      local = positions[(positions >= starts[k]) & (positions < starts[k + 1])] - starts[k]
      found = self._shard_error(split, path, local) if len(local) else None
      if found is not None:
        return found
    first = (str(error).splitlines() or [type(error).__name__])[0][:200]
    return self._damaged(f"split {split!r} cannot be read ({first})")

  def __getstate__(self):
    """Pickled (into grain's worker processes) as its folder and manifest: each process reads the data itself."""
    return dict(self.__dict__, _arrays={}, _sources={}, _columns={})

  def num_examples(self, split: str) -> int:
    self._check_split(split)
    return int(self.manifest["splits"][split]["examples"])

  def modalities(self, names=()) -> dict[str, modalities.Modality]:
    """{name: Modality} the manifest declares, in its order; `names` (config.data.modalities) picks some."""
    return {m.name: m for m in modalities.selected(modalities.of_manifest(self.manifest), names)}

  def input_shapes(self) -> dict[str, tuple[int, ...]]:
    """{name: shape of one example as the model sees it} for every modality."""
    return {m.name: m.model_shape for m in modalities.of_manifest(self.manifest)}

  def _check_split(self, split: str) -> None:
    if split not in self.manifest["splits"]:
      raise ValueError(f"split {split!r} is not in the prepared dataset {self.data_dir} (it has {self.splits})")

  def _source(self, split: str):
    if split not in self._sources:
      _map_large_blocks()
      import tensorflow_datasets as tfds  # only here: the in-memory path after the first load needs none of it
      builder = tfds.builder_from_directory(str(self.data_dir / self.manifest["tfds_dir"]))
      self._sources[split] = builder.as_data_source(split)
    return self._sources[split]

  def example_bytes(self) -> int:
    """Bytes of one example's stored modalities."""
    return sum(np.dtype(m.dtype).itemsize * int(np.prod(m.shape)) for m in modalities.of_manifest(self.manifest))

  def in_memory(self, split: str) -> bool:
    """Whether a split is small enough to hold whole (the normal case)."""
    return self.num_examples(split) * self.example_bytes() <= IN_MEMORY_BYTES

  def chunk_size(self) -> int:
    """Examples per streamed chunk: CHUNK, fewer for large examples (CHUNK_BYTES), a multiple of 256 above 256."""
    # 256 = inference.BATCH: a split encoded chunk by chunk then meets the batches it would whole.
    n = min(CHUNK, max(1, CHUNK_BYTES // max(1, self.example_bytes())))
    return n if n < 256 else n - n % 256

  def read(self, split: str, indices) -> dict[str, np.ndarray]:
    """Examples at `indices` of the stored order (sorted by id), read from disk."""
    self._check_split(split)
    try:
      records = self._source(split).__getitems__([int(i) for i in indices])
    except (RuntimeError, OSError) as e:  # a shard changed since the open: missing, cut short, bytes corrupted
      raise self._unreadable(split, indices, e) from None
    out = {m.name: np.stack([r[m.name] for r in records]).astype(m.dtype, copy=False)
           for m in modalities.of_manifest(self.manifest)}
    out["label"] = np.array([r["label"] for r in records], np.int32)
    for name in (n for n in TEXT_FEATURES if n not in out):  # a modality named like a text field replaced it
      out[name] = np.array([r[name].decode() if isinstance(r[name], bytes) else str(r[name]) for r in records])
    return out

  def chunks(self, split: str, size: int | None = None):
    """(first position, `read` of the next `size` (default chunk_size()) examples) over the split in stored order."""
    n, size = self.num_examples(split), size or self.chunk_size()
    for lo in range(0, n, size):
      yield lo, self.read(split, range(lo, min(n, lo + size)))

  def arrays(self, split: str) -> dict[str, np.ndarray]:
    """Every example of `split`, sorted by id: each modality as stored, label int32, text fields as str arrays."""
    if split not in self._arrays:
      # Filled chunk by chunk into arrays of the final size: the peak is the split once plus one chunk.
      n, data = self.num_examples(split), {}
      for lo, chunk in self.chunks(split):
        for k, v in chunk.items():
          if k not in data:
            data[k] = np.empty((n,) + v.shape[1:], v.dtype if v.dtype.kind != "U" else object)
          data[k][lo:lo + len(v)] = v
      data = {k: v.astype(str) if v.dtype == object else v for k, v in data.items()}
      ids = data.get("id", ())
      if len(ids) > 1 and not np.all(ids[:-1] <= ids[1:]):  # prep writes in id order; older datasets may not
        order = np.argsort(ids, kind="stable")
        data = {k: v[order] for k, v in data.items()}
      self._arrays[split] = data
    return self._arrays[split]

  def take(self, split: str, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Examples at `indices` (positions in id order): from memory when the split fits, else from disk."""
    if split in self._arrays or self.in_memory(split):
      return {k: v[indices] for k, v in self.arrays(split).items()}
    return self.read(split, indices)  # prep writes examples in id order, so stored order == id order

  def stored_columns(self, split: str) -> dict[str, np.ndarray] | None:
    """The per-example fields prep stored beside the records (OUT/<manifest columns>/<split>.npz), or None."""
    folder = self.manifest.get("columns")
    if not folder:
      return None
    if split not in self._columns:
      self._check_split(split)
      path = self.data_dir / folder / f"{split}.npz"
      with np.load(path, allow_pickle=False) as f:  # str arrays need no pickle
        cols = {k: f[k] for k in f.files}
      n = self.num_examples(split)
      wrong = {k: len(v) for k, v in cols.items() if len(v) != n}
      if wrong:
        raise ValueError(f"{path}: columns {wrong} have other lengths than the {n} examples the manifest gives "
                         f"split {split!r}; the dataset is damaged: re-run `mmvae prep`")
      self._columns[split] = cols
    return self._columns[split]

  def column(self, split: str, name: str) -> np.ndarray:
    """One per-example field of `split` in id order (label int32, video, ...): prep's stored column when it has one."""
    if split in self._arrays:
      return self._arrays[split][name]
    cols = self.stored_columns(split)
    if cols is not None and name in cols:
      value = cols[name].astype(np.int32) if name == "label" else cols[name].astype(str)
      ids = cols.get("id")
      if ids is not None and len(ids) > 1 and not np.all(ids[:-1] <= ids[1:]):  # stored order -> id order
        value = value[np.argsort(ids.astype(str), kind="stable")]
      return value
    if self.in_memory(split):
      return self.arrays(split)[name]
    return np.concatenate([chunk[name] for _, chunk in self.chunks(split)])

  def check_config(self, config) -> None:
    """ValueError saying what to change when `config.data` does not match how this dataset was prepared."""
    prepared = self.manifest.get("data_config", {})
    wrong = [k for k in FEATURE_KEYS if k in prepared and k in config.data and config.data[k] != prepared[k]]
    if wrong:
      found = "; ".join(f"data.{k}={prepared[k]!r} (config has {config.data[k]!r})" for k in wrong)
      fix = " ".join(f"--config.data.{k}={prepared[k]}" for k in wrong)
      raise ValueError(f"the prepared dataset {self.data_dir} (config {self.manifest.get('config')!r}) was built "
                       f"with {found}. Train with {fix}, or re-run `mmvae prep` with this config")
    check_pairing(self.manifest, config.data.get("pairing", "utterance"))
    try:
      self.modalities(config.data.get("modalities", ()))
    except ValueError as e:
      raise ValueError(f"the prepared dataset {self.data_dir}: {e}") from None
    needed = ["train"]
    if "analysis" in config and "split" in config.analysis:
      needed.append(config.analysis.split)
    for split in needed:
      if split not in self.manifest["splits"]:
        raise ValueError(f"the prepared dataset {self.data_dir} has no {split!r} split (it has {self.splits}); "
                         "prepare a corpus with that split or set --config.analysis.split")


def _map_large_blocks(threshold: int = 1 << 20) -> None:
  """glibc only: blocks of `threshold` bytes and more are mapped and unmapped, never kept in malloc's arenas.

  Records decode in the reader's threads; a chunk's arrays stacked from them otherwise land in arenas that
  grow by about a split's size per pass (measured: 190 MiB read in 32 MiB chunks, RSS +175 MiB per pass).
  """
  import ctypes
  import ctypes.util
  global _MAPPED
  if _MAPPED:
    return
  _MAPPED = True
  try:
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-3, threshold)  # -3: M_MMAP_THRESHOLD
  except (OSError, AttributeError):  # not glibc (macOS, musl): its own allocator's behaviour stands
    pass


_MAPPED = False


def check_pairing(manifest: dict, policy: str) -> None:
  """ValueError when config.data.pairing is unknown, or groups by a text field the dataset replaced by a modality."""
  if policy not in PAIRINGS:
    raise ValueError(f"config.data.pairing={policy!r} is unknown; use one of {PAIRINGS}")
  key = _GROUP_KEY.get(policy)
  if key in {m.name for m in modalities.of_manifest(manifest)}:
    raise ValueError(f"config.data.pairing={policy!r} groups examples by their {key!r} field, which this dataset "
                     "replaces by a modality of that name; use 'identity' or 'utterance'")


class _Permutations:
  """Epoch permutations, cached, each np.random.default_rng((seed, epoch)).permutation(n)."""

  def __init__(self, n: int, seed: int):
    self.n, self.seed, self._cache = n, seed, {}

  def __call__(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if len(self._cache) > 4:
        self._cache.pop(min(self._cache))
      self._cache[epoch] = np.random.default_rng((self.seed, epoch)).permutation(self.n)
    return self._cache[epoch]


def _indices(perms: _Permutations, global_batch_size: int, step: int) -> np.ndarray:
  """Example indices of batch `step`: position p = step*B + j is example perm(p // N)[p % N]."""
  p = step * global_batch_size + np.arange(global_batch_size)
  epochs, within = np.divmod(p, perms.n)
  return np.array([perms(int(e))[w] for e, w in zip(epochs, within)], dtype=np.int64)


class Pairing:
  """Which example gives each other modality of a training row: the row's own, or a member of its video or identity group.

  The first modality of a run is the anchor; every other modality comes from a partner example
  (and one of its stored frames), drawn for each modality in order from (seed, step, position).
  """

  def __init__(self, dataset: Dataset, split: str, policy: str = "utterance"):
    check_pairing(dataset.manifest, policy)
    self.policy = policy
    if policy != "utterance":
      keys = dataset.column(split, _GROUP_KEY[policy])
      _, self.group_of = np.unique(keys, return_inverse=True)
      order = np.argsort(self.group_of, kind="stable")
      bounds = np.r_[0, np.cumsum(np.bincount(self.group_of))]
      self.members = [order[bounds[g]:bounds[g + 1]] for g in range(len(bounds) - 1)]

  def __call__(self, indices: np.ndarray, seed: int, step: int, frames: list[int], anchor_frames: int = 1,
               positions=None):
    """([(partner, frame) per other modality], anchor frame) per batch position j, drawn from (seed, step, j) only.

    positions: each row's position j in the global batch (default 0, 1, ...): a process building only its own
    rows draws what the whole batch would hold there.
    """
    n = len(indices)
    positions = range(n) if positions is None else positions
    partners = [np.array(indices, np.int64) for _ in frames]
    chosen = [np.zeros(n, np.int64) for _ in frames]
    anchor = np.zeros(n, np.int64)
    if self.policy == "utterance" and max(frames, default=1) == 1 and anchor_frames == 1:
      return list(zip(partners, chosen)), anchor
    for row, (j, i) in enumerate(zip(positions, indices)):
      rng = np.random.default_rng((seed, step, int(j)))
      for partner, frame, k in zip(partners, chosen, frames):
        if self.policy != "utterance":
          group = self.members[self.group_of[i]]
          partner[row] = group[rng.integers(len(group))]
        frame[row] = rng.integers(k)
      if anchor_frames > 1:
        anchor[row] = rng.integers(anchor_frames)
    return list(zip(partners, chosen)), anchor


def model_inputs(specs: dict, arrays: dict, frame: int = 0) -> dict[str, np.ndarray]:
  """{name: model input} of whole stored arrays, each example's `frame` for multi-frame modalities."""
  return {name: m.kind_module.inputs(m, arrays[name], np.full(len(arrays[name]), frame)) for name, m in specs.items()}


def _check_batch(dataset: Dataset, split: str, global_batch_size: int) -> None:
  """ValueError for a batch size below 1 or an empty split (its split over devices: parallel.check_batch_size)."""
  if global_batch_size < 1:
    raise ValueError(f"global batch size must be >= 1, got {global_batch_size}")
  if dataset.num_examples(split) == 0:
    raise ValueError(f"split {split!r} of {dataset.data_dir} is empty")


def batch_at(dataset: Dataset, split: str, global_batch_size: int, seed: int, step: int,
             pairing: str = "utterance", modality_names=()) -> dict[str, np.ndarray]:
  """Batch number `step` of the (seed)-ordered stream: {modality: model input} (an image float32 [B,S,S,C] in [0,1]), label."""
  _check_batch(dataset, split, global_batch_size)
  return _Stream(dataset, split, global_batch_size, seed, pairing, modality_names)(step)


def _start_method_safe() -> None:
  """grain's worker processes read absl flags; a program that never parsed them (the mmvae CLI, pytest) marks them parsed."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class _Stream:
  """One split's (seed)-ordered stream of batches: stream(step) is rows `rows` of batch number `step`.

  `batch_at` calls it once; `Batches` has grain map it over step numbers.

  Pickled into grain's worker processes without the data: `Dataset` drops its arrays when pickled, so each
  worker opens the prepared dataset itself (memory or random access, as `Dataset.take` decides).
  """

  def __init__(self, dataset: Dataset, split: str, global_batch_size: int, seed: int, pairing: str,
               modality_names, rows: slice = slice(None)):
    self.dataset, self.split, self.global_batch_size, self.seed = dataset, split, global_batch_size, seed
    self.pairing, self.modality_names, self.rows = pairing, tuple(modality_names), rows
    self._ready = None

  def __getstate__(self):
    return dict(self.__dict__, _ready=None)

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    if self._ready is None:
      n = self.dataset.num_examples(self.split)
      self._ready = (_Permutations(n, self.seed), Pairing(self.dataset, self.split, self.pairing),
                     self.dataset.modalities(self.modality_names))
    perms, pairing, specs = self._ready
    step = int(step)
    idx = _indices(perms, self.global_batch_size, step)[self.rows]
    positions = np.arange(self.global_batch_size)[self.rows]
    data = self.dataset.take(self.split, idx)
    first, *others = specs.values()
    drawn, anchor_frame = pairing(idx, self.seed, step, [m.frames for m in others], first.frames, positions)
    batch = {first.name: first.kind_module.inputs(first, data[first.name], anchor_frame)}
    for m, (partners, frames) in zip(others, drawn):
      stored = data[m.name] if pairing.policy == "utterance" else self.dataset.take(self.split, partners)[m.name]
      batch[m.name] = m.kind_module.inputs(m, stored, frames)
    batch["label"] = np.asarray(data["label"], np.int32)
    return batch


class Batches:
  """Batches start_step, start_step + 1, ... of a split (each `batch_at(step)`, or this process's rows of it), as a
  grain pipeline: grain maps `_Stream` over step numbers, in a background thread (workers=0) or in `workers`
  worker processes, `prefetch` batches ahead.

  Its state (`get_state`/`set_state`, JSON bytes) is what `grain.checkpoint.CheckpointSave` writes into an Orbax
  checkpoint, one file per process: the next step, and grain's own iterator state, which a resume with the same
  worker count restores; with another worker count the pipeline restarts at the saved step (same batches, since
  a batch is a function of (seed, step)). Call `close()` to stop the workers.
  """

  END = 1 << 62  # the stream has no end: training stops at config.train.num_steps

  def __init__(self, dataset: Dataset, split: str, global_batch_size: int, seed: int, start_step: int = 0,
               rows: slice = slice(None), workers: int = 0, prefetch: int = 2, pairing: str = "utterance",
               modality_names=()):
    _check_batch(dataset, split, global_batch_size)
    if workers < 0:
      raise ValueError(f"workers={workers} must be >= 0 (0: a background thread)")
    self._fn = _Stream(dataset, split, global_batch_size, seed, pairing, modality_names, rows)
    # An unguarded script's top level: a background thread, as its spawned workers would rerun the script.
    self.workers = main_guard.processes(int(workers), in_process=0)
    self.prefetch = max(0, int(prefetch))
    self._it = None
    self._open(base=int(start_step))
    self.step = int(start_step)  # the step of the next batch

  def _open(self, base: int, grain_state=None) -> None:
    import grain
    self.close()
    pipeline = grain.MapDataset.range(base, self.END).map(self._fn).to_iter_dataset(
        grain.ReadOptions(num_threads=1 if self.prefetch else 0, prefetch_buffer_size=max(1, self.prefetch)))
    if self.workers:
      _start_method_safe()
      workers_lib.quiet_tracker()
      # Each worker exits when this process dies (kill -9 included) and leaves Ctrl-C to this one.
      pipeline = pipeline.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers,
                                                                   per_worker_buffer_size=max(1, self.prefetch)),
                                      worker_init_fn=functools.partial(workers_lib.exit_with_parent, os.getpid()))
    self._it = iter(pipeline)
    if grain_state is not None:
      self._it.set_state(grain_state)
    self.base = base

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._it)
    self.step += 1
    return batch

  def get_state(self) -> bytes:
    return json.dumps({"step": self.step, "base": self.base, "workers": self.workers,
                       "grain": self._it.get_state()}).encode()

  def set_state(self, state: bytes) -> None:
    saved = json.loads(state)
    if saved.get("workers") == self.workers:
      self._open(int(saved["base"]), saved["grain"])
    else:
      self._open(int(saved["step"]))
    self.step = int(saved["step"])

  def start_prefetch(self) -> None:
    """Starts the workers now rather than at the first batch (grain's checkpoint handler calls it after a restore)."""
    start = getattr(self._it, "start_prefetch", None)
    if start is not None:
      start()

  def close(self) -> None:
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None


def worker_count(requested: int, dataset: Dataset, split: str) -> int:
  """Grain worker processes for config.train.data_workers: -1 (auto) -> none when the split is held in memory
  (a batch is then an index gather, cheaper than a hop between processes), else up to 4 reading from disk."""
  if requested >= 0:
    return int(requested)
  if requested != -1:
    raise ValueError(f"config.train.data_workers={requested} must be -1 (auto) or >= 0 worker processes")
  return 0 if dataset.in_memory(split) else max(1, min(4, (os.cpu_count() or 2) - 1))


def stratified_rows(labels, limit: int, seed: int = 0) -> np.ndarray:
  """Sorted positions of at most `limit` examples, spread evenly over the labels (seeded): every row when they fit.

  The k-th pick of each label (in a seeded order) comes before any label's (k+1)-th, so a subset of a large split
  keeps every identity it can and no identity crowds out the others.
  """
  labels = np.asarray(labels)
  n = len(labels)
  if n <= limit:
    return np.arange(n)
  perm = np.random.default_rng(seed).permutation(n)
  _, group = np.unique(labels[perm], return_inverse=True)
  order = np.argsort(group, kind="stable")  # rows grouped by label, each group in the seeded order
  starts = np.r_[0, np.cumsum(np.bincount(group))[:-1]]
  rank = np.empty(n, np.int64)
  rank[order] = np.arange(n) - starts[group[order]]  # position of each row within its label's seeded order
  keep = np.lexsort((np.arange(n), rank))[:limit]  # by rank, ties in seeded order
  return np.sort(perm[keep])
