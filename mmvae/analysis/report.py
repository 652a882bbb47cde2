"""`mmvae analyze`: encode a split, compute every metric with its chance level, write WORKDIR/report/.

The modalities are the dataset's (config.data.modalities picks some, in the dataset's order); every
section runs over all of them, never naming one:
  retrieval.<q>_to_<g>.<metric>      every ordered pair, q == g included (within one modality), three scores;
                                     the cosine mrr, recall@1 and matching_1v2 with `_ci_low` / `_ci_high`: a 95%
                                     bootstrap over videos (closed-set) or identities (open-set), retrieval.ci_*
  clusters.<m> / clusters.joint      t-SNE + DBSCAN of each modality's latents and of all of them stacked
  nearest.<q>_to_<g>                 identity centroids, every ordered pair of distinct modalities
  coherence.<q>_to_<g>, .joint       models that generate: cross and joint coherence (analysis/coherence.py)
  likelihood.iwae_k<K>               models with a joint posterior: the importance-weighted log p(x)
  sync.*, frame_retrieval.*          two or more sequence modalities with temporal encoders (analysis/sync.py)
Each is a section of mmvae/analysis/sections.py (its metrics and its part of report.md), registered below in
report order; a registered section of one's own follows them.
Files: latents.npz, generated.npz, likelihood.npz and frames.npz (what the model computed), metrics.json,
embeddings.npz, queries.npz, figures, report.md; `rebuild` recomputes everything but the first three without the model.
queries.npz (per query, in latents.npz's order, for pooling across folds): `label` (int), `cluster` (str, the
bootstrap's cluster of each example), `cluster_kind` (0-d str: video, identity or example) and, for every ordered
pair of distinct modalities, `<q>_to_<g>.mrr`, `<q>_to_<g>.recall@1`, `<q>_to_<g>.matching_1v2` (cosine; NaN where
undefined: the means of the others are metrics.json's values).
"""

import contextlib
import itertools
import json
import os
import pathlib
import shutil

import numpy as np

from mmvae import data, files, inference, progress, write_errors, zoo
from mmvae.analysis import (coherence, generation, generation_figures, latent_space, marginal_likelihood, markdown,
                            sections, sync)
from mmvae.metrics import bootstrap, retrieval

SCORE_PREFIX = {"cosine": "retrieval", "euclidean": "retrieval_euclidean", "w2": "retrieval_w2"}
TEXT_KEYS = ("id", "identity", "video", "gender")
# Per-query cosine metrics in queries.npz, each with a bootstrap interval in metrics.json.
QUERY_METRICS = ("mrr", "recall@1", "matching_1v2")
JOINT = "joint"  # the space of every modality's latents together
# What a model that generates writes (besides `<g>_from_<q>.png`); the last two are older reports' figure names.
GENERATED_FILES = ("generated.npz", "likelihood.npz", "faces_from_voices.png", "spectra_from_faces.png")
# A split too large for memory: the test rows cross-generated (figures, coherence) and the training rows coherence
# learns from, label-stratified subsets (coherence's classifiers fit at most MAX_TRAIN_EXAMPLES anyway).
GENERATED_EXAMPLES = 10_000
COHERENCE_TRAIN_EXAMPLES = coherence.MAX_TRAIN_EXAMPLES


def _analysis_cfg(config) -> dict:
  a = config.get("analysis") if hasattr(config, "get") else None
  a = a.to_dict() if hasattr(a, "to_dict") else dict(a or {})
  return {"dbscan_eps": float(a.get("dbscan_eps", -1.0)), "dbscan_min_samples": int(a.get("dbscan_min_samples", 3)),
          "tsne_perplexity": float(a.get("tsne_perplexity", -1.0)), "seed": int(a.get("seed", 0)),
          "likelihood_samples": int(a.get("likelihood_samples", marginal_likelihood.DEFAULT_SAMPLES)),
          "joint_samples": int(a.get("joint_samples", generation.JOINT_SAMPLES)),
          "sync_offsets": int(a.get("sync_offsets", 6)),
          "max_points": int(a.get("max_points", latent_space.MAX_POINTS))}


def _groups(genders):
  """Gender per example for the constrained 1:2 matching, or None when not known for everyone."""
  g = np.asarray(genders).astype(str)
  known = np.isin(np.char.lower(g), ["m", "f", "male", "female"])
  return g if known.all() and len(set(g.tolist())) > 1 else None


def retrieval_section(latents: dict, names, seed: int = 0, manifest: dict | None = None, train_labels=None,
                      queries: dict | None = None) -> dict:
  """Flat metrics `<prefix>.<q>_to_<g>.<metric>` (+ `_chance`) for every score and ordered pair (q == g too).

  The cosine MRR, Recall@1 and 1:2 matching also get `<metric>_ci_low` / `_ci_high`: a 95% bootstrap over the
  split's videos (closed-set) or identities (open-set), else its examples (bootstrap.choose_clusters; manifest
  and train_labels tell an open-set split). queries: a dict to fill with queries.npz's arrays (QUERY_METRICS of
  every ordered pair of distinct modalities, per query; the label, the cluster and its kind).
  """
  labels = np.asarray(latents["label"])
  groups = _groups(latents["gender"]) if "gender" in latents else None
  clusters, kind = bootstrap.choose_clusters(latents, manifest or {}, train_labels)
  out = {"retrieval.ci_cluster": kind, "retrieval.ci_clusters": int(len(np.unique(clusters))),
         "retrieval.ci_resamples": bootstrap.N_BOOT, "retrieval.ci_level": bootstrap.LEVEL}
  if queries is not None:
    queries.update(label=labels.astype(np.int64), cluster=clusters, cluster_kind=np.asarray(kind))
  for q, g in itertools.product(names, repeat=2):
    # One pass per ordered pair: the three scores share its dot products (blocked, never N x N in memory).
    res, per = retrieval.retrieval_scores(
        latents[f"{q}_mu"], latents[f"{g}_mu"], labels, labels, tuple(SCORE_PREFIX),
        query_logvar=latents[f"{q}_logvar"], gallery_logvar=latents[f"{g}_logvar"],
        exclude_self=q == g, query_groups=groups, gallery_groups=groups, seed=seed, desc=f"retrieval {q}->{g}",
        return_per_query=True)
    for score, prefix in SCORE_PREFIX.items():
      out.update({f"{prefix}.{q}_to_{g}.{k}": v for k, v in res[score].items()})
    cosine = {m: per["cosine"][m] for m in QUERY_METRICS}
    out.update({f"retrieval.{q}_to_{g}.{k}": v
                for k, v in bootstrap.ci_keys(cosine, clusters, bootstrap.N_BOOT, seed, bootstrap.LEVEL).items()})
    if queries is not None and q != g:
      queries.update({f"{q}_to_{g}.{m}": v for m, v in cosine.items()})
  return out


def latent_section(latents: dict, names, id_names: dict, acfg: dict, report_dir: pathlib.Path) -> tuple[dict, dict]:
  """t-SNE and DBSCAN of each modality's space and the joint one, nearest identities; writes two figures.

  Above acfg['max_points'] points a space is mapped and clustered through a stratified (by identity), seeded
  sample: the same examples in every modality, and in the joint space max_points // modalities examples
  with every modality's latent of each; `clusters.<space>.points_shown` of `clusters.<space>.points` say so.
  A collapsed space (`clusters.<space>.collapsed`: its latents are copies of one point; the joint one when every
  modality's is) has no t-SNE map, so no panel in either figure; its DBSCAN and nearest identities stay.
  """
  names = list(names)
  labels = np.asarray(latents["label"])
  display = markdown.display_labels(names)
  cap, seed = max(3 * len(names), acfg.get("max_points", latent_space.MAX_POINTS)), acfg["seed"]
  keep = latent_space.stratified_sample(labels, cap, seed)
  keep_joint = latent_space.stratified_sample(labels, cap // len(names), seed)
  spaces = {m: np.asarray(latents[f"{m}_mu"]) for m in names}
  shown = {m: spaces[m][keep] for m in names}
  shown[JOINT] = np.vstack([spaces[m][keep_joint] for m in names])
  shown_labels = {**{m: labels[keep] for m in names}, JOINT: labels[keep_joint]}
  totals = {**{m: len(labels) for m in names}, JOINT: len(names) * len(labels)}
  collapsed = {m: latent_space.collapsed(spaces[m]) for m in names}
  collapsed[JOINT] = all(collapsed.values())  # one collapsed modality still leaves the others' points to map
  emb, clusters, kdist, out = {}, {}, {}, {"clusters.max_points": int(cap), "clusters.sample_seed": int(seed)}
  for space in progress.bar(shown, desc="t-SNE + DBSCAN"):
    tiled = np.tile(shown_labels[space], len(names) if space == JOINT else 1)
    out.update({f"clusters.{space}.collapsed": collapsed[space],
                f"clusters.{space}.spread": latent_space.spread(spaces[space] if space != JOINT else shown[space])})
    if not collapsed[space]:
      emb[space] = latent_space.tsne(shown[space], acfg["tsne_perplexity"], seed)
    clusters[space] = latent_space.dbscan(shown[space], tiled, acfg["dbscan_eps"], acfg["dbscan_min_samples"], seed)
    # The curve the knee was read from: distinct points only (copies are counted in the results).
    kdist[space] = clusters[space]["k_distances"]
    out.update({f"clusters.{space}.{k}": v for k, v in clusters[space].items()
                if k not in ("assignment", "k_distances")})
    out.update({f"clusters.{space}.points": int(totals[space]), f"clusters.{space}.points_shown": len(shown[space])})
  by_display = lambda d: {display.get(s, s): v for s, v in d.items() if s in emb}  # noqa: E731 (mapped spaces)
  if emb:
    latent_space.plot_embedding(report_dir / "tsne.png", by_display(emb), by_display(shown_labels), id_names,
                                "t-SNE of posterior means, coloured by identity",
                                joint={JOINT: [display[m] for m in names]}, totals=by_display(totals))
    latent_space.plot_dbscan(report_dir / "dbscan.png", by_display(emb), by_display(clusters), by_display(kdist),
                             totals=by_display(totals))
  else:  # every space collapsed: an earlier analysis's maps in this (our own) folder would stand for this one
    for name in ("tsne.png", "dbscan.png"):
      (report_dir / name).unlink(missing_ok=True)
  # Which rows of latents.npz each map shows (a joint map: these examples, modality after modality).
  np.savez_compressed(report_dir / "embeddings.npz", **{f"tsne_{k}": v for k, v in emb.items()},
                      **{f"dbscan_{k}": v["assignment"] for k, v in clusters.items()},
                      **{f"rows_{m}": keep for m in names}, **{f"rows_{JOINT}": keep_joint})
  near = {}
  n_ids = len(np.unique(labels))
  for q, g in itertools.permutations(names, 2):
    near[(q, g)] = latent_space.nearest_identities(spaces[q], spaces[g], labels)
    ranks = np.array(list(near[(q, g)]["own_rank"].values()))
    d = f"nearest.{q}_to_{g}"
    out.update({f"{d}.own_rank_mean": float(ranks.mean()), f"{d}.own_rank_mean_chance": (n_ids + 1) / 2,
                f"{d}.own_in_top5": float(np.mean(ranks <= 5)), f"{d}.own_in_top5_chance": min(5, n_ids) / n_ids})
  return out, near


def _clear_generated(report_dir: pathlib.Path, keep_arrays: bool) -> None:
  """Removes figures (and arrays) of an earlier analysis in this (our own) report folder."""
  for path in report_dir.glob("*_from_*.png"):
    path.unlink()
  for name in GENERATED_FILES:
    if not (keep_arrays and name.endswith(".npz")):
      (report_dir / name).unlink(missing_ok=True)


def _retrieval(ctx) -> dict:
  queries = {}
  out = retrieval_section(ctx.latents, ctx.names, ctx.acfg["seed"], ctx.manifest, (ctx.train or {}).get("label"),
                          queries)
  ctx.state["clusters"] = (queries["cluster"], str(queries["cluster_kind"]))
  if ctx.report_dir is not None:
    np.savez_compressed(ctx.report_dir / "queries.npz", **queries)
  return out


def _test_clusters(ctx) -> np.ndarray:
  """The bootstrap cluster of each row of ctx.test (every analysed example, or a streamed split's generated subset):
  the retrieval section's clusters of the same examples (by id), else chosen from ctx.test's own fields."""
  clusters, _ = ctx.state.get("clusters") or bootstrap.choose_clusters(ctx.latents, ctx.manifest,
                                                                       (ctx.train or {}).get("label"))
  n = len(ctx.test["label"])
  if "id" in ctx.test and "id" in ctx.latents:
    at = {i: k for k, i in enumerate(np.asarray(ctx.latents["id"]).astype(str).tolist())}
    rows = [at.get(i) for i in np.asarray(ctx.test["id"]).astype(str).tolist()]
    if None not in rows:
      return clusters[np.asarray(rows, np.int64)]
  elif n == len(clusters) and np.array_equal(np.asarray(ctx.test["label"]), np.asarray(ctx.latents["label"])):
    return clusters  # the same rows in the same order
  return bootstrap.choose_clusters(ctx.test, ctx.manifest, (ctx.train or {}).get("label"))[0]


def _sync(ctx) -> dict:
  return sync.section(ctx.frames, ctx.names, ctx.acfg["sync_offsets"], ctx.acfg["seed"])


def _latent_space(ctx) -> dict:
  out, ctx.state["near"] = latent_section(ctx.latents, ctx.names, ctx.id_names, ctx.acfg, ctx.report_dir)
  return out


def _cross_generation(ctx) -> dict:
  """Coherence, and the figures and decoded texts of cross generation (report.md's notes in ctx.state)."""
  _clear_generated(ctx.report_dir, keep_arrays=ctx.generated is not None)
  if ctx.generated is None:
    return {}
  attrs = ["gender"] + [a for a in ctx.manifest.get("attributes", []) if a != "gender"]
  clusters = _test_clusters(ctx)
  coh, ctx.state["notes"] = coherence.coherence_scores(ctx.train, ctx.test, ctx.generated, ctx.specs,
                                                       ctx.manifest.get("identities", []), attrs, ctx.acfg["seed"],
                                                       clusters=clusters)
  coh["coherence.ci_clusters"] = int(len(np.unique(clusters)))
  shown = np.asarray(ctx.test["label"])  # the rows generated: every test row, or a subset of a streamed split
  ctx.state["figures"] = generation_figures.plot_pairs(ctx.report_dir, ctx.specs, ctx.test, ctx.generated, shown,
                                                       ctx.id_names, ctx.display)
  ctx.state["texts"] = generation_figures.text_examples(ctx.specs, ctx.test, ctx.generated, shown, ctx.id_names)
  return coh


def _likelihood(ctx) -> dict:
  skipped = (ctx.lik or {}).get("skipped")
  ctx.state["likelihood_note"] = None if skipped is None else str(skipped)
  return {} if ctx.generated is None else marginal_likelihood.summary(ctx.lik or {})


for _name, _compute, _markdown in (("retrieval", _retrieval, markdown.retrieval_markdown),
                                   ("sync", _sync, markdown.sync_markdown),
                                   ("latent_space", _latent_space, markdown.latent_markdown),
                                   ("cross_generation", _cross_generation, markdown.generation_markdown),
                                   ("likelihood", _likelihood, markdown.likelihood_markdown)):
  sections.register(_name, _compute, _markdown)


def analyze_arrays(report_dir, latents: dict, generated: dict | None, test: dict, train: dict, specs: dict,
                   manifest: dict, config=None, run_info: dict | None = None, lik: dict | None = None,
                   frames: dict | None = None) -> dict:
  """Every metric and figure from saved arrays (no model needed); writes metrics.json and report.md.

  test / train: the split's stored arrays ({modality: data, 'label': ...}); generated None: the model cannot
  generate, so cross generation, its figures, coherence and likelihood are skipped; lik: marginal_likelihood.estimate's
  per-example arrays, or {'skipped': why}; frames: inference.encode_frames_split's arrays (sequence modalities).
  """
  from threadpoolctl import threadpool_limits
  # Small runs gain nothing from BLAS/OpenMP threads and lose a lot to them on a busy machine.
  with threadpool_limits(limits=1 if len(latents["label"]) < 2000 else None):
    return _analyze_arrays(pathlib.Path(report_dir), latents, generated, test, train, specs, manifest, config,
                           run_info, lik, frames)


def _analyze_arrays(report_dir, latents, generated, test, train, specs, manifest, config, run_info, lik,
                    frames) -> dict:
  report_dir.mkdir(parents=True, exist_ok=True)
  acfg = _analysis_cfg(config) if config is not None else _analysis_cfg({})
  identities = manifest.get("identities", [])
  id_names = {i: str(r.get("name") or r.get("identity") or i) for i, r in enumerate(identities)}
  names = list(specs)
  labels = np.asarray(latents["label"])
  if len(np.unique(labels)) < 2:
    raise ValueError("the analysed split holds fewer than two identities: retrieval and clusters are undefined")
  metrics = {"examples": int(len(labels)), "identities": int(len(np.unique(labels))), "modalities": names,
             "dataset.path": (run_info or {}).get("data_dir"), "dataset.fingerprint": manifest.get("fingerprint"),
             "model.kind": zoo.kind_of(config) if config is not None else None,
             "model.can_generate": generated is not None,
             # What the report was made from (`mmvae analyze` names a replaced report made from another).
             **{f"analysis.{k}": (run_info or {}).get(k) for k in ("checkpoint", "step", "split")}}
  ctx = sections.Context(specs, manifest, id_names, report_dir=report_dir, latents=latents, generated=generated,
                         test=test, train=train, lik=lik, frames=frames, config=config, run_info=run_info or {},
                         acfg=acfg)
  metrics.update(sections.compute(ctx))
  metrics = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in metrics.items()}
  (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
  markdown.write_report(report_dir / "report.md", metrics, specs, manifest, ctx=ctx)
  return metrics


def _save_latents(report_dir: pathlib.Path, latents: dict, arrays: dict) -> dict:
  """Writes report/latents.npz: the posteriors, label and text fields of every analysed example; returns them."""
  full = dict(latents, label=np.asarray(arrays["label"]))
  # A text field that shares a modality's name (mmdigits' `video` clips) was dropped at prep: never stored as text.
  full.update({k: np.asarray(arrays[k]).astype(str) for k in TEXT_KEYS
               if k in arrays and f"{k}_mu" not in latents})
  np.savez_compressed(report_dir / "latents.npz", **full)
  return full


def _encode_streamed(model, config, dataset, split: str, specs: dict, frame_names, acfg: dict):
  """(fields, latents, frames, lik) of a split too large for memory: one pass over chunks read from disk."""
  encoder = inference.model_encoder(model)
  stored = set(dataset.modalities())  # a modality named like a text field replaced it
  none = lambda c, lo: None  # noqa: E731
  parts = inference.over_chunks(dataset, split, {
      "fields": lambda c, lo: {k: c[k] for k in ("label",) + TEXT_KEYS if k in c and k not in stored},
      "latents": lambda c, lo: inference.encode_split(encoder, c, specs, pad=True),
      "frames": (lambda c, lo: inference.encode_frames_split(model, c, frame_names, pad=True))
                if len(frame_names) >= 2 else none,
      # The noise of example i is drawn from (seed, i) whatever the chunk, so the estimate is the whole split's.
      "lik": (lambda c, lo: marginal_likelihood.for_run(model, config, c, specs, acfg["likelihood_samples"], acfg["seed"],
                                               None, offset=lo)) if model.can_generate else none})
  return parts["fields"], parts["latents"], parts["frames"], parts["lik"]


def _coherence_data(dataset, split: str, rows=None) -> dict:
  """A split's stored arrays for coherence and figures: whole when it fits in memory, else the given rows only."""
  if rows is None:
    return dataset.arrays(split)
  return dataset.take(split, rows)


def _train_rows(dataset, seed: int):
  """None (every training example) when train fits in memory, else a label-stratified subset coherence can fit."""
  if dataset.in_memory("train"):
    return None
  return data.stratified_rows(dataset.column("train", "label"), COHERENCE_TRAIN_EXAMPLES, seed)


def _is_product(name: str) -> bool:
  """Whether an analysis writes files of this name (arrays, figures, metrics.json, report.md)."""
  return name.endswith((".npz", ".png")) or name in ("metrics.json", "report.md")


@contextlib.contextmanager
def _report_build(final: pathlib.Path):
  """A fresh folder beside FINAL (the report folder) for an analysis to fill, swapped in for FINAL when it completes.

  A failed analysis (a full disk, any error, Ctrl-C) removes its folder and leaves the previous report as it was;
  a file in FINAL that analyses do not write (a user's) moves into the new report.
  """
  final = final.absolute()
  try:
    final.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise write_errors.WriteError(f"cannot create {final.parent} for the report: {e.strerror}") from None
  if not os.access(final.parent, os.W_OK | os.X_OK):
    raise write_errors.WriteError(f"{final.parent} is not writable: the report goes into {final}")
  try:
    build = files.building_folder(final)
  except OSError as e:
    raise write_errors.WriteError(f"cannot write the report beside {final}: {e.strerror}") from None
  try:
    yield build
  except BaseException as e:
    code = write_errors.refused(e, build) if isinstance(e, Exception) else None
    written = write_errors.folder_bytes(build)
    shutil.rmtree(build, ignore_errors=True)
    if code is None:
      raise
    previous = sum(write_errors.folder_bytes(p) for p in final.iterdir() if _is_product(p.name)) \
        if final.is_dir() else 0
    raise write_errors.WriteError(write_errors.message(code, final, max(written, previous), at_least=not previous)
                                  + ("; the previous report is kept" if final.is_dir() else "")) from None
  files.swap_in(build, final, carry=_carry_users_files)


def _carry_users_files(old: pathlib.Path, build: pathlib.Path) -> None:
  """Moves what the replaced report holds that analyses do not write (a user's files) into the new one."""
  for entry in sorted(old.iterdir()):
    if not _is_product(entry.name) and not (build / entry.name).exists():
      os.replace(entry, build / entry.name)


def analyze(workdir, data_dir=None, split: str = "test", which: str = "best", report_dir=None) -> dict:
  """`_analyze` into a fresh folder, swapped in for `report_dir` (default WORKDIR/report/) when complete."""
  final = pathlib.Path(report_dir) if report_dir is not None else pathlib.Path(workdir) / "report"
  with _report_build(final) as build:
    return _analyze(workdir, data_dir, split, which, build)


def _analyze(workdir, data_dir=None, split: str = "test", which: str = "best", report_dir=None) -> dict:
  """Loads a run's `which` checkpoint ('best' or 'last'), encodes `split`, cross-generates, writes `report_dir`
  (default WORKDIR/report/).

  A split too large for memory (`Dataset.in_memory`) is encoded chunk by chunk from disk, to the same latents;
  cross generation, its figures and coherence then use a label-stratified subset of GENERATED_EXAMPLES test rows
  (report/generated.npz `rows`) and COHERENCE_TRAIN_EXAMPLES training rows.
  """
  from mmvae.train import checkpoints
  workdir = pathlib.Path(workdir)
  model, config, _, step = checkpoints.load_run(workdir, which=which, return_step=True)
  dataset = checkpoints.dataset_of_run(workdir, data_dir)  # refuses a dataset that changed since training
  dataset.check_config(config)
  if split not in dataset.splits:
    raise ValueError(f"split {split!r} is not in {dataset.data_dir} (it has {dataset.splits}); use --split")
  specs = dataset.modalities(config.data.get("modalities", ()))
  acfg = _analysis_cfg(config)
  # The splits held whole (coherence reads train), read before anything is written: a damaged shard writes nothing.
  for name in dict.fromkeys([split] + (["train"] if model.can_generate else [])):
    if dataset.in_memory(name):
      dataset.arrays(name)
  report_dir = pathlib.Path(report_dir) if report_dir is not None else workdir / "report"
  report_dir.mkdir(parents=True, exist_ok=True)
  frame_names = [m for m in model.frame_modalities() if m in specs] if isinstance(model, zoo.FrameModalities) else []
  (report_dir / "frames.npz").unlink(missing_ok=True)
  streamed = not dataset.in_memory(split)
  if streamed:
    fields, latents, frames, lik = _encode_streamed(model, config, dataset, split, specs, frame_names, acfg)
    latents = _save_latents(report_dir, latents, fields)
  else:
    test, lik = dataset.arrays(split), None
    latents = _save_latents(report_dir, inference.encode_split(inference.model_encoder(model), test, specs), test)
    frames = inference.encode_frames_split(model, test, frame_names) if len(frame_names) >= 2 else None
  if frames is not None:
    np.savez_compressed(report_dir / "frames.npz", **frames)
  generated, rows = None, None
  if model.can_generate:
    latent_dim = int(latents[f"{next(iter(specs))}_mu"].shape[1])
    if streamed:  # decoded data is as large as the raw split: a stated, stratified subset of it
      rows = data.stratified_rows(latents["label"], GENERATED_EXAMPLES, acfg["seed"])
      test = _coherence_data(dataset, split, rows)
      print(f"mmvae analyze: split {split!r} ({len(latents['label'])} examples) is streamed; cross generation, its "
            f"figures and coherence use {len(rows)} label-stratified examples (report/generated.npz rows)", flush=True)
    generated = generation.cross_generate(model, latents if rows is None else {k: v[rows] for k, v in latents.items()},
                                          specs)
    generated.update(generation.sample_prior(model, specs, latent_dim, acfg["joint_samples"], acfg["seed"]))
    np.savez_compressed(report_dir / "generated.npz", **generated, **({} if rows is None else {"rows": rows}))
    if not streamed:
      lik = marginal_likelihood.for_run(model, config, test, specs, acfg["likelihood_samples"], acfg["seed"], latent_dim)
    np.savez_compressed(report_dir / "likelihood.npz", **lik)
  else:
    test = {"label": latents["label"]}  # nothing reads the raw split when nothing is generated
  run_info = dict(_run_info(workdir, dataset.data_dir, split, step.label), step=int(step))  # which checkpoint, why
  # Only coherence reads training data.
  train = _coherence_data(dataset, "train", _train_rows(dataset, acfg["seed"])) if generated is not None else {}
  return analyze_arrays(report_dir, latents, generated, test, train, specs, dataset.manifest, config, run_info, lik,
                        frames)


def _run_info(workdir: pathlib.Path, data_dir, split: str, which: str) -> dict:
  info = {"workdir": str(workdir), "data_dir": str(data_dir), "split": split, "checkpoint": which}
  final = workdir / "final.json"
  if final.is_file():
    info["final"] = json.loads(final.read_text())
  return info


def rebuild(workdir, data_dir=None, split: str = "test") -> dict:
  """Recomputes report/ from latents.npz, generated.npz and likelihood.npz without the model (real data from disk)."""
  import ml_collections
  from mmvae.train import checkpoints
  workdir = pathlib.Path(workdir)
  report_dir = workdir / "report"
  # The analysis that wrote the arrays recorded whether the model generates (no generated.npz then).
  previous = report_dir / "metrics.json"
  previous = json.loads(previous.read_text()) if previous.is_file() else {}
  can_generate = previous.get("model.can_generate", True)
  for name in ("latents.npz",) + (("generated.npz",) if can_generate else ()):
    if not (report_dir / name).is_file():
      raise FileNotFoundError(f"{report_dir / name} not found; run `mmvae analyze --workdir {workdir}` first")
  latents = dict(np.load(report_dir / "latents.npz"))
  generated = dict(np.load(report_dir / "generated.npz")) if can_generate else None
  lik_file = report_dir / "likelihood.npz"
  lik = dict(np.load(lik_file)) if can_generate and lik_file.is_file() else None
  config = ml_collections.ConfigDict(json.loads((checkpoints.run_folder(workdir) / "config.json").read_text()))
  dataset = checkpoints.dataset_of_run(workdir, data_dir)
  specs = dataset.modalities(config.data.get("modalities", ()))
  if not np.array_equal(dataset.column(split, "id"), latents["id"]):
    raise ValueError(f"latents.npz does not match split {split!r} of {dataset.data_dir} (example ids differ)")
  # A streamed analysis generated from a subset of rows (generated.npz `rows`): the same rows of the real data.
  rows = generated.pop("rows", None) if generated is not None else None
  if generated is None:
    test, train = {"label": latents["label"]}, {}
  else:
    acfg = _analysis_cfg(config)
    test = _coherence_data(dataset, split, rows)
    train = _coherence_data(dataset, "train", _train_rows(dataset, acfg["seed"]))
  missing = [m for m in specs if f"{m}_mu" not in latents]
  if generated is not None:
    missing += [k for k in (f"{g}_from_{q}" for q in specs for g in specs) if k not in generated]
  if missing:
    raise ValueError(f"the saved arrays lack {missing} (written by an older mmvae?); run `mmvae analyze` again")
  frames_file = report_dir / "frames.npz"
  frames = dict(np.load(frames_file)) if frames_file.is_file() else None
  with _report_build(report_dir) as build:  # the saved arrays go into the new report as they are
    for name in ("latents.npz", "generated.npz", "likelihood.npz", "frames.npz"):
      if (report_dir / name).is_file():
        shutil.copy2(report_dir / name, build / name)
    return analyze_arrays(build, latents, generated, test, train, specs, dataset.manifest, config,
                          # The arrays' checkpoint, as the analysis that saved them recorded it.
                          dict(_run_info(workdir, dataset.data_dir, split,
                                         previous.get("analysis.checkpoint") or "saved arrays"),
                               step=previous.get("analysis.step")), lik, frames)
