"""Time and peak memory of every stage at VoxCeleb1 sizes: prep, loading, pairing, training, analysis, embed.

  python benchmarks/scale.py [--sizes 10000,50000,150000] [--stages prep,train,...] [--stage-timeout 600]
                             [--json rows.json] [--work DIR] [--in-memory-bytes B]

Per size N (examples over all splits; 1,251 classes; splits train 80 %, validation 10 %, test 10 %) it fabricates
  vox       a prepared dataset in the `voxceleb1` config's stored shapes (audio [40] float32 MFCC statistics,
            face [8, 32, 32, 3] uint8), written by data_prep.storage as `mmvae prep` writes it
  features  `prep features` input files MOD_SPLIT_features.npy + MOD_SPLIT_labels.npy (visual [2048], audio [128]
            float32, class means plus noise)
and runs the stages (STAGES; `--stages` picks some, those they need run first):
  prep         data_prep.features.prepare_features: the feature files -> a prepared dataset
  load         Dataset.arrays('train') of vox (the whole split in memory)
  chunks       vox's train split read by Dataset.chunks (at most 4,096 examples or ~32 MiB at a time), nothing kept
  pairing      data.Pairing(vox, 'train', policy='identity') from the stored columns (written here when prep did not)
  pairing_records   the same from the records (a manifest without columns)
  train        entry.train(msvae_public:tiny) on the prepared features (`--train-steps`, a validation and a
               checkpoint every 2 steps)
  encode       posterior means of the analysed split as `mmvae analyze` computes them (whole, or by chunks)
  retrieval    report.retrieval_section on those latents
  latent       report.latent_section on them (t-SNE, DBSCAN, nearest identities, figures)
  coherence    cross generation, prior samples and coherence.coherence_scores on the data `analyze` passes
  embed        embed.export of the run's audio means for every split
  analyze      (only when named) report.analyze end to end
Each stage runs in a fresh spawned process. Peak = the process's peak RSS (VmHWM, ru_maxrss); base = its RSS
after the shared imports, before the stage, so peak - base is what the stage itself held. A stage over
`--stage-timeout` is stopped and shown as "> T s" with the peak it had reached.
"""

import argparse
import json
import multiprocessing
import os
import pathlib
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

CLASSES = 1251
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}
FEATURE_DIMS = {"visual": 2048, "audio": 128}
STAGES = ("prep", "load", "chunks", "pairing", "pairing_records", "train", "encode", "retrieval", "latent",
          "coherence", "embed", "analyze")
DEFAULT_STAGES = STAGES[:-1]
NEEDS = {"prep": ["make_features"], "load": ["make_vox"], "chunks": ["make_vox"], "pairing": ["make_vox"],
         "pairing_records": ["make_vox"], "train": ["prep"], "encode": ["train"], "retrieval": ["encode"],
         "latent": ["encode"], "coherence": ["encode"], "embed": ["train"], "analyze": ["train"]}


def split_sizes(n: int) -> dict:
  """Examples per split, summing to n."""
  sizes = {s: int(n * f) for s, f in SPLITS.items()}
  sizes["train"] += n - sum(sizes.values())
  return sizes


def _labels(n: int, seed: int) -> np.ndarray:
  """Sorted class labels of n examples, as even as n allows and at least 2 per class (VoxCeleb1: 123 on average).

  A split smaller than twice the classes holds the first n // 2 of them, so every query has a relevant item.
  """
  return np.sort(np.random.default_rng(seed).permutation(np.arange(n) % min(CLASSES, n // 2)))


# ---------------------------------------------------------------------------------------------------------------
# Fabricated inputs


def make_features(ctx) -> str:
  """Writes ROOT/MOD_SPLIT_features.npy and _labels.npy, chunk by chunk (the parent stays small)."""
  root = pathlib.Path(ctx["root"])
  root.mkdir(parents=True, exist_ok=True)
  means = {m: np.random.default_rng(i).normal(size=(CLASSES, d)).astype(np.float32) for i, (m, d) in
           enumerate(FEATURE_DIMS.items())}
  for s_i, (split, n) in enumerate(split_sizes(ctx["size"]).items()):
    labels = _labels(n, s_i)
    for m, d in FEATURE_DIMS.items():
      np.save(root / f"{m}_{split}_labels.npy", labels.astype(np.int64))
      out = np.lib.format.open_memmap(root / f"{m}_{split}_features.npy", "w+", np.float32, (n, d))
      rng = np.random.default_rng((s_i, d))
      for lo in range(0, n, 8192):
        y = labels[lo:lo + 8192]
        out[lo:lo + len(y)] = means[m][y] + 2.0 * rng.standard_normal((len(y), d), np.float32)
      out.flush()
      del out
  return f"{ctx['size']} rows, visual [2048] + audio [128] float32"


def vox_shapes():
  from data_prep import audio
  from mmvae import config as config_lib
  d = config_lib.load("voxceleb1").data
  face = (d.frames_per_utterance, d.face_size, d.face_size, 1 if d.grayscale else 3)
  return d, tuple(audio.feature_shape(d)), face


def make_vox(ctx) -> str:
  """A prepared dataset with the voxceleb1 config's stored shapes, written as `mmvae prep` writes one."""
  from data_prep import storage
  data_cfg, audio_shape, face_shape = vox_shapes()
  rng = np.random.default_rng(0)
  genders = rng.choice(["m", "f"], CLASSES)
  face_means = rng.integers(0, 200, (CLASSES,) + face_shape, dtype=np.uint8)

  def split_fn(split, n, s_i):
    def generate():
      labels = _labels(n, s_i)
      noise = np.random.default_rng(s_i)
      for i, c in enumerate(labels):
        ident = f"id{10001 + int(c)}"
        video = f"v{i // 6:07d}"  # ~6 utterances per video, as in VoxCeleb1; ids sort in stored order
        yield {"audio": (noise.standard_normal(audio_shape) + c % 7).astype(np.float32),
               "face": face_means[c] + np.uint8(i % 50), "label": int(c),
               "id": f"{ident}/{video}/{i:07d}.wav", "identity": ident, "video": f"{ident}/{video}",
               "gender": str(genders[c])}
    return generate

  manifest = {"config": "voxceleb1", "data_config": data_cfg.to_dict(), "audio_normalisation": None,
              "identities": [{"identity": f"id{10001 + c}", "name": f"id{10001 + c}", "gender": str(genders[c]),
                              "nationality": ""} for c in range(CLASSES)],
              "attributes": [], "skipped": [], "warnings": [], "relevance": "same identity"}
  splits = {s: split_fn(s, n, i) for i, (s, n) in enumerate(split_sizes(ctx["size"]).items())}
  with storage.Build(ctx["vox"]) as build:
    manifest = storage.write_dataset(build.path, "voxceleb1", splits, storage.audio_and_face(audio_shape, face_shape),
                                     manifest)
    build.commit()
  _ensure_columns(ctx["vox"])
  return f"audio {list(audio_shape)} float32, face {list(face_shape)} uint8; stored columns: " \
         f"{'yes' if manifest.get('columns') else 'no (written here to bench_columns/ for the pairing stage)'}"


# ---------------------------------------------------------------------------------------------------------------
# Stages: each gets ctx (paths, size, options) and returns a note.


def stage_prep(ctx) -> str:
  from data_prep import features
  shutil.rmtree(ctx["features"], ignore_errors=True)
  manifest = features.prepare_features(ctx["root"], ctx["features"])
  return f"{sum(s['examples'] for s in manifest['splits'].values())} rows"


def stage_load(ctx) -> str:
  from mmvae import data
  arrays = data.Dataset(ctx["vox"]).arrays("train")
  return f"{len(arrays['label'])} examples, {sum(v.nbytes for v in arrays.values()) / 2**20:.0f} MiB of arrays"


def stage_chunks(ctx) -> str:
  from mmvae import data
  ds = data.Dataset(ctx["vox"])
  n = sum(len(chunk["label"]) for _, chunk in ds.chunks("train"))
  return f"{n} examples in chunks of {ds.chunk_size()}"


def _ensure_columns(vox) -> None:
  """Stored columns as prep now writes them, written here from the records when this dataset's prep did not."""
  from mmvae import data
  ds = data.Dataset(vox)
  if ds.manifest.get("columns"):
    return
  folder = pathlib.Path(vox) / "bench_columns"
  folder.mkdir(exist_ok=True)
  for split in ds.splits:
    if not (folder / f"{split}.npz").is_file():
      cols = {k: [] for k in ("label", "id", "identity", "video", "gender")}
      for _, chunk in ds.chunks(split):
        for k in cols:
          cols[k].append(chunk[k])
      np.savez(folder / f"{split}.npz", **{k: np.concatenate(v).astype(np.int64 if k == "label" else str)
                                           for k, v in cols.items()})


def stage_pairing(ctx, columns: bool = True) -> str:
  from mmvae import data
  ds = data.Dataset(ctx["vox"])
  if not columns:
    ds.manifest.pop("columns", None)
  elif not ds.manifest.get("columns"):
    ds.manifest["columns"] = "bench_columns"  # in memory only: manifest.json stays as prep wrote it
  start = time.perf_counter()
  pairing = data.Pairing(ds, "train", policy="identity")
  return f"{len(pairing.members)} groups in {time.perf_counter() - start:.2f} s ({'columns' if columns else 'records'})"


def stage_train(ctx) -> str:
  from mmvae import config as config_lib
  from mmvae.train import entry
  shutil.rmtree(ctx["run"], ignore_errors=True)
  cfg = config_lib.load("msvae_public:tiny", [f"train.num_steps={ctx['train_steps']}"])
  final = entry.train(cfg, ctx["features"], ctx["run"])
  return f"{ctx['train_steps']} steps at batch {cfg.train.batch_size}; final keys {len(final)}"


def _run_data(ctx):
  from mmvae import data
  from mmvae.train import checkpoints
  model, config, _ = checkpoints.load_run(ctx["run"])
  ds = data.Dataset(ctx["features"])
  return model, config, ds, ds.modalities(config.data.get("modalities", ()))


def stage_encode(ctx) -> str:
  from mmvae import inference
  model, _, ds, specs = _run_data(ctx)
  split, encoder = ctx["split"], inference.model_encoder(model)
  keep = ("label", "gender", "id")
  if ds.in_memory(split):
    arrays = ds.arrays(split)
    latents, fields, how = inference.encode_split(encoder, arrays, specs), arrays, "whole"
  else:
    parts = inference.over_chunks(ds, split, {"lat": lambda c, lo: inference.encode_split(encoder, c, specs, pad=True),
                                              "fields": lambda c, lo: {k: c[k] for k in keep}})
    latents, fields, how = parts["lat"], parts["fields"], "by chunks"
  np.savez(ctx["latents"], **latents, **{k: np.asarray(fields[k]) for k in keep})
  return f"{split}: {len(fields['label'])} examples ({how})"


def _latents(ctx):
  model_free = dict(np.load(ctx["latents"]))
  names = [k[:-3] for k in model_free if k.endswith("_mu")]
  return model_free, names


def stage_retrieval(ctx) -> str:
  from mmvae.analysis import report
  latents, names = _latents(ctx)
  metrics = report.retrieval_section(latents, names, 0)
  return f"{len(latents['label'])} queries, {len(metrics)} metrics; audio->visual MRR " \
         f"{metrics.get('retrieval.audio_to_visual.mrr', float('nan')):.3f}"


def stage_latent(ctx) -> str:
  from mmvae.analysis import report
  latents, names = _latents(ctx)
  out = pathlib.Path(ctx["work"]) / "latent_figures"
  out.mkdir(exist_ok=True)
  metrics, _ = report.latent_section(latents, names, {}, report._analysis_cfg({}), out)
  return f"{len(latents['label'])} examples, {len(metrics)} metrics"


def stage_coherence(ctx) -> str:
  from mmvae import data
  from mmvae.analysis import coherence, generation, report
  model, _, ds, specs = _run_data(ctx)
  latents, _ = _latents(ctx)
  split, seed = ctx["split"], 0
  # The data analyze passes (report.analyze): whole splits that fit in memory, else stratified subsets.
  rows = None if ds.in_memory(split) else data.stratified_rows(latents["label"], report.GENERATED_EXAMPLES, seed)
  test = report._coherence_data(ds, split, rows)
  train = report._coherence_data(ds, "train", report._train_rows(ds, seed))
  chosen = latents if rows is None else {k: v[rows] for k, v in latents.items()}
  generated = generation.cross_generate(model, chosen, specs)
  generated.update(generation.sample_prior(model, specs, int(latents["audio_mu"].shape[1]), seed=seed))
  metrics, _ = coherence.coherence_scores(train, test, generated, specs, ds.manifest.get("identities", []),
                                          ["gender"], seed)
  return f"test {len(test['label'])}, train {len(train['label'])} examples; audio->visual " \
         f"{metrics.get('coherence.audio_to_visual.accuracy', float('nan')):.3f}"


def stage_embed(ctx) -> str:
  from mmvae import embed
  out = embed.export(ctx["run"], "audio", pathlib.Path(ctx["work"]) / "embed_audio.npz")
  return f"{out['embeddings'].shape[0]} x {out['embeddings'].shape[1]}"


def stage_analyze(ctx) -> str:
  from mmvae.analysis import report
  metrics = report.analyze(ctx["run"], ctx["features"], split=ctx["split"])
  return f"{metrics['examples']} examples, {len(metrics)} metrics"


RUNNERS = {"make_features": make_features, "make_vox": make_vox, "prep": stage_prep, "load": stage_load,
           "chunks": stage_chunks, "pairing": stage_pairing,
           "pairing_records": lambda ctx: stage_pairing(ctx, columns=False), "train": stage_train,
           "encode": stage_encode, "retrieval": stage_retrieval, "latent": stage_latent,
           "coherence": stage_coherence, "embed": stage_embed, "analyze": stage_analyze}


# ---------------------------------------------------------------------------------------------------------------
# Running a stage in a child process


def _rss_mb(field: str, pid="self") -> float:
  """VmRSS / VmHWM of a process in MiB (0 when it is gone)."""
  try:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0.0


def _child(name: str, ctx: dict, result_path: str) -> None:
  """Runs one stage after the shared imports; writes {seconds, peak_mb, base_mb, note | error} to result_path."""
  if ctx.get("in_memory_bytes") is not None:
    from mmvae import data
    data.IN_MEMORY_BYTES = int(ctx["in_memory_bytes"])
  import jax  # noqa: F401  the shared imports: counted in base, not in the stage
  import tensorflow_datasets  # noqa: F401

  from mmvae import data, inference  # noqa: F401,F811
  from mmvae.analysis import report  # noqa: F401
  from mmvae.train import entry  # noqa: F401
  base = _rss_mb("VmRSS")
  start = time.perf_counter()
  result = {"base_mb": base}
  try:
    result["note"] = RUNNERS[name](ctx)
    result["status"] = "ok"
  except Exception as e:  # noqa: BLE001  a failed stage is a row of the table, not the end of the run
    result.update(status="failed", note=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])
  result["seconds"] = time.perf_counter() - start
  result["peak_mb"] = max(_rss_mb("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  pathlib.Path(result_path).write_text(json.dumps(result))


def run_stage(name: str, ctx: dict, timeout: float) -> dict:
  """{stage, seconds, peak_mb, base_mb, status, note}: the stage in a spawned process, stopped after `timeout` s."""
  result_path = pathlib.Path(ctx["work"]) / f".{name}.result.json"
  result_path.unlink(missing_ok=True)
  proc = multiprocessing.get_context("spawn").Process(target=_child, args=(name, ctx, str(result_path)))
  start = time.perf_counter()
  proc.start()
  peak = 0.0
  while proc.is_alive() and time.perf_counter() - start < timeout:
    peak = max(peak, _rss_mb("VmHWM", proc.pid))
    proc.join(0.5)
  if proc.is_alive():
    peak = max(peak, _rss_mb("VmHWM", proc.pid))
    proc.kill()
    proc.join()
    return {"stage": name, "seconds": None, "timed_out": True, "peak_mb": peak, "base_mb": None,
            "status": "timeout", "note": f"stopped after {timeout:.0f} s"}
  if not result_path.is_file():
    return {"stage": name, "seconds": time.perf_counter() - start, "timed_out": False, "peak_mb": peak,
            "base_mb": None, "status": "failed", "note": f"the process exited with code {proc.exitcode}"}
  result = json.loads(result_path.read_text())
  result_path.unlink()
  return {"stage": name, "timed_out": False, **result}


def _plan(stages) -> list[str]:
  """The stages with what they need first, in STAGES order (fabrication first)."""
  wanted = set()

  def add(s):
    if s not in wanted:
      wanted.add(s)
      for dep in NEEDS.get(s, []):
        add(dep)

  for s in stages:
    add(s)
  return [s for s in ("make_features", "make_vox") + STAGES if s in wanted]


def bench_size(size: int, stages, args) -> list[dict]:
  """Every planned stage at one size; a stage whose input failed is skipped with the reason."""
  work = pathlib.Path(args.work) / f"n{size}"
  work.mkdir(parents=True, exist_ok=True)
  ctx = {"size": size, "work": str(work), "root": str(work / "features_raw"), "features": str(work / "features"),
         "vox": str(work / "vox"), "run": str(work / "run"), "latents": str(work / "latents.npz"),
         "split": args.split, "train_steps": args.train_steps, "in_memory_bytes": args.in_memory_bytes}
  rows, failed = [], set()
  for name in _plan(stages):
    missing = [d for d in NEEDS.get(name, []) if d in failed]
    reused = (name == "make_vox" and (work / "vox" / "manifest.json").is_file()) or (
        name == "make_features" and (work / "features_raw" / "audio_test_labels.npy").is_file())
    if missing:
      row = {"stage": name, "seconds": None, "timed_out": False, "peak_mb": None, "base_mb": None,
             "status": "skipped", "note": f"needs {', '.join(missing)}"}
    elif reused:
      row = {"stage": name, "seconds": None, "timed_out": False, "peak_mb": None, "base_mb": None,
             "status": "reused", "note": f"kept from an earlier run in {work}"}
    else:
      row = run_stage(name, ctx, args.stage_timeout)
    if row["status"] not in ("ok", "reused"):
      failed.add(name)
    row["size"] = size
    rows.append(row)
    print(format_row(row, args.stage_timeout), flush=True)
  return rows


def format_row(row: dict, timeout: float) -> str:
  seconds = (f"> {timeout:.0f} s" if row["timed_out"] else "-" if row["seconds"] is None
             else f"{row['seconds']:.1f} s")
  mb = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
  return (f"| {row['size']:>7,} | {row['stage']:<15} | {seconds:>10} | {mb(row['peak_mb']):>9} | "
          f"{mb(row['base_mb']):>8} | {row['status']:<7} | {row['note']} |")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default="10000", help="comma-separated total example counts, e.g. 10000,50000,150000")
  p.add_argument("--stages", default=",".join(DEFAULT_STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
  p.add_argument("--stage-timeout", type=float, default=600.0, help="seconds before a stage is stopped")
  p.add_argument("--split", default="test", help="the split the analysis stages analyse")
  p.add_argument("--train-steps", type=int, default=4)
  p.add_argument("--in-memory-bytes", type=int, default=None,
                 help="override data.IN_MEMORY_BYTES in every stage (0: every split streamed from disk)")
  p.add_argument("--work", default=None, help="where the fabricated data and runs live (default: a temporary "
                 "folder, removed at the end); an existing one's fabricated data is reused")
  p.add_argument("--json", default=None, help="write the rows to this file")
  args = p.parse_args(argv)
  try:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
  except ValueError:
    p.error(f"--sizes {args.sizes!r}: give comma-separated integers")
  stages = [s.strip() for s in args.stages.split(",") if s.strip()]
  unknown = [s for s in stages if s not in STAGES]
  if unknown or not stages:
    p.error(f"--stages: unknown {unknown}; choose from {', '.join(STAGES)}")
  if any(n < 200 for n in sizes):
    p.error("--sizes: at least 200 examples (every split then holds 2 or more of each of its classes)")
  if args.stage_timeout <= 0 or args.train_steps < 1:
    p.error("--stage-timeout must be > 0 and --train-steps >= 1")
  temporary = args.work is None
  args.work = args.work or tempfile.mkdtemp(prefix="mmvae-scale-")
  print(f"work folder {args.work}; stages run in spawned processes; peak/base in MiB\n")
  print("| size    | stage           |       time |   peak MB |  base MB | status  | note |")
  print("|---------|-----------------|------------|-----------|----------|---------|------|")
  rows = []
  try:
    for size in sizes:
      rows += bench_size(size, stages, args)
  finally:
    if args.json:
      pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if temporary:
      shutil.rmtree(args.work, ignore_errors=True)
  return 0 if all(r["status"] in ("ok", "reused") for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
