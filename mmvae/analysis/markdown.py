"""report.md: every metric beside its chance level, every figure, the config and the dataset, for any modalities."""

import json
import math

from mmvae.analysis import coherence, sections, sync
from mmvae.display import VOICE_FACE, display_labels  # noqa: F401  (how a modality is shown: mmvae/display.py)

TIE_POLICY = (
    "Ties are broken uniformly at random and every ranking metric is its exact expectation over tie "
    "orders (for a single rank: the average of the optimistic and pessimistic rank); a constant score "
    "therefore scores exactly the chance level.")
DEFINITIONS = [
    ("mrr", "MRR: mean of 1 / rank of the first relevant item"),
    ("recall@1", "Recall@K: share of queries with a relevant item in the top K"),
    ("map", "mAP: mean average precision over the whole ranking"),
    ("map@50", "mAP@50: precision summed at relevant ranks <= 50, divided by min(R, 50)"),
    ("map_top@50", "mAP_top@50: the M-CVS paper's mAP@50 (XMedia practice): precision summed at relevant ranks "
     "<= 50, divided by the number of relevant items in the top 50 (0 when there are none)"),
    ("auc", "AUC / EER: verification on (query, gallery) pairs, relevant vs not"),
    ("matching_1v2", "1:2 matching: P(the right item outscores a wrong one), over all pairs of them"),
    ("matching_1v2_gender", "1:2 matching with the wrong item of the query's gender"),
]
METRICS = ["mrr", "recall@1", "recall@5", "recall@10", "map", "map@50", "map_top@50", "auc", "eer", "matching_1v2",
           "matching_1v2_gender"]
# Every ordered pair, the within-modality diagonal included; then the M-CVS paper's table (cross-modal pairs only).
QUERY_TABLES = [("mrr", "MRR"), ("map@50", "mAP@50 over min(R, 50)")]
PAPER_TABLE = ("map_top@50", "mAP@50 as in M-CVS (Tables III and IV): over the relevant items in the top 50")
DASH = "\u2013"
SCORES = [("retrieval", "cosine between posterior means (default)"),
          ("retrieval_euclidean", "negative Euclidean distance between means"),
          ("retrieval_w2", "negative 2-Wasserstein distance between the Gaussian posteriors")]
MAX_NEAREST_ROWS = 40


def _fmt(v) -> str:
  if isinstance(v, bool) or v is None:
    return str(v)
  if isinstance(v, float):
    return "nan" if v != v else f"{v:.4f}"
  return str(v)


def _with_chance(metrics: dict, key: str) -> str:
  v = metrics.get(key)
  return "-" if v is None else f"{_fmt(v)} ({_fmt(metrics.get(f'{key}_chance'))})"


def _with_ci(metrics: dict, key: str) -> str:
  """'value [low, high] (chance)' when the key has a bootstrap interval, else as `_with_chance`."""
  low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
  if metrics.get(key) is None or low is None or high is None:
    return _with_chance(metrics, key)
  return f"{_fmt(metrics[key])} [{_fmt(low)}, {_fmt(high)}] ({_fmt(metrics.get(f'{key}_chance'))})"


CI_UNITS = {"video": ("video", "videos"), "identity": ("identity", "identities"), "example": ("example", "examples")}


def ci_text(metrics: dict, clusters: int | None = None) -> str:
  """The sentence saying what the [low, high] intervals are (retrieval.ci_* of metrics.json)."""
  kind = metrics.get("retrieval.ci_cluster", "example")
  one, many = CI_UNITS.get(kind, (kind, kind))
  n = clusters if clusters is not None else metrics.get("retrieval.ci_clusters")
  level = float(metrics.get("retrieval.ci_level", 0.95))
  why = {"video": " (the examples of one video are not independent)",
         "identity": " (open-set: the examples of one person are not independent)"}.get(kind, "")
  return (f"[low, high]: {level:.0%} confidence interval, a percentile bootstrap over "
          f"{'?' if n is None else f'{int(n):,}'} {many if n != 1 else one}, resampled whole{why}, "
          f"{int(metrics.get('retrieval.ci_resamples', 2000)):,} resamples.")


def _esc(text) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _matrix(metrics: dict, names: list, display: dict, key_of, corner: str, cell=_with_chance) -> list[str]:
  """A table with one row per query (source) modality and one column per gallery (target) modality."""
  lines = [f"| {corner} | " + " | ".join(display[g] for g in names) + " |", "|---|" + "---|" * len(names)]
  for q in names:
    lines.append(f"| {display[q]} | " + " | ".join(cell(metrics, key_of(q, g)) for g in names) + " |")
  return lines


def _mean(values) -> float:
  """Mean of the finite values (NaN when there are none): a missing pair does not drag an average to NaN."""
  kept = [v for v in values if v is not None and math.isfinite(v)]
  return sum(kept) / len(kept) if kept else float("nan")


def pair_table(metrics: dict, names, key: str, prefix: str = "retrieval") -> tuple[list, list, float]:
  """`<prefix>.<q>_to_<g>.<key>` as the M-CVS paper lays it out: (rows, row_avg, overall).

  rows[i][j]: query names[i], retrieved names[j]; NaN on the diagonal (within one modality is no cross-modal
  pair) and where the key is missing. row_avg[i]: mean over row i's cross-modal cells; overall: mean over every
  ordered cross-modal pair (not the mean of row_avg when some cells are missing).
  """
  names = list(names)
  rows = [[float("nan") if q == g else float(metrics.get(f"{prefix}.{q}_to_{g}.{key}", float("nan")))
           for g in names] for q in names]
  cross = [[v for j, v in enumerate(row) if j != i] for i, row in enumerate(rows)]
  return rows, [_mean(c) for c in cross], _mean([v for c in cross for v in c])


def _pair_lines(metrics: dict, names: list, display: dict, key: str, title: str, prefix="retrieval") -> list[str]:
  """A pair_table in markdown: '–' on the diagonal, an Average column and row, the chance level below."""
  rows, row_avg, overall = pair_table(metrics, names, key, prefix)
  cols = [_mean(rows[i][j] for i in range(len(names)) if i != j) for j in range(len(names))]
  cell = lambda v: DASH if v != v else f"{v:.4f}"  # noqa: E731
  lines = [f"**{title}**", "", "| query \\ retrieved | " + " | ".join(display[g] for g in names) + " | Average |",
           "|---|" + "---|" * (len(names) + 1)]
  lines += [f"| {display[q]} | " + " | ".join(cell(v) for v in row) + f" | {cell(avg)} |"
            for q, row, avg in zip(names, rows, row_avg)]
  lines.append("| Average | " + " | ".join(cell(v) for v in cols) + f" | {cell(overall)} |")
  chance_rows, _, chance_all = pair_table(metrics, names, f"{key}_chance", prefix)
  spread = [v for row in chance_rows for v in row if v == v]
  lines += ["", f"Chance (a uniformly random ranking of the same gallery), mean over the cross-modal pairs: "
            f"{_fmt(chance_all)}" + (f" (from {_fmt(min(spread))} to {_fmt(max(spread))})"
                                    if spread and max(spread) - min(spread) > 5e-5 else "") + ".", ""]
  return lines


def _retrieval_lines(metrics: dict, names: list, display: dict) -> list[str]:
  lines = ["### Query by retrieval", "",
           "Cosine score. Rows: query modality; columns: gallery modality; each cell: value (chance). "
           "The diagonal is retrieval within one modality (the query left out of the gallery), for reference.", ""]
  for metric, title in QUERY_TABLES:
    lines += [f"**{title}**", ""]
    lines += _matrix(metrics, names, display, lambda q, g, m=metric: f"retrieval.{q}_to_{g}.{m}", "query \\ gallery")
    lines.append("")
  if len(names) > 1 and any(f"retrieval.{q}_to_{g}.{PAPER_TABLE[0]}" in metrics for q in names for g in names):
    lines += ["Cross-modal pairs only, laid out like the M-CVS paper: 'Average' is the mean over a row's "
              "(column's) cells, the corner the mean over every ordered pair.", ""]
    lines += _pair_lines(metrics, names, display, *PAPER_TABLE)
  pairs = [(q, g) for q in names for g in names if q != g] + [(q, q) for q in names]  # across, then within
  for prefix, desc in SCORES:
    present = [(q, g) for q, g in pairs if f"{prefix}.{q}_to_{g}.mrr" in metrics]
    if not present:
      continue
    shown = [m for m in METRICS if any(f"{prefix}.{q}_to_{g}.{m}" in metrics for q, g in present)]
    with_ci = any(f"{prefix}.{q}_to_{g}.{m}_ci_low" in metrics for q, g in present for m in shown)
    lines += [f"### Score: {desc}", "", "Each cell: value (chance)." if not with_ci else
              f"Each cell: value (chance); MRR, recall@1 and 1:2 matching: value [low, high] (chance). "
              f"{ci_text(metrics)}", "",
              "| query -> gallery | " + " | ".join(shown) + " | queries |", "|---|" + "---|" * (len(shown) + 1)]
    for q, g in present:
      cells = [_with_ci(metrics, f"{prefix}.{q}_to_{g}.{m}") for m in shown]
      lines.append(f"| {display[q]} -> {display[g]} | " + " | ".join(cells)
                   + f" | {metrics.get(f'{prefix}.{q}_to_{g}.queries', '-')} |")
    q, g = present[0]
    pairs_used = metrics.get(f"{prefix}.{q}_to_{g}.verification_pairs")
    sampled = metrics.get(f"{prefix}.{q}_to_{g}.verification_pairs_sampled")
    lines += ["", f"Verification used {pairs_used} pairs per direction"
              + (" (a seeded uniform sample)." if sampled else " (every pair)."), ""]
  return lines


def _nearest_lines(metrics: dict, near: dict, id_names: dict, names: list, display: dict) -> list[str]:
  lines = ["### Nearest identities", "",
           "Identity centroids of the posterior means, compared by cosine. Own rank 1 is best.", ""]
  for (q, g) in near:
    d = f"nearest.{q}_to_{g}"
    lines.append(f"- {display[q]} -> {display[g]}: mean own rank {_fmt(metrics[f'{d}.own_rank_mean'])} (chance "
                 f"{_fmt(metrics[f'{d}.own_rank_mean_chance'])}), own identity in top 5 "
                 f"{_fmt(metrics[f'{d}.own_in_top5'])} (chance {_fmt(metrics[f'{d}.own_in_top5_chance'])})")
  lines.append("")
  for i, a in enumerate(names):  # one table per unordered pair, both directions
    for b in names[i + 1:]:
      if (a, b) not in near or (b, a) not in near:
        continue
      ab, ba = near[(a, b)], near[(b, a)]
      lines += [f"| identity | own {display[b]} rank (from {display[a]}) | nearest {display[b]} to the {display[a]} "
                f"| own {display[a]} rank (from {display[b]}) | nearest {display[a]} to the {display[b]} |",
                "|---|---|---|---|---|"]
      for k, ident in enumerate(sorted(ab["nearest"])):
        if k >= MAX_NEAREST_ROWS:
          lines.append(f"| ... {len(ab['nearest']) - MAX_NEAREST_ROWS} more identities | | | | |")
          break
        to_b = ", ".join(str(id_names.get(j, j)) for j in ab["nearest"][ident])
        to_a = ", ".join(str(id_names.get(j, j)) for j in ba["nearest"][ident])
        lines.append(f"| {_esc(id_names.get(ident, ident))} | {ab['own_rank'][ident]:g} | {_esc(to_b)} | "
                     f"{ba['own_rank'][ident]:g} | {_esc(to_a)} |")
      lines.append("")
  return lines


CLASSIFIERS = {  # coherence.classifier_kind -> what report.md calls it
    "rbf_svm": f"an RBF support-vector machine (kernel width from the features' variance, at most "
               f"{coherence.SVM_MAX_EXAMPLES:,} training examples: a seeded subsample)",
    "softmax": "a softmax (multinomial logistic) regression on standardised features, trained with Adam in "
               f"JAX/Optax (projected on their leading {coherence.SOFTMAX_DIM} principal components when wider, at "
               f"most {coherence.MAX_TRAIN_EXAMPLES:,} training examples: a seeded subsample)",
}


def classifiers_used(metrics: dict, names) -> dict:
  """{classifier kind: ['<modality>' or '<modality>.<attribute>', ...]} as coherence recorded them.

  A report whose metrics predate `coherence.<g>.classifier` gets the kind from the class count, by the same rule.
  """
  used = {}
  for key in sorted(metrics):
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "coherence" or parts[1] not in names:
      continue
    g, leaf = parts[1], parts[2]
    if leaf.endswith("classifier"):
      kind = metrics[key]
    elif leaf.endswith("classes") and f"coherence.{g}.{leaf[:-len('classes')]}classifier" not in metrics:
      kind = "rbf_svm" if coherence.use_svm(int(metrics[key])) else "softmax"
    else:
      continue
    target = leaf[:-len("classifier" if leaf.endswith("classifier") else "classes")].rstrip("_")
    used.setdefault(kind, []).append(f"{g}.{target}" if target else g)
  return used


def classifier_text(metrics: dict, names, display: dict) -> str:
  """The sentence of report.md naming the classifier(s) coherence actually fitted, and for what."""
  used = classifiers_used(metrics, names)
  if not used:
    return "No classifier was fitted."
  if len(used) == 1:
    (kind, targets), = used.items()
    return f"Classifier used: {CLASSIFIERS.get(kind, kind)}, for every modality" + (
        " and identity attribute." if any("." in t for t in targets) else ".")

  def what(t):
    g, _, attr = t.partition(".")
    classes = metrics.get(f"coherence.{t}_classes" if attr else f"coherence.{g}.classes", "?")
    return f"the {display.get(g, g)} {attr or 'label'} ({classes} classes)"

  return (f"Classifiers used (the support-vector machine up to {coherence.SVM_MAX_CLASSES} classes, the softmax "
          "regression above): " + "; ".join(f"{CLASSIFIERS.get(k, k)} for {', '.join(what(t) for t in ts)}"
                                            for k, ts in sorted(used.items())) + ".")


def _generation_lines(metrics: dict, names: list, display: dict, figures: list, texts: dict, notes: list) -> list:
  """The cross-generation figures, decoded texts and the coherence tables."""
  lines = ["## Cross generation", ""]
  for path, caption in figures:
    lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
  for g, table in texts.items():
    sources = table["sources"]
    total = metrics.get("identities")
    shown = (f"; {len(table['rows'])} of {total} identities shown" if total and len(table["rows"]) < total else "")
    lines += [f"Decoded {display[g]} (one example per identity{shown}):", "",
              f"| identity | real {display[g]} | " + " | ".join(f"from {display[q]}" for q in sources) + " |",
              "|---|---|" + "---|" * len(sources)]
    lines += [f"| {_esc(ident)} | {_esc(truth)} | " + " | ".join(_esc(t) for t in gens) + " |"
              for ident, truth, gens in table["rows"]]
    lines.append("")
  lines += ["### Coherence", "",
            "Each modality has its own classifier of the label, trained on REAL training data of that modality "
            f"only. {classifier_text(metrics, names, display)} Cross coherence source -> target: the target "
            "classifier's accuracy on the target decoded from the source's posterior mean of each test example. "
            "Chance = sum_c P(pred = c) P(true = c): what the same predictions score if independent of the truth.",
            ""]
  if any(f"coherence.{q}_to_{g}.accuracy" in metrics for q in names for g in names):
    lines += _matrix(metrics, names, display,
                     lambda q, g: f"coherence.{q}_to_{g}.accuracy" if q != g else f"coherence.real_{g}.accuracy",
                     "source \\ target", cell=_with_ci)
    if any(f"coherence.{q}_to_{g}.accuracy_ci_low" in metrics for q in names for g in names):
      lines += ["", "Each cell: accuracy [low, high] (chance). "
                + ci_text(metrics, metrics.get("coherence.ci_clusters"))]
    lines += ["", "The diagonal is each classifier's accuracy on real test data of its own modality: a reference "
              "for its column, not a ceiling (generated data can score above it: decoded examples can be cleaner "
              "than real ones).", ""]
  attrs = sorted({k.split(".")[2][:-len("_accuracy")] for k in metrics if k.startswith("coherence.real_")
                  and k.endswith("_accuracy") and k.split(".")[2] != "accuracy"})
  for g in names:  # identity attributes, scored on image modalities: one table per target
    scored = [a for a in attrs if f"coherence.real_{g}.{a}_accuracy" in metrics]
    if not scored:
      continue
    sources = [q for q in names if q != g]
    lines += [f"Identity attributes (each person's, from the dataset's identity records, whichever modality they "
              f"describe) predicted from {display[g]}: accuracy"
              + (" [low, high]" if any(k.endswith("accuracy_ci_low") for k in metrics) else "") + " (chance).", "",
              f"| attribute | classes | real {display[g]} | "
              + " | ".join(f"{display[q]} -> {display[g]}" for q in sources) + " |",
              "|---|---|---|" + "---|" * len(sources)]
    for a in scored:
      cells = [_with_ci(metrics, f"coherence.{q}_to_{g}.{a}_accuracy") for q in sources]
      lines.append(f"| {a} | {metrics.get(f'coherence.{g}.{a}_classes')} | "
                   f"{_with_ci(metrics, f'coherence.real_{g}.{a}_accuracy')} | " + " | ".join(cells) + " |")
    lines.append("")
  if "coherence.joint.accuracy" in metrics:
    lines += [f"Joint coherence: {_with_chance(metrics, 'coherence.joint.accuracy')} of "
              f"{metrics['coherence.joint.samples']} samples z ~ N(0, I), each decoded into every modality, get "
              "the same class from every classifier. Chance = sum_c prod_m P_m(c), P_m the share of samples "
              "modality m's classifier puts in class c: the agreement of independent predictions.", ""]
  return lines + [f"- {n}" for n in notes] + [""]


def _likelihood_lines(metrics: dict, names: list, display: dict, note: str | None) -> list[str]:
  lines = ["## Test-set likelihood", ""]
  key = next((k for k in metrics if k.startswith("likelihood.iwae_k")), None)
  if key is None:
    return lines + [f"Not estimated: {note or 'no likelihood.npz (run mmvae analyze)'}.", ""]
  k = metrics["likelihood.samples"]
  lines += [f"log p(x) ~= {_fmt(metrics[key])} nats per example (importance-weighted with K = {k} samples of the "
            "model's joint posterior; a lower bound in expectation, tighter with more samples; images scored on "
            f"their first frame; {metrics['likelihood.examples']} examples).", "",
            "| modality | E_q[log p(x_m given z)] (nats) |", "|---|---|"]
  lines += [f"| {display[m]} | {_fmt(metrics.get(f'likelihood.expected_log_lik.{m}'))} |" for m in names]
  return lines + [""]


def identity_attributes(manifest: dict) -> list[str]:
  """The attributes the manifest's identity records give (gender, ...), known for at least one identity, in order."""
  seen = {}
  for record in manifest.get("identities", []):
    for key, value in record.items():
      if key not in ("identity", "name") and str(value or "").strip():
        seen.setdefault(key, None)
  return list(seen)


def _dataset_lines(manifest: dict, specs: dict) -> list[str]:
  splits = ", ".join(f"{k}: {v.get('examples')}" for k, v in manifest.get("splits", {}).items())
  return [f"- corpus: {manifest.get('corpus')} (prepared with config {manifest.get('config')!r})",
          f"- splits (examples): {splits}", f"- identities: {len(manifest.get('identities', []))}",
          "- modalities: " + ", ".join(f"{n} ({m.kind} {list(m.shape)} {m.dtype})" for n, m in specs.items()),
          f"- relevant items: {manifest.get('relevance') or 'same identity'}",
          f"- audio normalisation: {'dataset per-bin mean/std' if manifest.get('audio_normalisation') else 'none'}",
          "- identity attributes (per person, in the identity records): "
          + (", ".join(identity_attributes(manifest)) or "none"),
          f"- skipped files at preparation: {len(manifest.get('skipped', []))}"]


def _points_shown(shown, total) -> str:
  """'20,000 of 150,000 (stratified)', 'all 60', or '?' for a report written before points were recorded."""
  if shown is None or total is None:
    return "?"
  return f"all {total:,}" if shown >= total else f"{shown:,} of {total:,} (stratified)"


def retrieval_markdown(ctx, metrics: dict) -> list[str]:
  """The retrieval section: what a query and the gallery are, the tie policy, the definitions, the tables."""
  relevance = ctx.manifest.get("relevance") or "same identity"
  lines = ["## Retrieval", "", "Query: one test example's latent of one modality; gallery: every test example's "
           f"latent of a modality (within a modality: every other example); relevant: {relevance}.",
           "", f"Tie policy: {TIE_POLICY}", ""]
  lines += [f"- {text}" for _, text in DEFINITIONS] + [""]
  return lines + _retrieval_lines(metrics, ctx.names, ctx.display)


def sync_markdown(ctx, metrics: dict) -> list[str]:
  """The temporal section (empty without sync metrics)."""
  return sync.lines(metrics, ctx.display)


def latent_markdown(ctx, metrics: dict) -> list[str]:
  """The latent-space section: collapsed spaces, the t-SNE map, the DBSCAN table and figure, nearest identities."""
  names, display = ctx.names, ctx.display
  joint = ", ".join(f"{display[n]}" for n in names)
  collapsed = [s for s in names if metrics.get(f"clusters.{s}.collapsed")]
  mapped = not metrics.get("clusters.joint.collapsed")  # the joint space is mapped unless every modality collapsed
  lines = ["## Latent space", ""]
  if collapsed:
    spreads = ", ".join(format(metrics.get(f"clusters.{s}.spread", 0.0), ".3g") for s in collapsed)
    lines += [f"**Collapsed:** the {', '.join(display[s] for s in collapsed)} latents have (near-)zero variance "
              f"(spread {spreads}): every example "
              "encodes to one point, so they have no t-SNE map and DBSCAN cannot separate them; as a retrieval gallery "
              "every item ties (exactly chance), and as queries every example gets the same ranking.", ""]
  lines += ["![t-SNE](tsne.png)", "",
            f"*t-SNE of each modality's posterior means and of all of them together ({joint}: one marker per "
            "modality); colour: identity*", ""] if mapped else []
  sampled = [s for s in names + ["joint"] if (metrics.get(f"clusters.{s}.points_shown") or 0)
             < (metrics.get(f"clusters.{s}.points") or 0)]
  if sampled:
    lines += [f"Spaces of more than {metrics['clusters.max_points']:,} points are mapped and clustered through a "
              f"sample stratified by identity (seeded, seed {metrics.get('clusters.sample_seed')}): every identity "
              "keeps its share, to within one point; a modality's sample holds the same examples in every "
              "modality, and the joint space's holds every modality's latent of each of its examples. All the "
              "numbers below are of the points shown.", ""]
  lines += ["DBSCAN clusters every point shown; eps is read at the knee of the k-distance curve of the distinct "
            "points, since copies (e.g. face latents of utterances that share their video's frames) would put "
            "the knee at 0. Duplicates: points equal (to float precision) to an earlier one; they still count "
            "toward min_samples.", "",
            "| space | points shown | eps | clusters | identities | noise | duplicates | ARI (chance) "
            "| NMI (chance, by permutation) |",
            "|---|---|---|---|---|---|---|---|---|"]
  for s in names + ["joint"]:
    g = lambda k: metrics.get(f"clusters.{s}.{k}")  # noqa: E731
    lines.append(f"| {display.get(s, s)} | {_points_shown(g('points_shown'), g('points'))} "
                 f"| {_fmt(g('eps'))} | {g('clusters')} | {g('identities')} "
                 f"| {_fmt(g('noise_fraction'))} | {g('duplicates')} | {_fmt(g('ari'))} ({_fmt(g('ari_chance'))}) "
                 f"| {_fmt(g('nmi'))} ({_fmt(g('nmi_chance'))}) |")
  lines += ["", "![DBSCAN](dbscan.png)", "",
            "*DBSCAN clusters on the t-SNE maps, and the k-distance curves that chose eps*", ""] if mapped else [""]
  return lines + _nearest_lines(metrics, ctx.state.get("near") or {}, ctx.id_names, names, display)


def generation_markdown(ctx, metrics: dict) -> list[str]:
  """The cross-generation section (coherence, figures, texts), or why it was skipped."""
  if metrics.get("model.can_generate") is False:
    return ["## Cross generation", "", f"Skipped: the model (kind `{metrics.get('model.kind')}`) cannot generate, "
            "so there is no generated data, no coherence score and no likelihood.", ""]
  st = ctx.state
  return _generation_lines(metrics, ctx.names, ctx.display, list(st.get("figures") or ()), st.get("texts") or {},
                           list(st.get("notes") or ()))


def likelihood_markdown(ctx, metrics: dict) -> list[str]:
  """The test-set likelihood section (none for a model that cannot generate)."""
  if metrics.get("model.can_generate") is False:
    return []
  return _likelihood_lines(metrics, ctx.names, ctx.display, ctx.state.get("likelihood_note"))


def write_report(path, metrics: dict, specs: dict, manifest: dict, *, near: dict | None = None,
                 id_names: dict | None = None, config=None, run_info: dict | None = None, figures=(), texts=None,
                 notes=(), likelihood_note=None, ctx=None) -> None:
  """Writes report.md: the run, every analysis section's part (mmvae/analysis/sections.py), dataset, config.

  ctx: the sections' Context of the analysis; without one, it is made of the other arguments.
  """
  if ctx is None:
    ctx = sections.Context(specs, manifest, id_names or {}, config=config, run_info=run_info or {},
                           state={"near": near or {}, "figures": list(figures), "texts": texts or {},
                                  "notes": list(notes), "likelihood_note": likelihood_note})
  run_info, config = ctx.run_info or {}, ctx.config
  names = list(specs)
  display = display_labels(names)
  lines = ["# mmvae analysis report", "",
           f"Run `{run_info.get('workdir', '?')}`, checkpoint: {run_info.get('checkpoint', '?')}, dataset "
           f"`{run_info.get('data_dir', '?')}` (fingerprint {str(manifest.get('fingerprint'))[:12]}), "
           f"split `{run_info.get('split', '?')}`: {metrics['examples']} examples of {metrics['identities']} "
           f"identities; modalities {', '.join(display[n] for n in names)}. Every number is shown with its chance "
           "level for this gallery.", ""]
  lines += sections.markdown(ctx, metrics)
  lines += ["## Dataset", ""] + _dataset_lines(manifest, specs) + [""]
  if "final" in run_info:
    lines += ["## Training summary (final.json)", "", "```json", json.dumps(run_info["final"], indent=1), "```", ""]
  if config is not None:
    cfg = config.to_dict() if hasattr(config, "to_dict") else config
    lines += ["## Config", "", "<details><summary>config.json</summary>", "", "```json",
              json.dumps(cfg, indent=1, default=str), "```", "", "</details>", ""]
  generated = (", generated arrays in `generated.npz`, per-example likelihoods in `likelihood.npz`"
               if metrics.get("model.can_generate") is not False else "")
  lines += [f"All numbers are in `metrics.json`; latents in `latents.npz`{generated}, per-query retrieval values "
            "(and each query's bootstrap cluster) in `queries.npz`, "
            "t-SNE maps and DBSCAN assignments in `embeddings.npz` (`mmvae.analysis.report.rebuild` recomputes "
            "this report from them without the model)."]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
