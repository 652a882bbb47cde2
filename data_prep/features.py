"""`mmvae prep features`: precomputed per-modality features (XMedia / XMediaNet style) -> `vector` modalities.

ROOT holds, per modality and split (train and test; validation optional), one feature matrix and
one label vector, in either layout (modalities may mix them):

  (a) <modality>_<split>.npz                   arrays `features` [N, D] (float) and `labels` [N]
  (b) <modality>_<split>_features.npy  and  <modality>_<split>_labels.npy

A modality name must be a Python identifier (it is a config key, `config.model.encoders.NAME`):
`rename={'3d': 'pointcloud'}` (`--rename 3d=pointcloud`) renames one as it is read.

A prepared dataset stores one row per example holding every modality, while XMedia's modalities
have different numbers of items per class. Per split, the rows are the items of the anchor (the
modality with the most items, ties to the first name in sorted order, or `anchor`), in file order;
every other modality gives each row an item of the row's class, cycling through a seeded permutation
of its items of that class, so each is used once before any is reused. Labels are the indices of
the original label values in sorted order; identity = video = the class, so retrieval relevance is
'same class'. Features are z-scored per modality with its train items' mean and std (`standardize`).

Join by id (`join_embeddings`, `--join DATA_DIR --embeddings PATH --name NAME`): every example of an
existing prepared dataset, with all its modalities and fields, plus one new modality NAME whose value is
looked up by the example's `id` in PATH (an .npz of `ids` and `embeddings`, e.g. written by `mmvae embed`,
or a folder of per-example ID.npy files). Vectors [D] become a `vector` modality, sequences [L, D] a
`sequence` one; values are stored as given (a pretrained space is kept as it is). The manifest keeps the
dataset's corpus metadata and adds the modality and a note; the fingerprint is recomputed.
"""

import collections
import keyword
import pathlib
import re
import time

import numpy as np

from data_prep import storage
from mmvae import progress

CORPUS = "features"
SPLITS = ("train", "validation", "test")
REQUIRED_SPLITS = ("train", "test")
STD_FLOOR = 1e-8  # a constant feature would otherwise divide by zero
CHUNK_ROWS = 4096  # feature rows read from ROOT's files at a time
RESERVED = ("label", *storage.TEXT_FEATURES)  # per-example fields beside the modalities
_SPLIT = "|".join(SPLITS)
_NPZ = re.compile(rf"(?P<modality>.+)_(?P<split>{_SPLIT})\.npz")
_NPY = re.compile(rf"(?P<modality>.+)_(?P<split>{_SPLIT})_(?P<part>features|labels)\.npy")
LAYOUTS = ("<modality>_<split>.npz (arrays features [N, D], labels [N]), or <modality>_<split>_features.npy and "
           "<modality>_<split>_labels.npy; split: train, validation (optional), test")


def parse_renames(rename) -> dict[str, str]:
  """{old: new} from a mapping or from 'OLD=NEW' strings (`--rename`)."""
  if not rename:
    return {}
  if isinstance(rename, dict):
    return {str(k): str(v) for k, v in rename.items()}
  out = {}
  for item in rename:
    old, sep, new = str(item).partition("=")
    if not sep or not old or not new:
      raise ValueError(f"--rename {item!r}: expected OLD=NEW, e.g. --rename 3d=pointcloud")
    if old in out:
      raise ValueError(f"--rename names {old!r} twice")
    out[old] = new
  return out


def _valid_name(name: str) -> bool:
  return name.isidentifier() and not keyword.iskeyword(name) and name not in RESERVED


def find_files(root) -> dict[str, dict[str, dict]]:
  """{modality: {split: {'features': path, 'labels': path or None (npz)}}} of ROOT's files in either layout."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ValueError(f"--root {root} is not a folder")
  found: dict = collections.defaultdict(dict)
  for path in sorted(root.iterdir()):
    if path.suffix not in (".npz", ".npy") or path.name.startswith("."):
      continue
    m = _NPZ.fullmatch(path.name) or _NPY.fullmatch(path.name)
    if not m:
      raise ValueError(f"{path} does not follow the layout {LAYOUTS}")
    entry = found[m["modality"]].setdefault(m["split"], {})
    key = m.groupdict().get("part") or "npz"
    if entry and (key == "npz" or "npz" in entry):  # one layout per modality and split
      raise ValueError(f"{path}: {m['modality']} {m['split']} is given both as .npz and as .npy files; keep one")
    entry[key] = path
  for modality, splits in found.items():
    for split, entry in splits.items():
      for part in ("features", "labels"):
        if "npz" not in entry and part not in entry:
          raise ValueError(f"{root}: missing {modality}_{split}_{part}.npy beside {modality}_{split}_"
                           f"{'labels' if part == 'features' else 'features'}.npy")
  if not found:
    raise ValueError(f"no feature files in {root}; expected {LAYOUTS}")
  return dict(found)


class MappedRows:
  """An .npy matrix read by rows: each read maps the file and unmaps it after, so resident memory stays bounded."""

  def __init__(self, path):
    self.path = path
    x = np.load(path, mmap_mode="r", allow_pickle=False)
    self.shape, self.dtype, self.ndim = x.shape, x.dtype, x.ndim

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    x = np.load(self.path, mmap_mode="r", allow_pickle=False)
    return np.array(x[index], np.float32)  # a copy: the mapping goes with `x`


def row_chunks(x, rows: int = CHUNK_ROWS):
  """float32 blocks of `rows` rows of an array or MappedRows, in order."""
  for lo in range(0, len(x), rows):
    yield np.asarray(x[lo:lo + rows], np.float32)


def _load(path: pathlib.Path, key: str | None):
  """One array of an .npy file (MappedRows) or of an .npz archive; a one-line ValueError when unreadable."""
  try:
    if key is None:
      return MappedRows(path)
    with np.load(path, allow_pickle=False) as archive:
      arrays = {k: archive[k] for k in ("features", "labels") if k in archive.files}
      present = archive.files
  except (OSError, EOFError, ValueError) as e:
    raise ValueError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  if key not in arrays:
    raise ValueError(f"{path} holds no array {key!r} (it has {present}); expected features [N, D] and labels [N]")
  return arrays[key]


def _checked_features(x, path) -> np.ndarray:
  """float32 [N, D], or a one-line ValueError naming the file (and the first bad row)."""
  if x.dtype.kind != "f":
    raise ValueError(f"{path}: features have dtype {x.dtype}; expected floats")
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{path}: features have shape {x.shape}; expected [N, D] with N, D >= 1")
  x32 = x if isinstance(x, MappedRows) else np.asarray(x, np.float32)  # an .npy file stays on disk
  bad = np.concatenate([np.flatnonzero(~np.isfinite(b).all(axis=1)) + i * CHUNK_ROWS
                        for i, b in enumerate(row_chunks(x32))])
  if len(bad):
    raise ValueError(f"{path}: row {bad[0]} of the features is not finite (NaN, inf, or beyond float32 range); "
                     f"{len(bad)} such rows")
  return x32


def _checked_labels(y, n: int, path) -> np.ndarray:
  """Labels [N] as integers (whole floats allowed) or strings, or a one-line ValueError naming the file."""
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(f"{path}: labels have shape {y.shape}; expected 1-D [N] (e.g. labels.ravel())")
  if len(y) != n:
    raise ValueError(f"{path}: {len(y)} labels for {n} feature rows")
  if y.dtype.kind == "f":
    if not (np.isfinite(y).all() and (y == np.round(y)).all()):
      raise ValueError(f"{path}: float labels must be whole numbers")
    return y.astype(np.int64)
  if y.dtype.kind in "iu":
    return y.astype(np.int64)
  if y.dtype.kind == "U":
    return y
  raise ValueError(f"{path}: labels have dtype {y.dtype}; expected integers or strings")


def read_inputs(root, rename=None) -> dict[str, dict[str, dict]]:
  """{modality: {split: {'features': float32 [N, D], 'labels': [N], 'files': [names]}}}, checked and renamed."""
  files = find_files(root)
  renames = parse_renames(rename)
  unknown = sorted(set(renames) - set(files))
  if unknown:
    raise ValueError(f"--rename names {unknown}, which ROOT does not have (it has {sorted(files)})")
  names = {old: renames.get(old, old) for old in files}
  for old, new in sorted(names.items()):
    if not _valid_name(new):
      hint = f"--rename {old}=NEW" if old == new else f"another name in --rename {old}=NEW"
      raise ValueError(f"modality name {new!r} is not a Python identifier (or is reserved: {', '.join(RESERVED)}); "
                       f"it must work as config.model.encoders.NAME: use {hint}, e.g. --rename 3d=pointcloud")
  twice = [n for n, c in collections.Counter(names.values()).items() if c > 1]
  if twice:
    raise ValueError(f"--rename gives two modalities the name {twice[0]!r}")
  if len(files) < 2:
    raise ValueError(f"ROOT holds one modality ({sorted(names.values())}); a dataset needs at least 2")
  out = {}
  for old, splits in sorted(files.items()):
    missing = [s for s in REQUIRED_SPLITS if s not in splits]
    if missing:
      raise ValueError(f"modality {old} has no {' or '.join(missing)} split; expected {LAYOUTS}")
    out[names[old]] = {}
    for split in (s for s in SPLITS if s in splits):
      entry = splits[split]
      fpath, lpath = (entry["npz"], entry["npz"]) if "npz" in entry else (entry["features"], entry["labels"])
      x = _checked_features(_load(fpath, "features" if "npz" in entry else None), fpath)
      y = _checked_labels(_load(lpath, "labels" if "npz" in entry else None), len(x), lpath)
      out[names[old]][split] = {"features": x, "labels": y, "files": sorted({fpath.name, lpath.name})}
    dims = {s: v["features"].shape[1] for s, v in out[names[old]].items()}
    if len(set(dims.values())) > 1:
      raise ValueError(f"modality {old}: feature sizes differ across splits {dims}")
  split_sets = {m: tuple(v) for m, v in out.items()}
  if len(set(split_sets.values())) > 1:
    raise ValueError(f"every modality needs the same splits (rows hold all of them); found {split_sets}")
  kinds = {m: {v["labels"].dtype.kind == "U" for v in d.values()} for m, d in out.items()}
  if len(set().union(*kinds.values())) > 1:
    raise ValueError(f"labels are numbers in some files and strings in others: {kinds}")
  return out


def choose_anchor(inputs: dict, split: str, anchor: str | None) -> str:
  """The given anchor, else the modality with the most items of the split (ties: the first name in sorted order)."""
  if anchor is not None:
    if anchor not in inputs:
      raise ValueError(f"--anchor {anchor!r} is not a modality (there are {sorted(inputs)}; names after --rename)")
    return anchor
  return max(sorted(inputs), key=lambda m: len(inputs[m][split]["labels"]))  # max keeps the first of ties


def pair_split(inputs: dict, split: str, anchor: str, seed: int) -> tuple[dict[str, np.ndarray], dict]:
  """({modality: item index per row}, stats): rows = the anchor's items; others cycle a seeded order per class."""
  rows_y = inputs[anchor][split]["labels"]
  picks, stats = {anchor: np.arange(len(rows_y))}, {"reused_rows": {}, "unused_items": {}}
  for i, m in enumerate(sorted(inputs)):
    if m == anchor:
      continue
    y = inputs[m][split]["labels"]
    rng = np.random.default_rng((seed, SPLITS.index(split), i))
    pick = np.empty(len(rows_y), np.int64)
    reused = 0
    for c in np.unique(rows_y):
      rows = np.flatnonzero(rows_y == c)
      items = np.flatnonzero(y == c)
      if not len(items):
        raise ValueError(f"modality {m} has no item of class {c} in the {split} split (the anchor {anchor} has "
                         f"{len(rows)}); every class of a split needs an item in every modality")
      order = rng.permutation(items)
      pick[rows] = order[np.arange(len(rows)) % len(items)]  # every item once before any again
      reused += max(0, len(rows) - len(items))
    picks[m] = pick
    stats["reused_rows"][m] = int(reused)
    stats["unused_items"][m] = int(len(y) - len(np.unique(pick)))
  return picks, stats


def normalisation(inputs: dict) -> dict[str, dict]:
  """{modality: {mean, std}} over its train items (float64; std floored at STD_FLOOR)."""
  out = {}
  for m, splits in inputs.items():
    x = splits["train"]["features"]
    # Two passes over row blocks in float64: never a float64 copy of the whole matrix.
    mean = sum(b.astype(np.float64).sum(axis=0) for b in row_chunks(x)) / len(x)
    var = sum(((b.astype(np.float64) - mean) ** 2).sum(axis=0) for b in row_chunks(x)) / len(x)
    out[m] = {"mean": mean, "std": np.maximum(np.sqrt(var), STD_FLOOR)}
  return out


def _notes(inputs, anchors, stats, classes, seed, standardize, root) -> list[str]:
  notes = [f"features: precomputed features from {root}; label = index of the original class label in sorted "
           f"order ({len(classes)} classes); identity = video = the class (data.pairing video and identity agree); "
           "gender empty",
           f"pairing (seed {seed}): per split the rows are the anchor modality's items in file order; every other "
           "modality gives each row an item of the row's class from a seeded cyclic order of its items of that "
           "class, each used once before any is reused",
           "retrieval over these rows differs from the per-modality galleries of the XMedia papers: a reused "
           "item appears in several rows and counts once per row (within its own modality an exact copy ranks "
           "first, inflating that modality's within-modality retrieval), and unused items (beyond the anchor's "
           "count of a class) are not stored; compare numbers within this toolkit, not with the papers'",
           "features z-scored per modality with its train items' mean and std (feature_normalisation)" if standardize
           else "features stored as given (no standardisation)"]
  for split, anchor in anchors.items():
    counts = ", ".join(f"{m} {len(inputs[m][split]['labels'])} items"
                       + (f" ({stats[split]['reused_rows'][m]} rows reuse one, {stats[split]['unused_items'][m]} "
                          "unused)" if m != anchor else "") for m in sorted(inputs))
    notes.append(f"{split}: {len(inputs[anchor][split]['labels'])} rows, anchor {anchor}; {counts}")
  return notes


def prepare_features(root, out, seed: int = 0, anchor: str | None = None, rename=None,
                     standardize: bool = True) -> dict:
  """Prepares ROOT's per-modality feature files into OUT (TFDS array_record + manifest.json); returns the manifest."""
  start = time.time()
  storage.check_out(out, {"--root": root})  # before reading: a bad OUT fails first; nothing written until inputs pass
  inputs = read_inputs(root, rename)
  splits = [s for s in SPLITS if s in next(iter(inputs.values()))]
  anchors = {s: choose_anchor(inputs, s, anchor) for s in splits}
  classes = np.unique(np.concatenate([v["labels"] for d in inputs.values() for v in d.values()]))
  paired = {s: pair_split(inputs, s, anchors[s], seed) for s in splits}
  norm = normalisation(inputs) if standardize else None
  order = [anchors["train"]] + [m for m in sorted(inputs) if m != anchors["train"]]  # the first is the anchor
  entries = [{"name": m, "kind": "vector", "shape": [int(inputs[m]["train"]["features"].shape[1])],
              "dtype": "float32"} for m in order]

  def split_fn(split):
    def generate():
      picks = paired[split][0]
      labels = inputs[anchors[split]][split]["labels"]
      width = len(str(len(labels) - 1))  # zero-padded: id order == row order
      block = {}
      for row in progress.bar(range(len(labels)), desc=f"features {split}", unit="row", dynamic_ncols=True):
        if row % CHUNK_ROWS == 0:  # the next rows of every modality, read at once: memory bounded by the block
          # Each modality's distinct items in file order (sequential reads); `where`: each row's place among them.
          unique = {m: np.unique(picks[m][row:row + CHUNK_ROWS], return_inverse=True) for m in order}
          block = {m: inputs[m][split]["features"][items] for m, (items, _) in unique.items()}
          where = {m: inverse for m, (_, inverse) in unique.items()}
        record = {}
        for m in order:
          x = np.asarray(block[m][where[m][row % CHUNK_ROWS]], np.float64)
          record[m] = ((x - norm[m]["mean"]) / norm[m]["std"] if norm else x).astype(np.float32)
        c = str(labels[row])
        record.update(label=int(np.searchsorted(classes, labels[row])), id=f"{split}/{anchors[split]}/{row:0{width}d}",
                      identity=c, video=c, gender="")
        yield record
    return generate

  manifest = {
      "config": None, "data_config": {}, "audio_normalisation": None, "relevance": "same class",
      "identities": [{"identity": str(c), "name": str(c), "gender": "", "nationality": ""} for c in classes],
      "attributes": [], "skipped": [], "warnings": [],
      "notes": _notes(inputs, anchors, {s: p[1] for s, p in paired.items()}, classes, seed, standardize, root),
      "feature_normalisation": ({m: {k: v.tolist() for k, v in s.items()} for m, s in norm.items()}
                                if norm else None),
      "source": {"root": str(pathlib.Path(root).resolve()), "seed": int(seed), "anchor": anchors,
                 "rename": parse_renames(rename), "standardize": bool(standardize),
                 "items": {m: {s: int(len(v["labels"])) for s, v in d.items()} for m, d in inputs.items()},
                 "files": {m: {s: v["files"] for s, v in d.items()} for m, d in inputs.items()},
                 "reused_rows": {s: p[1]["reused_rows"] for s, p in paired.items()},
                 "unused_items": {s: p[1]["unused_items"] for s, p in paired.items()}}}
  storage.register_corpus(CORPUS)
  with storage.Build(out, inputs={"--root": root}) as build:
    manifest = storage.write_dataset(build.path, CORPUS, {s: split_fn(s) for s in splits}, entries, manifest)
    out = build.commit()
  rows = ", ".join(f"{s} {v['examples']}" for s, v in manifest["splits"].items())
  shapes = " ".join(f"{m['name']} {m['shape']}" for m in entries)
  print(f"prepared features: {rows} rows; {shapes}; {len(classes)} classes; anchor "
        f"{', '.join(sorted(set(anchors.values())))} -> {out} in {time.time() - start:.1f} s")
  return manifest


# ------------------------------------------------------------------------------------------------------
# Join by example id: `mmvae prep features --join DATA_DIR --embeddings PATH --name NAME --out OUT`.

JOIN_LAYOUTS = ("one .npz holding ids [N] (str) and embeddings [N, D] (or [N, L, D]) float, or a folder of "
                "per-example .npy files ([D] or [L, D] float) whose path relative to the folder, without .npy, is "
                "the example id (e.g. id10001/1zcIwhmdeo4/00001.wav.npy)")
# Keys write_dataset sets itself: everything else of the joined dataset's manifest is kept.
_WRITER_KEYS = ("format", "corpus", "tfds_dir", "tfds_name", "tfds_version", "splits", "features", "modalities",
                "versions", "fingerprint", "complete")
_CHUNK = 1024  # examples read from DATA_DIR at a time


def _first_line(e: Exception) -> str:
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def _checked_embedding(x, where) -> np.ndarray:
  """One example's embedding ([D] or [L, D] floats, finite) as float32, or a one-line ValueError naming `where`."""
  x = np.asarray(x)
  if x.dtype.kind != "f":
    raise ValueError(f"{where}: embedding has dtype {x.dtype}; expected floats")
  if x.ndim not in (1, 2) or 0 in x.shape:
    raise ValueError(f"{where}: embedding has shape {list(x.shape)}; expected [D] (a vector) or [L, D] (a sequence)")
  x32 = np.asarray(x, np.float32)
  if not np.isfinite(x32).all():
    raise ValueError(f"{where}: embedding is not finite (NaN, inf, or beyond float32 range)")
  return x32


def _duplicates(ids) -> None:
  twice = [i for i, c in collections.Counter(ids).items() if c > 1]
  if twice:
    raise ValueError(f"--embeddings: {len(twice)} ids occur more than once (e.g. {', '.join(map(repr, twice[:5]))}); "
                     "each example needs exactly one embedding")


def read_embeddings(path) -> tuple[list[str], list[np.ndarray]]:
  """(ids, per-example float32 arrays [D] or [L, D]) of an .npz (ids, embeddings) or a folder of ID.npy files.

  One-line ValueErrors: PATH neither, unreadable files, non-float or non-finite values, mixed ranks or
  sizes D, duplicated ids.
  """
  path = pathlib.Path(path)
  if path.is_file() and path.suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as archive:
        present = archive.files
        ids, x = (archive["ids"], archive["embeddings"]) if {"ids", "embeddings"} <= set(present) else (None, None)
    except (OSError, EOFError, ValueError) as e:  # a damaged archive, or object arrays (pickles)
      raise ValueError(f"cannot read {path}: {_first_line(e)}") from None
    if ids is None:
      raise ValueError(f"{path} holds arrays {present}; expected ids [N] (str) and embeddings [N, D] float")
    if ids.ndim != 1 or ids.dtype.kind not in "US":
      raise ValueError(f"{path}: ids have shape {list(ids.shape)} and dtype {ids.dtype}; expected [N] strings")
    if x.ndim not in (2, 3) or len(x) != len(ids):
      raise ValueError(f"{path}: embeddings have shape {list(x.shape)} for {len(ids)} ids; expected [N, D] "
                       "(or [N, L, D])")
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids.tolist()]
    rows = [_checked_embedding(row, f"{path} (id {i!r})") for i, row in zip(ids, x)]
  elif path.is_dir():
    files = sorted(p for p in path.rglob("*.npy") if p.is_file())
    if not files:
      raise ValueError(f"--embeddings {path}: a folder without .npy files; expected {JOIN_LAYOUTS}")
    ids, rows = [], []
    for f in progress.bar(files, desc="read embeddings", unit="file", dynamic_ncols=True):
      try:
        x = np.load(f, allow_pickle=False)
      except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"cannot read {f}: {_first_line(e)}") from None
      ids.append(f.relative_to(path).with_suffix("").as_posix())
      rows.append(_checked_embedding(x, f))
  else:
    raise ValueError(f"--embeddings {path} is neither an .npz file nor a folder; expected {JOIN_LAYOUTS}")
  if not ids:
    raise ValueError(f"--embeddings {path} holds no embeddings")
  _duplicates(ids)
  ranks = collections.Counter(r.ndim for r in rows)
  if len(ranks) > 1:
    raise ValueError(f"--embeddings {path}: {ranks[1]} embeddings are vectors [D] and {ranks[2]} sequences [L, D]; "
                     "use one kind")
  dims = {}
  for i, r in zip(ids, rows):
    dims.setdefault(r.shape[-1], i)
  if len(dims) > 1:
    (d1, i1), (d2, i2) = list(dims.items())[:2]
    raise ValueError(f"--embeddings {path}: inconsistent size D: {d1} (id {i1!r}) and {d2} (id {i2!r}); every "
                     "embedding needs the same D")
  return ids, rows


def _check_new_name(name: str, existing) -> None:
  if isinstance(name, str) and name in RESERVED:
    raise ValueError(f"--name {name!r} is a reserved per-example field ({', '.join(RESERVED)}); choose another name")
  if not isinstance(name, str) or not _valid_name(name):
    raise ValueError(f"--name {name!r} is not a Python identifier; a modality name is a config key "
                     "(config.model.encoders.NAME), e.g. --name speaker_emb")
  if name in existing:
    raise ValueError(f"--name {name!r} is already a modality of the dataset (it has {list(existing)}); "
                     "choose another name")


def join_embeddings(data_dir, embeddings, name: str, out, drop_missing: bool = False) -> dict:
  """DATA_DIR's examples (every split, modality and field) plus modality NAME from EMBEDDINGS matched by example id.

  EMBEDDINGS: see JOIN_LAYOUTS. Vectors [D] -> kind `vector` [D]; sequences [L, D] -> kind `sequence`
  ([T, D + 1] with the mask column, T the longest L; `sequence.pack`). Stored as given (no standardisation).
  An example without an embedding is an error, or with drop_missing left out (counted in notes); embeddings
  of ids the dataset lacks are ignored (counted in notes). Writes OUT with storage.write_dataset (the
  fingerprint is recomputed) and returns its manifest.
  """
  from mmvae import data, modalities
  start = time.time()
  data_dir = pathlib.Path(data_dir)
  try:
    ds = data.Dataset(data_dir)
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise ValueError(f"--join {data_dir}: {_first_line(e)}") from None
  source = ds.manifest
  entries = [dict(d) for d in source.get("modalities") or
             ({"name": m.name, "kind": m.kind, "shape": list(m.shape), "dtype": m.dtype}
              for m in modalities.of_manifest(source))]  # older datasets: audio and face from `features`
  existing = [e["name"] for e in entries]
  _check_new_name(name, existing)
  inputs = {"--join": data_dir, "--embeddings": embeddings}
  out = storage.check_out(out, inputs)
  ids, rows = read_embeddings(embeddings)
  index = {i: r for r, i in enumerate(ids)}

  keep, missing, used = {}, [], set()
  for split in ds.splits:
    split_ids = ds.column(split, "id")
    has = np.array([i in index for i in split_ids], bool)
    missing += [str(i) for i in split_ids[~has]]
    keep[split] = np.flatnonzero(has)
    used.update(str(i) for i in split_ids[has])
  dropped = {s: ds.num_examples(s) - len(k) for s, k in keep.items()}
  if missing and not drop_missing:
    raise ValueError(f"{len(missing)} examples of {data_dir} have no embedding in {embeddings} (e.g. "
                     f"{', '.join(map(repr, missing[:5]))}); pass --drop-missing to leave them out")
  empty = [s for s, k in keep.items() if not len(k)]
  if empty:
    raise ValueError(f"no example of the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} of {data_dir} has "
                     f"an embedding in {embeddings}; a prepared split cannot be empty")
  ignored = len(ids) - len(used)

  dim = int(rows[0].shape[-1])
  if rows[0].ndim == 1:
    kind, entry = "vector", {"name": name, "kind": "vector", "shape": [dim], "dtype": "float32"}
    value = lambda r: rows[r]  # noqa: E731
  else:
    from mmvae.modalities import sequence
    steps = max(int(rows[index[i]].shape[0]) for i in used)
    kind = "sequence"
    entry = {"name": name, "kind": "sequence", "shape": [steps, dim + 1], "dtype": "float32", "step_shape": [dim]}
    value = lambda r: sequence.pack(rows[r], steps)  # noqa: E731
  names = [e["name"] for e in entries]
  text = [t for t in storage.TEXT_FEATURES if t not in names]  # a modality named like a text field replaced it

  def split_fn(split):
    def generate():
      positions = keep[split]
      bar = progress.bar(total=len(positions), desc=f"join {split}", unit="example", dynamic_ncols=True)
      with bar:
        for lo in range(0, len(positions), _CHUNK):
          chunk = ds.take(split, positions[lo:lo + _CHUNK])
          for j in range(len(chunk["id"])):
            record = {m: chunk[m][j] for m in names}
            record["label"] = int(chunk["label"][j])
            record.update({t: str(chunk[t][j]) for t in text})
            record[name] = value(index[str(chunk["id"][j])])
            yield record
          bar.update(len(chunk["id"]))
    return generate

  path = str(pathlib.Path(embeddings).resolve())
  shape = entry["shape"] if kind == "vector" else f"[L, {dim}] as [{entry['shape'][0]}, {dim + 1}]"
  notes = [f"joined {name} from {path} ({dim} dims) by example id"
           + ("" if kind == "vector" else
              f"; sequences of up to {entry['shape'][0]} steps (kind sequence, mask column)")
           + "; stored as given (no standardisation)"]
  if ignored:
    notes.append(f"join {name}: {ignored} of the {len(ids)} embeddings have ids that are not in the dataset; ignored")
  if sum(dropped.values()):
    per_split = ", ".join(f"{s} {n}" for s, n in dropped.items() if n)
    notes.append(f"join {name} (--drop-missing): {sum(dropped.values())} examples without an embedding left out "
                 f"({per_split}), e.g. {', '.join(missing[:5])}")
    if dropped.get("train") and (source.get("audio_normalisation") or source.get("feature_normalisation")):
      notes.append(f"join {name}: the stored normalisation statistics are those of the train split before the "
                   "drop")
  manifest = {k: v for k, v in source.items() if k not in _WRITER_KEYS}
  manifest["notes"] = list(source.get("notes") or []) + notes
  manifest["joins"] = list(source.get("joins") or []) + [{
      "name": name, "kind": kind, "dims": dim, "embeddings": path, "data_dir": str(data_dir.resolve()),
      "data_fingerprint": source.get("fingerprint"), "embeddings_total": len(ids), "ignored": ignored,
      "dropped": {s: int(n) for s, n in dropped.items()}}]
  corpus = source["corpus"]
  storage.register_corpus(corpus)
  with storage.Build(out, inputs=inputs) as build:
    manifest = storage.write_dataset(build.path, corpus, {s: split_fn(s) for s in ds.splits},
                                     entries + [entry], manifest)
    out = build.commit()
  rows_text = ", ".join(f"{s} {v['examples']}" for s, v in manifest["splits"].items())
  extra = "".join([f"; {sum(dropped.values())} examples without an embedding dropped" if sum(dropped.values()) else "",
                   f"; {ignored} embeddings of ids not in the dataset ignored" if ignored else ""])
  print(f"joined {name} ({kind} {shape}) into {data_dir}: {rows_text} examples{extra} -> {out} in "
        f"{time.time() - start:.1f} s")
  return manifest
