"""`mmvae prep features --root`: precomputed per-modality features (XMedia / XMediaNet style) -> `vector` modalities.

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

`--join` (data_prep.join) adds a precomputed modality to a prepared dataset instead.
"""

import collections
import pathlib
import re
import time

import numpy as np

from data_prep import corpora, storage
from mmvae import progress

CORPUS = "features"
SPLITS = ("train", "validation", "test")
REQUIRED_SPLITS = ("train", "test")
STD_FLOOR = 1e-8  # a constant feature would otherwise divide by zero
CHUNK_ROWS = 4096  # feature rows read from ROOT's files at a time
RESERVED = storage.RESERVED  # per-example fields beside the modalities
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


_valid_name = storage.valid_name


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


def _add_arguments(parser, add_config) -> None:  # pylint: disable=unused-argument  (reads no config)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--root",
                      help="folder of feature files, per modality and split (train, test; validation optional): "
                           "MOD_SPLIT.npz holding arrays features [N, D] and labels [N], or MOD_SPLIT_features.npy "
                           "and MOD_SPLIT_labels.npy")
  source.add_argument("--join", metavar="DATA_DIR",
                      help="a prepared dataset to copy whole (every split, modality and per-example field) with one "
                           "more modality, --name, looked up by example id in --embeddings")
  parser.add_argument("--out", required=True, help=corpora.OUT_HELP)
  parser.add_argument("--anchor", default=None,
                      help="modality whose items are the rows of every split (default: per split, the one with the "
                           "most items; ties: the first name in sorted order)")
  parser.add_argument("--rename", action="append", default=None, metavar="OLD=NEW",
                      help="rename a modality, e.g. 3d=pointcloud (names must be Python identifiers: they are config "
                           "keys); repeatable (default: none)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the other modalities' cyclic orders")
  parser.add_argument("--no-standardize", dest="standardize", action="store_false",
                      help="store the features as given (default: z-score each modality with its train split's "
                           "mean and std)")
  parser.add_argument("--embeddings", default=None, metavar="PATH",
                      help="with --join: an .npz holding ids [N] (str) and embeddings [N, D] float (as `mmvae embed` "
                           "writes), or a folder of per-example .npy files named by example id (ID.npy, e.g. "
                           "id10001/1zcIwhmdeo4/00001.wav.npy); [D] arrays -> a vector modality, [L, D] -> a sequence "
                           "modality; stored as given (default: none; required with --join)")
  parser.add_argument("--name", default=None,
                      help="with --join: name of the new modality, a Python identifier that is not already a "
                           "modality or a per-example field (default: none; required with --join)")
  parser.add_argument("--drop-missing", action="store_true",
                      help="with --join: leave out the examples that have no embedding (counted in the manifest's "
                           "notes) instead of failing")


def _given(pairs) -> list[str]:
  return [flag for flag, value in pairs if value is not None]


def _applies(given: list[str], to: str) -> str:
  return f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to {to}"


def _run(args, config) -> None:  # pylint: disable=unused-argument  (reads no config)
  if args.join is not None:
    given = _given((("--anchor", args.anchor), ("--rename", args.rename), ("--seed", args.seed != 0 or None),
                    ("--no-standardize", not args.standardize or None)))
    if given:
      raise ValueError(_applies(given, "--root, not to --join"))
    absent = [flag for flag, value in (("--embeddings", args.embeddings), ("--name", args.name)) if value is None]
    if absent:
      raise ValueError(f"--join needs {' and '.join(absent)}")
    from data_prep import join  # pylint: disable=g-import-not-at-top  (only for --join)
    join.join_embeddings(args.join, args.embeddings, args.name, args.out, drop_missing=args.drop_missing)
    return
  given = _given((("--embeddings", args.embeddings), ("--name", args.name),
                  ("--drop-missing", args.drop_missing or None)))
  if given:
    raise ValueError(_applies(given, "--join, not to --root"))
  prepare_features(args.root, args.out, seed=args.seed, anchor=args.anchor, rename=args.rename,
                   standardize=args.standardize)


corpora.register(corpora.Kind(
    CORPUS, help="precomputed per-modality features (XMedia style) -> vector modalities; or, with --join, a "
                 "prepared dataset plus one precomputed modality matched by example id",
    description="With --root: rows per split are the anchor's items; every other modality gives each row an item of "
                "the row's class (a seeded cyclic order: each item used once before any is reused). Labels: the "
                "sorted original labels -> 0..C-1. With --join DATA_DIR: every example of DATA_DIR as it is, plus "
                "modality --name from --embeddings (matched by the example's id, stored as given); --anchor, "
                "--rename, --seed and --no-standardize apply to --root only.",
    add_arguments=_add_arguments, run=_run, prepare=prepare_features))
