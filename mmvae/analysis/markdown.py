"""report.md: every metric beside its chance level, every figure, the config and the dataset."""

import json


TIE_POLICY = (
    "Ties are broken uniformly at random and every ranking metric is its exact expectation over tie "
    "orders (for a single rank: the average of the optimistic and pessimistic rank); a constant score "
    "therefore scores exactly the chance level.")
DEFINITIONS = [
    ("mrr", "MRR: mean of 1 / rank of the first item of the query's identity"),
    ("recall@1", "Recall@K: share of queries with an item of their identity in the top K"),
    ("map", "mAP: mean average precision over the whole ranking"),
    ("map@50", "mAP@50: precision summed at relevant ranks <= 50, divided by min(R, 50) (M-CVS style)"),
    ("auc", "AUC / EER: verification on (query, gallery) pairs, same identity vs different"),
    ("matching_1v2", "1:2 matching: P(the right item outscores a wrong one), over all pairs of them"),
    ("matching_1v2_gender", "1:2 matching with the wrong item of the query's gender"),
]
METRICS = ["mrr", "recall@1", "recall@5", "recall@10", "map", "map@50", "auc", "eer", "matching_1v2",
           "matching_1v2_gender"]
DIRECTIONS = ["voice_to_face", "face_to_voice", "voice_to_voice", "face_to_face"]
SCORES = [("retrieval", "cosine between posterior means (default)"),
          ("retrieval_euclidean", "negative Euclidean distance between means"),
          ("retrieval_w2", "negative 2-Wasserstein distance between the Gaussian posteriors")]
FIGURES = [("tsne.png", "t-SNE of the voice, face and joint latent spaces (colour: identity)"),
           ("dbscan.png", "DBSCAN clusters on the t-SNE maps, and the k-distance curves that chose eps"),
           ("faces_from_voices.png", "Faces generated from voices"),
           ("spectra_from_faces.png", "Spectra generated from faces")]
MAX_NEAREST_ROWS = 40


def _fmt(v) -> str:
  if isinstance(v, bool) or v is None:
    return str(v)
  if isinstance(v, float):
    return "nan" if v != v else f"{v:.4f}"
  return str(v)


def _retrieval_tables(metrics: dict) -> list[str]:
  lines = []
  for prefix, desc in SCORES:
    if f"{prefix}.voice_to_face.mrr" not in metrics:
      continue
    lines += [f"### Score: {desc}", "", "| metric | " + " | ".join(DIRECTIONS) + " |",
              "|---|" + "---|" * len(DIRECTIONS)]
    for m in METRICS:
      cells = []
      for d in DIRECTIONS:
        v, c = metrics.get(f"{prefix}.{d}.{m}"), metrics.get(f"{prefix}.{d}.{m}_chance")
        cells.append("-" if v is None else f"{_fmt(v)} (chance {_fmt(c)})")
      if any(c != "-" for c in cells):
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    q = [str(metrics.get(f"{prefix}.{d}.queries", "-")) for d in DIRECTIONS]
    lines += ["| queries | " + " | ".join(q) + " |", ""]
    pairs = metrics.get(f"{prefix}.voice_to_face.verification_pairs")
    sampled = metrics.get(f"{prefix}.voice_to_face.verification_pairs_sampled")
    lines += [f"Verification used {pairs} pairs per direction" + (" (a seeded uniform sample)." if sampled else
                                                                  " (every pair)."), ""]
  return lines


def _nearest_table(near: dict, names: dict) -> list[str]:
  lines = ["| identity | own voice rank (from face) | nearest voices to the face | own face rank (from voice) "
           "| nearest faces to the voice |", "|---|---|---|---|---|"]
  for k, i in enumerate(sorted(near["face_to_voice"])):
    if k >= MAX_NEAREST_ROWS:
      lines.append(f"| ... {len(near['face_to_voice']) - MAX_NEAREST_ROWS} more identities | | | | |")
      break
    fv = ", ".join(names.get(j, str(j)) for j in near["face_to_voice"][i])
    vf = ", ".join(names.get(j, str(j)) for j in near["voice_to_face"][i])
    lines.append(f"| {names.get(i, i)} | {near['face_to_voice_own_rank'][i]:g} | {fv} | "
                 f"{near['voice_to_face_own_rank'][i]:g} | {vf} |")
  return lines


def _dataset_lines(manifest: dict) -> list[str]:
  splits = ", ".join(f"{k}: {v.get('examples')}" for k, v in manifest.get("splits", {}).items())
  feats = manifest.get("features", {})
  return [f"- corpus: {manifest.get('corpus')} (prepared with config {manifest.get('config')!r})",
          f"- splits (examples): {splits}", f"- identities: {len(manifest.get('identities', []))}",
          f"- features: " + ", ".join(f"{k} {v.get('shape')} {v.get('dtype')}" for k, v in feats.items()),
          f"- audio normalisation: {'dataset per-bin mean/std' if manifest.get('audio_normalisation') else 'none'}",
          f"- identity attributes: {', '.join(manifest.get('attributes', [])) or 'none'}",
          f"- skipped files at preparation: {len(manifest.get('skipped', []))}"]


def _generation_lines(metrics: dict, notes: list) -> list[str]:
  """The cross-generation figures and the coherence table."""
  lines = ["## Cross generation", "", "![faces](faces_from_voices.png)", "", "*" + FIGURES[2][1] + "*", "",
           "![spectra](spectra_from_faces.png)", "", "*" + FIGURES[3][1] + "*", "", "### Coherence", "",
           "A logistic-regression classifier on the pixels of real training faces, applied to faces generated "
           "from test voices ('generated') and, as its ceiling, to real test faces ('real'). Chance = "
           "sum_c P(pred = c) P(true = c): what the same predictions score if independent of the truth.", "",
           "| target | generated (chance) | real test faces (chance) | classes |", "|---|---|---|---|"]
  for key in sorted(k for k in metrics if k.startswith("coherence.real_") and k.endswith("_accuracy")):
    t = key[len("coherence.real_"):-len("_accuracy")]
    lines.append(f"| {t} | {_fmt(metrics[f'coherence.{t}_accuracy'])} ({_fmt(metrics[f'coherence.{t}_accuracy_chance'])}) "
                 f"| {_fmt(metrics[key])} ({_fmt(metrics[f'coherence.real_{t}_accuracy_chance'])}) "
                 f"| {metrics[f'coherence.{t}_classes']} |")
  return lines + [""] + [f"- {n}" for n in notes] + [""]


def write_report(path, metrics: dict, near: dict, names: dict, notes: list, manifest: dict, config,
                 run_info: dict | None) -> None:
  """Writes report.md."""
  run_info = run_info or {}
  lines = ["# mmvae analysis report", "",
           f"Run `{run_info.get('workdir', '?')}`, checkpoint: {run_info.get('checkpoint', '?')}, dataset "
           f"`{run_info.get('data_dir', '?')}` (fingerprint {str(manifest.get('fingerprint'))[:12]}), "
           f"split `{run_info.get('split', '?')}`: {metrics['examples']} examples of {metrics['identities']} "
           "identities. Every number is shown with its chance level for this gallery.", "",
           "## Retrieval", "", "Query: one test example's latent of one modality; gallery: every test example's "
           "latent of the other modality (within-modality: every other example); relevant: the same identity.",
           "", f"Tie policy: {TIE_POLICY}", ""]
  lines += [f"- {text}" for _, text in DEFINITIONS] + [""]
  lines += _retrieval_tables(metrics)
  lines += ["## Latent space", "", "![t-SNE](tsne.png)", "", "*" + FIGURES[0][1] + "*", "",
            "DBSCAN clusters every point; eps is read at the knee of the k-distance curve of the distinct "
            "points, since copies (e.g. face latents of utterances that share their video's frames) would put "
            "the knee at 0. Duplicates: points equal (to float precision) to an earlier one; they still count "
            "toward min_samples.", "",
            "| space | eps | clusters | identities | noise | duplicates | ARI (chance) "
            "| NMI (chance, by permutation) |",
            "|---|---|---|---|---|---|---|---|"]
  for s in ("audio", "face", "joint"):
    g = lambda k: metrics.get(f"clusters.{s}.{k}")  # noqa: E731
    lines.append(f"| {s} | {_fmt(g('eps'))} | {g('clusters')} | {g('identities')} | {_fmt(g('noise_fraction'))} "
                 f"| {g('duplicates')} | {_fmt(g('ari'))} ({_fmt(g('ari_chance'))}) "
                 f"| {_fmt(g('nmi'))} ({_fmt(g('nmi_chance'))}) |")
  lines += ["", "![DBSCAN](dbscan.png)", "", "*" + FIGURES[1][1] + "*", "", "### Nearest identities", "",
            "Identity centroids of the posterior means, compared by cosine. Own rank 1 is best.", ""]
  for d in ("face_to_voice", "voice_to_face"):
    lines.append(f"- {d}: mean own rank {_fmt(metrics[f'nearest.{d}.own_rank_mean'])} (chance "
                 f"{_fmt(metrics[f'nearest.{d}.own_rank_mean_chance'])}), own identity in top 5 "
                 f"{_fmt(metrics[f'nearest.{d}.own_in_top5'])} (chance {_fmt(metrics[f'nearest.{d}.own_in_top5_chance'])})")
  lines += [""] + _nearest_table(near, names) + [""]
  if metrics.get("model.can_generate") is False:
    lines += ["## Cross generation", "", f"Skipped: the model (kind `{metrics.get('model.kind')}`) cannot generate, "
              "so there are no generated faces or spectra and no coherence scores.", ""]
  else:
    lines += _generation_lines(metrics, notes)
  lines += ["## Dataset", ""] + _dataset_lines(manifest) + [""]
  if "final" in run_info:
    lines += ["## Training summary (final.json)", "", "```json", json.dumps(run_info["final"], indent=1), "```", ""]
  if config is not None:
    cfg = config.to_dict() if hasattr(config, "to_dict") else config
    lines += ["## Config", "", "<details><summary>config.json</summary>", "", "```json",
              json.dumps(cfg, indent=1, default=str), "```", "", "</details>", ""]
  generated = ", generated arrays in `generated.npz`" if metrics.get("model.can_generate") is not False else ""
  lines += [f"All numbers are in `metrics.json`; latents in `latents.npz`{generated}, "
            "t-SNE maps and DBSCAN assignments in `embeddings.npz` (`mmvae.analysis.report.rebuild` recomputes "
            "this report from them without the model)."]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
