"""`mmvae prep features --join`: a prepared dataset plus one precomputed modality matched by example id.

join_embeddings (`--join DATA_DIR --embeddings PATH --name NAME`): every example of an
existing prepared dataset, with all its modalities and fields, plus one new modality NAME whose value is
looked up by the example's `id` in PATH (an .npz of `ids` and `embeddings`, e.g. written by `mmvae embed`,
or a folder of per-example ID.npy files). Vectors [D] become a `vector` modality, sequences [L, D] a
`sequence` one; values are stored as given (a pretrained space is kept as it is). The manifest keeps the
dataset's corpus metadata and adds the modality and a note; the fingerprint is recomputed.
"""

import collections
import pathlib
import time

import numpy as np

from data_prep import storage
from mmvae import progress


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
  if isinstance(name, str) and name in storage.RESERVED:
    raise ValueError(f"--name {name!r} is a reserved per-example field ({', '.join(storage.RESERVED)}); choose another name")
  if not isinstance(name, str) or not storage.valid_name(name):
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
