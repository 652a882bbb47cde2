"""`mmvae index` and `mmvae query`: store what a trained run embeds, and find the nearest entries to a new query.

An index folder (INDEX/) holds, for every modality of the run, the L2-normalised posterior means of every example
of the chosen splits in a FAISS index searched by inner product (= cosine similarity):

    index.json        format, kind per modality ('exact': IndexFlatIP; 'hnsw': IndexHNSWFlat, M=32, its efSearch
                      and measured recall@10; 'ivf': IndexIVFFlat, its nlist, nprobe and recall@10), dimension,
                      count, the run's workdir and checkpoint step, the dataset's path and fingerprint, the splits,
                      the mmvae version
    <modality>.faiss  the vectors of one modality (faiss.write_index)
    entries.npz       one row per entry, modality by modality in index.json's order: id, modality, label (int),
                      identity, split, text ('' when the dataset has no text); modality m's vector i is row
                      offset[m] + i
    manifest.json     the dataset's manifest: a query's WAV, image or text goes through its preprocessing

Up to EXACT_MAX entries a modality is searched exactly; up to HNSW_MAX by an HNSW graph whose efSearch is the
smallest of EF_CHOICES reaching RECALL_TARGET recall@10 against exact search on sample queries; above it by an
inverted file (IVF: k-means cells, built in about a minute at 1M where the graph takes most of an hour on two
cores) whose nprobe is tuned the same way (`--exact` / `--approximate` / `--ivf` force one). A build is written into a folder beside INDEX and swapped in when complete, so a
killed or failed build leaves the previous index as it was.

Shards: an index per id range, each queried on its own, results merged by score (`Index.merge_results`).
"""

import contextlib
import json
import os
import pathlib
import shutil
import time

import numpy as np

from mmvae import files

FORMAT = "mmvae-index/1"
EXACT_MAX = 100_000  # entries per modality searched exactly; above it an HNSW graph
HNSW_MAX = 300_000  # above it an IVF index: the graph's build time grows past 20 minutes toward 1M entries
IVF_TRAIN_PER_LIST = 64  # k-means training rows per inverted list (FAISS wants at least 39)
NPROBE_CHOICES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
EF_CHOICES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
RECALL_TARGET = 0.95
TUNE_QUERIES = 300
KINDS = ("exact", "hnsw", "ivf")
RESULT_KEYS = ("id", "modality", "score", "label")  # every result has these (and rank, identity, split, text, row)
_COLUMNS = ("id", "modality", "label", "identity", "split", "text")


def normalise(x_NxD) -> np.ndarray:
  """Rows scaled to unit L2 norm, float32 (an all-zero row stays zero)."""
  x_NxD = np.asarray(x_NxD, np.float32)
  norms_N1 = np.linalg.norm(x_NxD, axis=1, keepdims=True)
  return np.ascontiguousarray(x_NxD / np.where(norms_N1 > 0, norms_N1, 1.0), np.float32)


def choose_kind(count: int, force: str | None = None) -> str:
  """'exact' up to EXACT_MAX entries, 'hnsw' up to HNSW_MAX, else 'ivf'; `force` (one of KINDS) overrides."""
  if force is not None:
    if force not in KINDS:
      raise ValueError(f"index kind {force!r}: use one of {KINDS}")
    return force
  return "exact" if count <= EXACT_MAX else "hnsw" if count <= HNSW_MAX else "ivf"


def exact_top_k(x_NxD, q_QxD, k: int, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
  """(scores [Q, k], rows [Q, k]) of the largest inner products by brute force in NumPy, best first."""
  k = min(k, len(x_NxD))
  best_s = np.full((len(q_QxD), 0), -np.inf, np.float32)
  best_i = np.zeros((len(q_QxD), 0), np.int64)
  for lo in range(0, len(x_NxD), chunk):
    s_QxC = q_QxD @ x_NxD[lo:lo + chunk].T
    s = np.concatenate([best_s, s_QxC], 1)
    i = np.concatenate([best_i, np.broadcast_to(np.arange(lo, lo + s_QxC.shape[1]), s_QxC.shape)], 1)
    top = np.argpartition(-s, min(k, s.shape[1]) - 1, axis=1)[:, :k]
    best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
  order = np.argsort(-best_s, axis=1, kind="stable")
  return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def recall_at_k(found_QxK, truth_QxK) -> float:
  """Mean fraction of each query's true top k among those found."""
  return float(np.mean([len(set(f[f >= 0]) & set(t)) / max(1, len(t)) for f, t in zip(found_QxK, truth_QxK)]))


def build_faiss(x_NxD, kind: str, queries_QxD=None, k: int = 10, seed: int = 0):
  """(FAISS index of the unit rows x_NxD, info) for kind 'exact', 'hnsw' or 'ivf'.

  ivf: nlist = the power of two nearest 4 sqrt(N), k-means on a seeded sample of IVF_TRAIN_PER_LIST rows per list,
  nprobe tuned like hnsw's efSearch. hnsw: efSearch is tuned on `queries_QxD` against `exact_top_k`; info records it and the recall@k it reached.
  The default queries are the normalised sums of TUNE_QUERIES random pairs of rows: points the graph does not
  hold, harder to find than the rows themselves (a stored row finds itself and its graph neighbours at once, so
  tuning on rows chooses an efSearch too small for new queries).
  """
  import faiss
  x_NxD = np.ascontiguousarray(x_NxD, np.float32)
  n, d = x_NxD.shape
  info = {"kind": kind, "dimension": int(d), "count": int(n)}
  if kind == "exact":
    index = faiss.IndexFlatIP(d)
    index.add(x_NxD)
    return index, info
  if queries_QxD is None:
    pairs = np.random.default_rng(seed).integers(0, n, (min(n, TUNE_QUERIES), 2))
    queries_QxD = normalise(x_NxD[pairs[:, 0]] + x_NxD[pairs[:, 1]])
  queries_QxD = np.ascontiguousarray(queries_QxD, np.float32)
  if kind == "ivf":
    nlist = int(max(1, min(n // 39, 2 ** round(np.log2(4 * np.sqrt(n))))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)  # keeps its quantizer
    index.cp.seed = seed
    sample = np.random.default_rng(seed).choice(n, min(n, IVF_TRAIN_PER_LIST * nlist), replace=False)
    index.train(x_NxD[np.sort(sample)])
    index.add(x_NxD)
    nprobe, recall = tune_search(index, x_NxD, queries_QxD, k, "nprobe")
    info.update(nlist=nlist, nprobe=nprobe, **{f"recall_at_{k}": round(recall, 4)})
    return index, info
  index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
  index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
  index.add(x_NxD)
  ef, recall = tune_ef(index, x_NxD, queries_QxD, k)
  info.update(M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, ef_search=ef, **{f"recall_at_{k}": round(recall, 4)})
  return index, info


def tune_ef(index, x_NxD, q_QxD, k: int = 10, target: float = RECALL_TARGET) -> tuple[int, float]:
  """(efSearch, its recall@k on q) of an HNSW index: see tune_search."""
  return tune_search(index, x_NxD, q_QxD, k, "efSearch", target)


def set_search(index, knob: str, value: int) -> None:
  """Sets an approximate index's search breadth: 'efSearch' (HNSW) or 'nprobe' (IVF)."""
  if knob == "efSearch":
    index.hnsw.efSearch = int(value)
  else:
    index.nprobe = int(value)


def tune_search(index, x_NxD, q_QxD, k: int = 10, knob: str = "efSearch", target: float = RECALL_TARGET):
  """(value, its recall@k on q): one step of the knob's choices (EF_CHOICES or NPROBE_CHOICES) above the smallest
  value reaching `target` (a margin for queries unlike the tuning ones), the largest when none does."""
  _, truth = exact_top_k(x_NxD, q_QxD, k)
  choices = EF_CHOICES if knob == "efSearch" else [c for c in NPROBE_CHOICES if c <= index.nlist] or [index.nlist]
  recall, reached, value = 0.0, None, choices[0]
  for i, c in enumerate(choices):
    value = max(c, k) if knob == "efSearch" else c
    set_search(index, knob, value)
    _, found = index.search(q_QxD, k)
    recall = recall_at_k(found, truth)
    if reached is None and recall >= target:
      reached = i
    if reached is not None and (i > reached or i == len(choices) - 1):
      break
  return value, recall


# --- writing ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _building(final: pathlib.Path):
  """A fresh folder beside FINAL to fill, swapped in for FINAL when the block ends; on any error removed."""
  final = final.absolute()
  if final.exists() and not final.is_dir():
    raise ValueError(f"--out {final} is a file; give a folder for the index")
  if final.is_dir() and any(final.iterdir()) and not (final / "index.json").is_file():
    raise ValueError(f"--out {final} holds files that are not an mmvae index; give a new or empty folder")
  final.parent.mkdir(parents=True, exist_ok=True)
  build = files.building_folder(final)
  try:
    yield build
  except BaseException:
    shutil.rmtree(build, ignore_errors=True)
    raise
  files.swap_in(build, final)


def write(out, vectors: dict, entries: dict, info: dict | None = None, force: str | None = None,
          manifest: dict | None = None, queries: dict | None = None) -> dict:
  """Writes the index folder OUT from {modality: [N, D] vectors} and {modality: {column: [N] values}}.

  entries columns: id (required), label, identity, split, text (defaults: -1 / ''). info: more index.json fields
  (run, checkpoint, dataset). force: 'exact', 'hnsw' or 'ivf' for every modality (default: by count, `choose_kind`).
  queries: {modality: sample query vectors} for tuning HNSW (default: the other modalities' vectors).
  Returns index.json's contents.
  """
  import faiss
  from mmvae.version import __version__
  names = list(vectors)
  if not names:
    raise ValueError("nothing to index: no modality has vectors")
  unit = {m: normalise(vectors[m]) for m in names}
  columns = {c: [] for c in _COLUMNS}
  record = {"format": FORMAT, "mmvae_version": __version__, **(info or {}), "modalities": {}}
  offset = 0
  with _building(pathlib.Path(out)) as build:
    for m in names:
      x = unit[m]
      n = len(x)
      got = entries[m]
      if len(got["id"]) != n:
        raise ValueError(f"modality {m!r}: {n} vectors but {len(got['id'])} entry ids")
      others = [unit[o] for o in names if o != m and unit[o].shape[1] == x.shape[1]]
      sample = (queries or {}).get(m)
      if sample is None and others:
        pool = np.concatenate(others)
        sample = pool[np.random.default_rng(0).choice(len(pool), min(len(pool), TUNE_QUERIES), replace=False)]
      index, meta = build_faiss(x, choose_kind(n, force), sample)
      faiss.write_index(index, str(build / f"{m}.faiss"))
      record["modalities"][m] = dict(meta, file=f"{m}.faiss", offset=offset)
      offset += n
      columns["id"].append(np.asarray(got["id"]).astype(str))
      columns["modality"].append(np.full(n, m))
      columns["label"].append(np.asarray(got.get("label", np.full(n, -1)), np.int64))
      for c in ("identity", "split", "text"):
        columns[c].append(np.asarray(got.get(c, np.full(n, "")), str))
    table = {c: np.concatenate(v) for c, v in columns.items()}
    with files.atomic(build / "entries.npz") as f:
      np.savez(f, **table)
    if manifest is not None:
      files.write_json_atomic(build / "manifest.json", manifest, indent=1)
    record["entries"] = offset
    files.write_json_atomic(build / "index.json", record, indent=1)
  return record


# --- building from a run -------------------------------------------------------------------------------------

def _texts(specs: dict, arrays: dict) -> np.ndarray | None:
  """Each example's text (its first tokens modality as words), or None when the dataset has none."""
  from mmvae.modalities import tokens
  name = next((n for n, m in specs.items() if m.kind == "tokens"), None)
  if name is None or name not in arrays:
    return None
  return np.array([tokens.to_text(specs[name], row) for row in np.asarray(arrays[name])], dtype=str)


def _fields(arrays: dict, specs_all: dict, id_names: dict) -> dict:
  """{id, label, identity, text} of a chunk or split of examples."""
  n = len(arrays["id"])
  labels = np.asarray(arrays.get("label", np.full(n, -1)), np.int64)
  identity = arrays.get("identity") if "identity" in arrays and "identity" not in specs_all else None
  if identity is None:
    identity = np.array([id_names.get(int(i), "") for i in labels], dtype=str)
  text = _texts(specs_all, arrays)
  return {"id": np.asarray(arrays["id"]).astype(str), "label": labels, "identity": np.asarray(identity).astype(str),
          "text": text if text is not None else np.full(n, "")}


def _encode_split(encoder, dataset, split: str, specs: dict, specs_all: dict, id_names: dict):
  """(fields, {modality: posterior means}) of one split: whole when it fits in memory, else chunk by chunk."""
  from mmvae import inference
  if dataset.in_memory(split):
    arrays = dataset.arrays(split)
    latents = inference.encode_split(encoder, arrays, specs)
    return _fields(arrays, specs_all, id_names), {m: np.asarray(latents[f"{m}_mu"], np.float32) for m in specs}
  parts = inference.over_chunks(dataset, split, {
      "fields": lambda c, lo: _fields(c, specs_all, id_names),
      "mu": lambda c, lo: {m: np.asarray(v, np.float32) for m, v in
                           ((m, inference.encode_split(encoder, c, {m: specs[m]}, pad=True)[f"{m}_mu"])
                            for m in specs)}})
  return parts["fields"], parts["mu"]


def build(workdir, out, data_dir=None, splits=None, force: str | None = None, which: str = "best") -> dict:
  """Writes the index folder OUT of every example of `splits` (default all) of the run in WORKDIR; returns index.json.

  data_dir: the dataset to encode (default: the one the run trained on). force: 'exact', 'hnsw' or 'ivf' (default: by
  size). which: 'best' or 'last' checkpoint.
  """
  from mmvae import embed, inference
  from mmvae.train import checkpoints
  start = time.time()
  if pathlib.Path(out).is_file():
    raise ValueError(f"--out {out} is a file; give a folder for the index")
  model, config, _, step = checkpoints.load_run(workdir, which=which, return_step=True)
  dataset = checkpoints.dataset_of_run(workdir, data_dir)
  dataset.check_config(config)
  specs_all = dataset.modalities()
  specs_run = dataset.modalities(config.data.get("modalities", ()))
  known = getattr(model, "specs", None)
  specs = {n: m for n, m in specs_run.items() if known is None or n in known}
  chosen = embed._splits(splits, dataset.splits)  # pylint: disable=protected-access
  id_names = {i: str(r.get("name") or r.get("identity") or i)
              for i, r in enumerate(dataset.manifest.get("identities", []))}
  encoder = inference.model_encoder(model)
  fields, mus = [], {m: [] for m in specs}
  for split in chosen:
    got, mu = _encode_split(encoder, dataset, split, specs, specs_all, id_names)
    got["split"] = np.full(len(got["id"]), split)
    fields.append(got)
    for m in specs:
      mus[m].append(mu[m])
  table = {k: np.concatenate([f[k] for f in fields]) for k in fields[0]}
  vectors = {m: np.concatenate(v) for m, v in mus.items()}
  info = {"run": {"workdir": str(pathlib.Path(workdir).absolute()), "checkpoint": step.which, "step": int(step),
                  "kind": config.model.get("kind")},
          "dataset": {"path": str(dataset.data_dir.absolute()), "fingerprint": dataset.manifest.get("fingerprint")},
          "splits": chosen}
  record = write(out, vectors, {m: table for m in specs}, info, force, manifest=dataset.manifest)
  kinds = ", ".join(f"{m} {r['count']} ({r['kind']}" + (f", efSearch {r['ef_search']}" if r["kind"] == "hnsw" else
                                                        f", nprobe {r['nprobe']}" if r["kind"] == "ivf" else "")
                    + ")" for m, r in record["modalities"].items())
  print(f"mmvae index: {kinds} entries of {', '.join(chosen)}, {step.which} checkpoint (step {int(step)}) of "
        f"{workdir} -> {out} in {time.time() - start:.1f} s", flush=True)
  return record


# --- querying --------------------------------------------------------------------------------------------------

class Index:
  """A built index folder: `Index.open(path).query(text='...', k=10)` -> [{id, modality, score, label, ...}]."""

  def __init__(self, path, record: dict, table: dict, indexes: dict, manifest: dict | None):
    self.path, self.record, self.table, self.indexes, self.manifest = path, record, table, indexes, manifest
    self.modalities = list(record["modalities"])
    self._model = self._encoder = None

  @classmethod
  def open(cls, path) -> "Index":
    """Reads INDEX/ (index.json, entries.npz, one .faiss per modality); FileNotFoundError/ValueError if not one."""
    import faiss
    path = pathlib.Path(path)
    if path.parent.is_dir():
      files.clear_leftovers(path.absolute())  # an index a killed swap left renamed away is put back
    meta = path / "index.json"
    if not meta.is_file():
      raise FileNotFoundError(f"{meta} not found: {path} is not an mmvae index; build one with "
                              "`mmvae index --workdir RUN --out INDEX`")
    try:
      record = json.loads(meta.read_text())
    except ValueError as e:
      raise ValueError(f"{meta} is not readable JSON ({e}); rebuild the index with `mmvae index`") from None
    if record.get("format") != FORMAT:
      raise ValueError(f"{meta}: format {record.get('format')!r}, expected {FORMAT}; rebuild it with `mmvae index`")
    with np.load(path / "entries.npz", allow_pickle=False) as f:
      table = {k: f[k] for k in f.files}
    indexes = {}
    for m, r in record["modalities"].items():
      index = faiss.read_index(str(path / r["file"]))
      if r["kind"] == "hnsw":
        index.hnsw.efSearch = int(r["ef_search"])
      elif r["kind"] == "ivf":
        index.nprobe = int(r["nprobe"])
      indexes[m] = index
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    return cls(path, record, table, indexes, manifest)

  def __len__(self) -> int:
    return int(self.record["entries"])

  def modality_named(self, name: str, flag: str = "--modality") -> str:
    from mmvae import display
    return display.modality_named(name, self.modalities, flag=flag, where=f"the index {self.path}")

  def vector(self, entry_id: str, modality: str | None = None) -> tuple[np.ndarray, str]:
    """(the stored unit vector, its modality) of entry `entry_id` (of `modality`, default the first holding it)."""
    rows = np.flatnonzero(self.table["id"] == str(entry_id))
    if modality is not None:
      modality = self.modality_named(modality, "--of")
      rows = rows[self.table["modality"][rows] == modality]
    if not len(rows):
      raise ValueError(f"--id {entry_id!r} is not an entry of the index {self.path}"
                       + (f" in modality {modality}" if modality else ""))
    row = int(rows[0])
    m = str(self.table["modality"][row])
    return np.asarray(self.indexes[m].reconstruct(row - self.record["modalities"][m]["offset"]), np.float32), m

  def search(self, vector, modality: str, k: int = 10) -> list[dict]:
    """The k entries of `modality` nearest (cosine) to one vector, best first."""
    q = normalise(np.asarray(vector, np.float32).reshape(1, -1))
    index, info = self.indexes[modality], self.record["modalities"][modality]
    if q.shape[1] != info["dimension"]:
      raise ValueError(f"a query vector of dimension {q.shape[1]}; modality {modality} of {self.path} has "
                       f"{info['dimension']}")
    import faiss
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one query: OpenMP's start and barriers cost more than the scan (10x on 2 cores)
    try:
      scores, rows = index.search(q, min(k, info["count"]))
    finally:
      faiss.omp_set_num_threads(threads)
    return [self._result(float(s), int(i) + info["offset"]) for s, i in zip(scores[0], rows[0]) if i >= 0]

  def _result(self, score: float, row: int) -> dict:
    t = self.table
    return {"id": str(t["id"][row]), "modality": str(t["modality"][row]), "score": score,
            "label": int(t["label"][row]), "identity": str(t["identity"][row]), "split": str(t["split"][row]),
            "text": str(t["text"][row]), "row": row}

  @staticmethod
  def merge_results(lists, k: int = 10) -> list[dict]:
    """The k best results of several result lists (per shard or per modality) by score, ranks renumbered."""
    merged = sorted((r for results in lists for r in results), key=lambda r: -r["score"])[:k]
    return [dict(r, rank=i + 1) for i, r in enumerate(merged)]

  def query(self, *, text: str | None = None, wav=None, image=None, id: str | None = None,  # noqa: A002
            vector=None, video=None, modality=None, of: str | None = None, k: int = 10) -> list[dict]:
    """The k entries nearest to one query (exactly one of text, wav, image, id or vector), best first.

    modality: the modality (or list of them) searched; default every one other than the query's (every one for a
    vector). of: with id, which modality's entry of that id is the query (default the first holding it).
    Each result: id, modality, score (cosine), label (int), rank, identity, split, text, row.
    """
    given = [n for n, v in (("text", text), ("wav", wav), ("image", image), ("video", video), ("id", id),
                            ("vector", vector)) if v is not None]
    if len(given) != 1:
      raise ValueError(f"give exactly one query (--text, --wav, --image, --video or --id), got {len(given) or 'none'}")
    if k < 1:
      raise ValueError(f"--k {k}: give a positive number of results")
    source = None
    if id is not None:
      vector, source = self.vector(id, of)
    elif vector is None:
      source, vector = self._encode(text=text, wav=wav, image=image, video=video)
    if modality is None:
      targets = [m for m in self.modalities if m != source] or [source]
    else:
      targets = [self.modality_named(m) for m in ([modality] if isinstance(modality, str) else modality)]
    return self.merge_results([self.search(vector, m, k) for m in targets], k)

  # encoding a raw query with the run's own preprocessing and model

  def _specs(self) -> dict:
    from mmvae import modalities
    if self.manifest is None:
      raise ValueError(f"{self.path} holds no manifest.json: it can answer --id and vectors only")
    return {m.name: m for m in modalities.of_manifest(self.manifest)}

  def _load(self):
    """(model, config) of the run the index was built from, refused when its checkpoint is no longer that one."""
    if self._model is None:
      from mmvae.train import checkpoints
      run = self.record.get("run") or {}
      if not run.get("workdir"):
        raise ValueError(f"{self.path}/index.json names no run: it can answer --id and vectors only")
      model, config, _, step = checkpoints.load_run(run["workdir"], which=run.get("checkpoint", "best"),
                                                    return_step=True)
      if int(step) != int(run.get("step", step)):
        raise ValueError(f"{self.path} was built from step {run['step']} of {run['workdir']}, whose "
                         f"{run.get('checkpoint', 'best')} checkpoint is now step {int(step)}; rebuild the index "
                         "with `mmvae index`")
      self._model = (model, config)
    return self._model

  def _encode(self, text=None, wav=None, image=None, video=None) -> tuple[str, np.ndarray]:
    """(the query's modality, its posterior mean) for a text, a WAV file, an image file or a video file."""
    from mmvae import inference
    from mmvae.analysis import from_wav
    specs = {n: m for n, m in self._specs().items() if n in self.modalities}
    if text is not None:
      name = next((n for n, m in specs.items() if m.kind == "tokens"), None)
      if name is None:
        raise ValueError(f"--text: the index {self.path} has no text (tokens) modality (it has "
                         f"{', '.join(self.modalities)})")
      stored = text_tokens(text, specs[name])[None]
    elif wav is not None:
      name = next((n for n, m in specs.items() if from_wav._from_wav(m)), None)  # pylint: disable=protected-access
      if name is None:
        raise ValueError(f"--wav: the index {self.path} has no modality computed from audio (it has "
                         f"{', '.join(self.modalities)})")
      wav = pathlib.Path(wav)
      if not wav.is_file():
        raise FileNotFoundError(f"--wav {wav}: file not found")
      _, config = self._load()
      try:
        stored = from_wav.voice_features(wav, config.data, self.manifest)[None]
      except Exception as e:  # soundfile, SciPy and data_prep each raise their own kinds for a bad file
        raise ValueError(f"--wav {wav}: not a readable WAV file ({type(e).__name__}: {e})") from None
    elif video is not None:
      from data_prep import faces
      name = next((n for n, m in specs.items() if m.kind == "video"), None)
      if name is None:
        raise ValueError(f"--video: the index {self.path} has no video modality (it has "
                         f"{', '.join(self.modalities)})")
      frames, size, _, channels = (int(v) for v in specs[name].shape)  # [T, S, S, C]
      try:
        stored = faces.video_clip(video, frames, size, channels == 1)[None]
      except faces.FaceError as e:
        raise ValueError(f"--video {video}: {e}") from None
    else:
      from data_prep import faces
      name = next((n for n, m in specs.items() if m.kind == "image"), None)
      if name is None:
        raise ValueError(f"--image: the index {self.path} has no image modality (it has "
                         f"{', '.join(self.modalities)})")
      shape = specs[name].shape  # [K, S, S, C]
      stored = faces.load_face(image, int(shape[-2]), int(shape[-1]) == 1)[None]
    if self._encoder is None:  # one jitted encoder for every query: a new one would compile again each time
      self._encoder = inference.model_encoder(self._load()[0])
    mu = inference.encode_split(self._encoder, {name: stored}, {name: specs[name]})[f"{name}_mu"]
    return name, np.asarray(mu[0], np.float32)


def _link_or_copy(src, dst) -> None:
  try:
    os.link(src, dst)
  except OSError:
    shutil.copy2(src, dst)


def add(path, *, text: str | None = None, wav=None, image=None, video=None, entry_id: str | None = None, label: int = -1,
        identity: str = "") -> dict:
  """Adds one entry from a raw input (exactly one of text, wav, image) to the index at PATH; returns its result row.

  The input goes through the run's own preprocessing and encoder, as a query does; only it is embedded. The entry
  id defaults to the file's name (or the text itself); an id already held by that modality is refused. The new
  index is written beside PATH and swapped in when complete (a killed add leaves PATH as it was); the other
  modalities' .faiss files are hard-linked, not copied. An exact modality stays exact past EXACT_MAX (rebuild
  with `mmvae index` to change its kind).
  """
  import faiss
  path = pathlib.Path(path)
  idx = Index.open(path)
  given = [n for n, v in (("--text", text), ("--wav", wav), ("--image", image), ("--video", video)) if v is not None]
  if len(given) != 1:
    raise ValueError(f"--add: give exactly one of --text, --wav, --image or --video, got "
                     f"{' and '.join(given) or 'none'}")
  if text is not None and not text.strip():
    raise ValueError("--text is empty; nothing to add")
  for flag, f in (("--wav", wav), ("--image", image), ("--video", video)):
    if f is not None and not pathlib.Path(f).is_file():
      raise FileNotFoundError(f"{flag} {f}: file not found")
  name, mu = idx._encode(text=text, wav=wav, image=image, video=video)  # pylint: disable=protected-access
  entry_id = str(entry_id if entry_id is not None else
                 (text if text is not None else pathlib.Path(wav or image or video).name))
  rows = np.flatnonzero((idx.table["id"] == entry_id) & (idx.table["modality"] == name))
  if len(rows):
    raise ValueError(f"--id {entry_id!r} is already an entry of modality {name} in {path}; give another --id")
  info = idx.record["modalities"][name]
  at = info["offset"] + info["count"]  # the new row: last of its modality
  index = idx.indexes[name]
  index.add(normalise(mu[None]))
  new_row = {"id": entry_id, "modality": name, "label": int(label), "identity": str(identity), "split": "added",
             "text": text if text is not None else ""}
  table = {c: np.concatenate([v[:at], np.asarray([new_row[c]], v.dtype if v.dtype.kind != "U" else str), v[at:]])
           for c, v in idx.table.items()}
  record = json.loads(json.dumps(idx.record))
  for m, r in record["modalities"].items():
    if r["offset"] > info["offset"]:
      r["offset"] += 1
  record["modalities"][name]["count"] += 1
  record["entries"] = int(record["entries"]) + 1
  record["added"] = int(record.get("added", 0)) + 1
  with _building(path) as build:
    for f in path.iterdir():  # everything else carried over unchanged, as hard links where the disk allows
      if f.name in (info["file"], "entries.npz", "index.json"):
        continue
      if f.is_dir():
        shutil.copytree(f, build / f.name, copy_function=_link_or_copy)
      else:
        _link_or_copy(f, build / f.name)
    faiss.write_index(index, str(build / info["file"]))
    with files.atomic(build / "entries.npz") as f:
      np.savez(f, **table)
    files.write_json_atomic(build / "index.json", record, indent=1)
  return {"id": entry_id, "modality": name, "row": at, "label": int(label), "identity": str(identity)}


def text_tokens(text: str, m) -> np.ndarray:
  """A sentence -> int32 ids [L] of the tokens modality m; ValueError (one line) for a text without words.

  A modality prepared with a subword tokenizer (manifest `tokenizer`; data_prep/subword.py) encodes any sentence
  with it: a word the corpus never used is cut into known pieces, a character outside its alphabet is [UNK], the
  ids are cut to L. A word-vocabulary modality maps each word to its id, words it lacks dropped (its <unk> was
  never trained), and refuses a text with none of its words.
  """
  from data_prep import digit_text, subword
  tokenizer = subword.of_modality(m)
  if tokenizer is not None:
    if not subword.ids(tokenizer, text):
      raise ValueError(f"--text {text!r} {'is empty' if not text.strip() else 'has no words'}; nothing to search with")
    return subword.encode(tokenizer, text, int(m.shape[0]))
  vocab = list(m.get("vocab") or ())
  ids = {w: i for i, w in enumerate(vocab)}
  words = digit_text.tokenize(text)
  known = [ids[w] for w in words if w in ids and ids[w] > 1]  # 0 = padding, 1 = <unk>
  if not known:
    what = "is empty" if not words else f"has no word of the {max(0, len(vocab) - 2)}-word vocabulary of {m.name!r}"
    raise ValueError(f"--text {text!r} {what}; nothing to search with")
  length = int(m.shape[0])
  row = np.zeros(length, np.int32)
  row[:min(length, len(known))] = known[:length]
  return row


def format_table(results: list[dict]) -> str:
  """Rank, score, modality, id, label and identity, one result a line."""
  head = f"{'rank':>4}  {'score':>7}  {'modality':<10} {'label':>5}  {'identity':<16} id"
  lines = [head] + [f"{r['rank']:>4}  {r['score']:>7.4f}  {r['modality']:<10} {r['label']:>5}  "
                    f"{r.get('identity', ''):<16} {r['id']}" for r in results]
  return "\n".join(lines)


def run_query(path, text=None, wav=None, image=None, id=None, of=None, modality=None, k: int = 10,  # noqa: A002
              as_json: bool = False, video=None) -> list[dict]:
  """`mmvae query`: prints the results as a table or a JSON list; returns them."""
  index = Index.open(path)
  results = index.query(text=text, wav=wav, image=image, video=video, id=id, of=of, modality=modality, k=k)
  if as_json:
    print(json.dumps(results, indent=1), flush=True)
  else:
    searched = sorted({r["modality"] for r in results})
    print(f"mmvae query: {len(results)} nearest of {', '.join(searched) or 'nothing'} in {path}", flush=True)
    print(format_table(results), flush=True)
  return results
