"""`mmvae analyze`: encode a split, compute every metric with its chance level, write WORKDIR/report/.

The modalities are the dataset's (config.data.modalities picks some, in the dataset's order); every
section runs over all of them, never naming one:
  retrieval.<q>_to_<g>.<metric>      every ordered pair, q == g included (within one modality), three scores
  clusters.<m> / clusters.joint      t-SNE + DBSCAN of each modality's latents and of all of them stacked
  nearest.<q>_to_<g>                 identity centroids, every ordered pair of distinct modalities
  coherence.<q>_to_<g>, .joint       models that generate: cross and joint coherence (analysis/coherence.py)
  likelihood.iwae_k<K>               models with a joint posterior: the importance-weighted log p(x)
  sync.*, frame_retrieval.*          two or more sequence modalities with temporal encoders (analysis/sync.py)
Files: latents.npz, generated.npz, likelihood.npz and frames.npz (what the model computed), metrics.json, embeddings.npz,
figures, report.md; `rebuild` recomputes everything but the first three without the model.
"""

import itertools
import json
import pathlib

import numpy as np

from mmvae import inference, progress, zoo
from mmvae.analysis import (coherence, generation, generation_figures, latent_space, likelihood, markdown, retrieval,
                            sync)

SCORE_PREFIX = {"cosine": "retrieval", "euclidean": "retrieval_euclidean", "w2": "retrieval_w2"}
TEXT_KEYS = ("id", "identity", "video", "gender")
JOINT = "joint"  # the space of every modality's latents together
# What a model that generates writes (besides `<g>_from_<q>.png`); the last two are older reports' figure names.
GENERATED_FILES = ("generated.npz", "likelihood.npz", "faces_from_voices.png", "spectra_from_faces.png")


def _analysis_cfg(config) -> dict:
  a = config.get("analysis") if hasattr(config, "get") else None
  a = a.to_dict() if hasattr(a, "to_dict") else dict(a or {})
  return {"dbscan_eps": float(a.get("dbscan_eps", -1.0)), "dbscan_min_samples": int(a.get("dbscan_min_samples", 3)),
          "tsne_perplexity": float(a.get("tsne_perplexity", -1.0)), "seed": int(a.get("seed", 0)),
          "likelihood_samples": int(a.get("likelihood_samples", likelihood.DEFAULT_SAMPLES)),
          "joint_samples": int(a.get("joint_samples", generation.JOINT_SAMPLES)),
          "sync_offsets": int(a.get("sync_offsets", 6))}


def _groups(genders):
  """Gender per example for the constrained 1:2 matching, or None when not known for everyone."""
  g = np.asarray(genders).astype(str)
  known = np.isin(np.char.lower(g), ["m", "f", "male", "female"])
  return g if known.all() and len(set(g.tolist())) > 1 else None


def retrieval_section(latents: dict, names, seed: int = 0) -> dict:
  """Flat metrics `<prefix>.<q>_to_<g>.<metric>` (+ `_chance`) for every score and ordered pair (q == g too)."""
  labels = np.asarray(latents["label"])
  groups = _groups(latents["gender"]) if "gender" in latents else None
  out = {}
  for score, prefix in SCORE_PREFIX.items():
    for q, g in itertools.product(names, repeat=2):
      res = retrieval.retrieval_metrics(
          latents[f"{q}_mu"], latents[f"{g}_mu"], labels, labels, score=score,
          query_logvar=latents[f"{q}_logvar"], gallery_logvar=latents[f"{g}_logvar"],
          exclude_self=q == g, query_groups=groups, gallery_groups=groups, seed=seed)
      out.update({f"{prefix}.{q}_to_{g}.{k}": v for k, v in res.items()})
  return out


def latent_section(latents: dict, names, id_names: dict, acfg: dict, report_dir: pathlib.Path) -> tuple[dict, dict]:
  """t-SNE and DBSCAN of each modality's space and the joint one, nearest identities; writes two figures."""
  names = list(names)
  labels = np.asarray(latents["label"])
  display = markdown.display_labels(names)
  spaces = {m: np.asarray(latents[f"{m}_mu"]) for m in names}
  spaces[JOINT] = np.vstack([spaces[m] for m in names])
  space_labels = {**{m: labels for m in names}, JOINT: np.tile(labels, len(names))}
  emb, clusters, kdist, out = {}, {}, {}, {}
  for space in progress.bar(spaces, desc="t-SNE + DBSCAN"):
    emb[space] = latent_space.tsne(spaces[space], acfg["tsne_perplexity"], acfg["seed"])
    clusters[space] = latent_space.dbscan(spaces[space], space_labels[space], acfg["dbscan_eps"],
                                          acfg["dbscan_min_samples"], acfg["seed"])
    # The curve the knee was read from: distinct points only (copies are counted in the results).
    kdist[space] = latent_space.k_distances(latent_space.distinct(spaces[space])[0], acfg["dbscan_min_samples"])
    out.update({f"clusters.{space}.{k}": v for k, v in clusters[space].items() if k != "assignment"})
  shown = lambda d: {display.get(s, s): v for s, v in d.items()}  # noqa: E731
  latent_space.plot_embedding(report_dir / "tsne.png", shown(emb), labels, id_names,
                              "t-SNE of posterior means, coloured by identity",
                              joint={JOINT: [display[m] for m in names]})
  latent_space.plot_dbscan(report_dir / "dbscan.png", shown(emb), shown(clusters), shown(kdist))
  np.savez_compressed(report_dir / "embeddings.npz", **{f"tsne_{k}": v for k, v in emb.items()},
                      **{f"dbscan_{k}": v["assignment"] for k, v in clusters.items()})
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


def analyze_arrays(report_dir, latents: dict, generated: dict | None, test: dict, train: dict, specs: dict,
                   manifest: dict, config=None, run_info: dict | None = None, lik: dict | None = None,
                   frames: dict | None = None) -> dict:
  """Every metric and figure from saved arrays (no model needed); writes metrics.json and report.md.

  test / train: the split's stored arrays ({modality: data, 'label': ...}); generated None: the model cannot
  generate, so cross generation, its figures, coherence and likelihood are skipped; lik: likelihood.estimate's
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
             "model.can_generate": generated is not None}
  metrics.update(retrieval_section(latents, names, acfg["seed"]))
  metrics.update(sync.section(frames, names, acfg["sync_offsets"], acfg["seed"]))
  lat_metrics, near = latent_section(latents, names, id_names, acfg, report_dir)
  metrics.update(lat_metrics)
  notes, figures, texts = [], [], {}
  _clear_generated(report_dir, keep_arrays=generated is not None)
  if generated is not None:
    attrs = ["gender"] + [a for a in manifest.get("attributes", []) if a != "gender"]
    coh, notes = coherence.coherence_scores(train, test, generated, specs, identities, attrs, acfg["seed"])
    metrics.update(coh)
    metrics.update(likelihood.summary(lik or {}))
    display = markdown.display_labels(names)
    figures = generation_figures.plot_pairs(report_dir, specs, test, generated, labels, id_names, display)
    texts = generation_figures.text_examples(specs, test, generated, labels, id_names)
  metrics = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in metrics.items()}
  (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
  skipped = (lik or {}).get("skipped")
  markdown.write_report(report_dir / "report.md", metrics, specs, manifest, near=near, id_names=id_names,
                        config=config, run_info=run_info, figures=figures, texts=texts, notes=notes,
                        likelihood_note=None if skipped is None else str(skipped))
  return metrics


def _save_latents(report_dir: pathlib.Path, latents: dict, arrays: dict) -> dict:
  full = dict(latents, label=np.asarray(arrays["label"]))
  # A text field that shares a modality's name (mmdigits' `video` clips) was dropped at prep: never stored as text.
  full.update({k: np.asarray(arrays[k]).astype(str) for k in TEXT_KEYS
               if k in arrays and f"{k}_mu" not in latents})
  np.savez_compressed(report_dir / "latents.npz", **full)
  return full


def analyze(workdir, data_dir=None, split: str = "test", which: str = "best") -> dict:
  """Loads a run's `which` checkpoint ('best' or 'last'), encodes `split`, cross-generates, writes WORKDIR/report/."""
  from mmvae.train import checkpoints
  workdir = pathlib.Path(workdir)
  model, config, _, step = checkpoints.load_run(workdir, which=which, return_step=True)
  dataset = checkpoints.dataset_of_run(workdir, data_dir)  # refuses a dataset that changed since training
  dataset.check_config(config)
  if split not in dataset.splits:
    raise ValueError(f"split {split!r} is not in {dataset.data_dir} (it has {dataset.splits}); use --split")
  specs = dataset.modalities(config.data.get("modalities", ()))
  acfg = _analysis_cfg(config)
  test = dataset.arrays(split)
  report_dir = workdir / "report"
  report_dir.mkdir(parents=True, exist_ok=True)
  latents = _save_latents(report_dir, inference.encode_split(inference.model_encoder(model), test, specs), test)
  frame_names = [m for m in model.frame_modalities() if m in specs] if hasattr(model, "frame_modalities") else []
  frames = None
  (report_dir / "frames.npz").unlink(missing_ok=True)
  if len(frame_names) >= 2:
    frames = inference.encode_frames_split(model, test, frame_names)
    np.savez_compressed(report_dir / "frames.npz", **frames)
  generated = lik = None
  if model.can_generate:
    latent_dim = int(latents[f"{next(iter(specs))}_mu"].shape[1])
    generated = generation.cross_generate(model, latents, specs)
    generated.update(generation.sample_prior(model, specs, latent_dim, acfg["joint_samples"], acfg["seed"]))
    np.savez_compressed(report_dir / "generated.npz", **generated)
    lik = likelihood.for_run(model, config, test, specs, acfg["likelihood_samples"], acfg["seed"], latent_dim)
    np.savez_compressed(report_dir / "likelihood.npz", **lik)
  run_info = _run_info(workdir, dataset.data_dir, split, f"{which} (step {step})")
  train = dataset.arrays("train") if generated is not None else {}  # only coherence reads training data
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
  can_generate = json.loads(previous.read_text()).get("model.can_generate", True) if previous.is_file() else True
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
  test, train = dataset.arrays(split), dataset.arrays("train") if can_generate else {}
  if not np.array_equal(test["id"], latents["id"]):
    raise ValueError(f"latents.npz does not match split {split!r} of {dataset.data_dir} (example ids differ)")
  missing = [m for m in specs if f"{m}_mu" not in latents]
  if generated is not None:
    missing += [k for k in (f"{g}_from_{q}" for q in specs for g in specs) if k not in generated]
  if missing:
    raise ValueError(f"the saved arrays lack {missing} (written by an older mmvae?); run `mmvae analyze` again")
  frames_file = report_dir / "frames.npz"
  frames = dict(np.load(frames_file)) if frames_file.is_file() else None
  return analyze_arrays(report_dir, latents, generated, test, train, specs, dataset.manifest, config,
                        _run_info(workdir, dataset.data_dir, split, "saved arrays"), lik, frames)
