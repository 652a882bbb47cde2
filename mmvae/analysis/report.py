"""`mmvae analyze`: encode a split, compute every metric with its chance level, write WORKDIR/report/."""

import json
import pathlib

import numpy as np

from mmvae import inference, progress, zoo
from mmvae.analysis import coherence, generation, latent_space, markdown, retrieval

DIRECTIONS = {  # name: (query modality, gallery modality)
    "voice_to_face": ("audio", "face"), "face_to_voice": ("face", "audio"),
    "voice_to_voice": ("audio", "audio"), "face_to_face": ("face", "face")}
SCORE_PREFIX = {"cosine": "retrieval", "euclidean": "retrieval_euclidean", "w2": "retrieval_w2"}
TEXT_KEYS = ("id", "identity", "video", "gender")
GENERATED_FILES = ("generated.npz", "faces_from_voices.png", "spectra_from_faces.png")


def _analysis_cfg(config) -> dict:
  a = config.get("analysis") if hasattr(config, "get") else None
  a = a.to_dict() if hasattr(a, "to_dict") else dict(a or {})
  return {"dbscan_eps": float(a.get("dbscan_eps", -1.0)), "dbscan_min_samples": int(a.get("dbscan_min_samples", 3)),
          "tsne_perplexity": float(a.get("tsne_perplexity", -1.0)), "seed": int(a.get("seed", 0))}


def _groups(genders):
  """Gender per example for the constrained 1:2 matching, or None when not known for everyone."""
  g = np.asarray(genders).astype(str)
  known = np.isin(np.char.lower(g), ["m", "f", "male", "female"])
  return g if known.all() and len(set(g.tolist())) > 1 else None


def retrieval_section(latents: dict, seed: int = 0) -> dict:
  """Flat metrics `<prefix>.<direction>.<metric>` (+ `_chance`) for every score and direction."""
  labels = np.asarray(latents["label"])
  groups = _groups(latents["gender"]) if "gender" in latents else None
  out = {}
  for score, prefix in SCORE_PREFIX.items():
    for name, (qm, gm) in DIRECTIONS.items():
      res = retrieval.retrieval_metrics(
          latents[f"{qm}_mu"], latents[f"{gm}_mu"], labels, labels, score=score,
          query_logvar=latents[f"{qm}_logvar"], gallery_logvar=latents[f"{gm}_logvar"],
          exclude_self=qm == gm, query_groups=groups, gallery_groups=groups, seed=seed)
      out.update({f"{prefix}.{name}.{k}": v for k, v in res.items()})
  return out


def latent_section(latents: dict, names: dict, acfg: dict, report_dir: pathlib.Path) -> tuple[dict, dict]:
  """t-SNE and DBSCAN of the voice, face and joint spaces, nearest identities; writes two figures."""
  labels = np.asarray(latents["label"])
  spaces = {"audio": latents["audio_mu"], "face": latents["face_mu"],
            "joint": np.vstack([latents["audio_mu"], latents["face_mu"]])}
  space_labels = {"audio": labels, "face": labels, "joint": np.r_[labels, labels]}
  emb, clusters, kdist, out = {}, {}, {}, {}
  for space in progress.bar(spaces, desc="t-SNE + DBSCAN"):
    emb[space] = latent_space.tsne(spaces[space], acfg["tsne_perplexity"], acfg["seed"])
    clusters[space] = latent_space.dbscan(spaces[space], space_labels[space], acfg["dbscan_eps"],
                                          acfg["dbscan_min_samples"], acfg["seed"])
    # The curve the knee was read from: distinct points only (copies are counted in the results).
    kdist[space] = latent_space.k_distances(latent_space.distinct(spaces[space])[0], acfg["dbscan_min_samples"])
    out.update({f"clusters.{space}.{k}": v for k, v in clusters[space].items() if k != "assignment"})
  latent_space.plot_embedding(report_dir / "tsne.png", emb, labels, names,
                              "t-SNE of posterior means, coloured by identity")
  latent_space.plot_dbscan(report_dir / "dbscan.png", emb, clusters, kdist)
  np.savez_compressed(report_dir / "embeddings.npz", **{f"tsne_{k}": v for k, v in emb.items()},
                      **{f"dbscan_{k}": v["assignment"] for k, v in clusters.items()})
  near = latent_space.nearest_identities(latents["face_mu"], latents["audio_mu"], labels)
  n_ids = len(np.unique(labels))
  for d in ("face_to_voice", "voice_to_face"):
    ranks = np.array(list(near[f"{d}_own_rank"].values()))
    out[f"nearest.{d}.own_rank_mean"] = float(ranks.mean())
    out[f"nearest.{d}.own_rank_mean_chance"] = (n_ids + 1) / 2
    out[f"nearest.{d}.own_in_top5"] = float(np.mean(ranks <= 5))
    out[f"nearest.{d}.own_in_top5_chance"] = min(5, n_ids) / n_ids
  return out, near


def analyze_arrays(report_dir, latents: dict, generated: dict | None, test_real: dict, train_faces, train_labels,
                   manifest: dict, config=None, run_info: dict | None = None) -> dict:
  """Every metric and figure from saved arrays (no model needed); writes metrics.json and report.md.

  generated None: the model cannot generate, so cross generation, its figures and coherence are skipped.
  """
  from threadpoolctl import threadpool_limits
  # Small runs gain nothing from BLAS/OpenMP threads and lose a lot to them on a busy machine.
  with threadpool_limits(limits=1 if len(latents["label"]) < 2000 else None):
    return _analyze_arrays(report_dir, latents, generated, test_real, train_faces, train_labels, manifest,
                           config, run_info)


def _analyze_arrays(report_dir, latents, generated, test_real, train_faces, train_labels, manifest, config,
                    run_info) -> dict:
  report_dir = pathlib.Path(report_dir)
  report_dir.mkdir(parents=True, exist_ok=True)
  acfg = _analysis_cfg(config) if config is not None else _analysis_cfg({})
  identities = manifest.get("identities", [])
  names = {i: str(r.get("name") or r.get("identity") or i) for i, r in enumerate(identities)}
  labels = np.asarray(latents["label"])
  if len(np.unique(labels)) < 2:
    raise ValueError("the analysed split holds fewer than two identities: retrieval and clusters are undefined")
  metrics = {"examples": int(len(labels)), "identities": int(len(np.unique(labels))),
             "dataset.path": (run_info or {}).get("data_dir"), "dataset.fingerprint": manifest.get("fingerprint"),
             "model.kind": zoo.kind_of(config) if config is not None else None,
             "model.can_generate": generated is not None}
  metrics.update(retrieval_section(latents, acfg["seed"]))
  lat_metrics, near = latent_section(latents, names, acfg, report_dir)
  metrics.update(lat_metrics)
  notes = []
  if generated is not None:
    attrs = ["gender"] + [a for a in manifest.get("attributes", []) if a != "gender"]
    coh, notes = coherence.coherence_scores(train_faces, train_labels, test_real["face"], labels,
                                            generated["face_from_voice"], identities, attrs, acfg["seed"])
    metrics.update(coh)
    generation.plot_face_grid(report_dir / "faces_from_voices.png", test_real["face"], generated["face_from_face"],
                              generated["face_from_voice"], labels, names)
    generation.plot_spectra(report_dir / "spectra_from_faces.png", test_real["audio"],
                            generated["audio_from_face"], generated["audio_from_voice"], labels, names)
  else:  # figures of an earlier analysis in this (our own) report folder would contradict the report
    for name in GENERATED_FILES:
      (report_dir / name).unlink(missing_ok=True)
  metrics = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in metrics.items()}
  (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
  markdown.write_report(report_dir / "report.md", metrics, near, names, notes, manifest, config, run_info)
  return metrics


def _save_latents(report_dir: pathlib.Path, latents: dict, arrays: dict) -> dict:
  full = dict(latents, label=np.asarray(arrays["label"]))
  full.update({k: np.asarray(arrays[k]).astype(str) for k in TEXT_KEYS if k in arrays})
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
  test = dataset.arrays(split)
  report_dir = workdir / "report"
  report_dir.mkdir(parents=True, exist_ok=True)
  latents = _save_latents(report_dir, inference.encode_split(inference.model_encoder(model), test), test)
  generated = generation.cross_generate(model, latents) if model.can_generate else None
  if generated is not None:
    np.savez_compressed(report_dir / "generated.npz", **generated)
  train = dataset.arrays("train")
  run_info = _run_info(workdir, dataset.data_dir, split, f"{which} (step {step})")
  return analyze_arrays(report_dir, latents, generated, test, train["face"], train["label"], dataset.manifest,
                        config, run_info)


def _run_info(workdir: pathlib.Path, data_dir, split: str, which: str) -> dict:
  info = {"workdir": str(workdir), "data_dir": str(data_dir), "split": split, "checkpoint": which}
  final = workdir / "final.json"
  if final.is_file():
    info["final"] = json.loads(final.read_text())
  return info


def rebuild(workdir, data_dir=None, split: str = "test") -> dict:
  """Recomputes report/ from latents.npz (and generated.npz) without the model (real faces from the dataset)."""
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
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  dataset = checkpoints.dataset_of_run(workdir, data_dir)
  test, train = dataset.arrays(split), dataset.arrays("train")
  if not np.array_equal(test["id"], latents["id"]):
    raise ValueError(f"latents.npz does not match split {split!r} of {dataset.data_dir} (example ids differ)")
  return analyze_arrays(report_dir, latents, generated, test, train["face"], train["label"], dataset.manifest,
                        config, _run_info(workdir, dataset.data_dir, split, "saved arrays"))
