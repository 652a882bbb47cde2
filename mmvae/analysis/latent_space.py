"""Latent-space pictures and clusters: t-SNE, DBSCAN with a k-distance knee, nearest identities.

Sets above a cap are shown and clustered through a stratified (by identity), seeded sample; the caller
states it (figure titles, metrics, report).
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from openTSNE import TSNE, affinity, nearest_neighbors  # noqa: E402
from scipy import sparse  # noqa: E402
from scipy.sparse import csgraph  # noqa: E402
from sklearn import cluster, manifold, metrics  # noqa: E402

from mmvae.analysis import neighbours  # noqa: E402
from mmvae.metrics import retrieval  # noqa: E402

DPI = 120
MAX_LEGEND = 48  # beyond this a legend hides the plot; colours still separate identities
EXACT_TSNE = 300  # t-SNE with exact gradients (scikit-learn) up to this many points
FFT_TSNE = 5000  # openTSNE: Barnes-Hut on one thread up to this many points, FFT on every core above
MAX_POINTS = 20000  # t-SNE and DBSCAN points per space beyond which a stratified sample stands in
# Rows closer than this share of the set's spread count as copies: float32 encoders can return a
# repeated input with last-bit differences (batch position), which would still land the knee near 0.
DUPLICATE_RTOL = 1e-6
# A space whose spread is below this share of its scale (at least the prior's unit scale) is collapsed: every
# example encodes to (float32 copies of) one point, and a t-SNE map of it is undefined (NaN) or a map of rounding.
COLLAPSE_RTOL = 1e-5


def stratified_sample(labels, cap: int, seed: int = 0) -> np.ndarray:
  """Sorted indices of `cap` rows, each label's share as in the whole (largest remainder), seeded; all if fewer.

  Every label gets floor or ceil of its proportional count; which rows of a label, and which labels get the
  extra row when quotas tie, is drawn from `seed`.
  """
  labels = np.asarray(labels)
  n = len(labels)
  if n <= cap:
    return np.arange(n)
  _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  quota = counts * (cap / n)
  take = np.floor(quota).astype(np.int64)
  rng = np.random.default_rng(seed)
  extra = np.lexsort((rng.random(len(counts)), take - quota))[:cap - int(take.sum())]
  take[extra] += 1
  grouped = np.lexsort((rng.random(n), inverse))  # rows grouped by label, shuffled within
  rank = np.empty(n, np.int64)
  rank[grouped] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
  return np.flatnonzero(rank < take[inverse])


def adapted_perplexity(n: int, perplexity: float = -1.0) -> float:
  """The configured perplexity, or min(30, (n-1)/3) for small sets; always below n as t-SNE needs."""
  if n < 3:
    raise ValueError(f"t-SNE needs at least 3 points, got {n}")
  p = perplexity if perplexity > 0 else min(30.0, (n - 1) / 3.0)
  return float(max(1.0, min(p, n - 1.5)))


def spread(x_NxZ) -> float:
  """Root mean squared distance of the rows to their mean."""
  x = np.asarray(x_NxZ, np.float64)
  return float(np.sqrt(np.mean(np.sum((x - x.mean(0)) ** 2, axis=1)))) if len(x) else 0.0


def collapsed(x_NxZ) -> bool:
  """Whether the rows are (near-)copies of one point: spread at most COLLAPSE_RTOL of max(1, their RMS norm)."""
  x = np.asarray(x_NxZ, np.float64)
  scale = max(1.0, float(np.sqrt(np.mean(np.sum(x * x, axis=1))))) if len(x) else 1.0
  return spread(x) <= COLLAPSE_RTOL * scale


def tsne(x_NxZ, perplexity: float = -1.0, seed: int = 0) -> np.ndarray:
  """2-d t-SNE embedding (PCA start, seeded): exact gradients up to EXACT_TSNE points, then openTSNE.

  openTSNE takes exact neighbours from the index, Barnes-Hut gradients up to FFT_TSNE points and
  FFT-interpolated ones (linear in N) on every core this process may use above. ValueError for collapsed points.
  """
  x = np.asarray(x_NxZ, np.float64)
  if collapsed(x):  # scikit-learn fails on NaNs of its PCA start; openTSNE returns them without a word
    raise ValueError(f"t-SNE of {len(x)} points that are (near-)copies of one point (spread {spread(x):.3g}) is "
                     "undefined")
  p = adapted_perplexity(len(x), perplexity)
  # Threads pay off only at FFT sizes. Measured on a busy 2-core machine: 400 points 4 s on one thread, 38 s on
  # two (their barriers); 10,000 points Barnes-Hut 107 s on one, FFT 115 s on one, 72 s on two.
  jobs = neighbours.cores() if len(x) > FFT_TSNE else 1
  if len(x) <= EXACT_TSNE:  # more faithful, and a fraction of a second where openTSNE's setup takes seconds
    return manifold.TSNE(n_components=2, perplexity=p, init="pca", random_state=seed, method="exact",
                         learning_rate="auto").fit_transform(x)
  # openTSNE's rule for the neighbour count (3 perplexities), found exactly instead of by its approximate index.
  idx, dist = neighbours.knn(x, min(len(x) - 1, max(1, int(3 * p))), include_self=False)
  aff = affinity.PerplexityBasedNN(perplexity=p, knn_index=nearest_neighbors.PrecomputedNeighbors(idx, dist),
                                   n_jobs=jobs, random_state=seed)
  gradient = "fft" if len(x) > FFT_TSNE else "bh"  # FFT's grid costs more than Barnes-Hut's tree on small sets
  emb = TSNE(n_components=2, initialization="pca", negative_gradient_method=gradient, n_jobs=jobs,
             random_state=seed).fit(x, affinities=aff)
  return np.asarray(emb, np.float64)


def k_distances(x_NxZ, k: int) -> np.ndarray:
  """Sorted distance of each point to its k-th nearest point, itself counted (DBSCAN's core radius)."""
  return np.sort(neighbours.knn(x_NxZ, k, include_self=True)[1][:, -1])


def distinct(x_NxZ) -> tuple[np.ndarray, int]:
  """(one row per group of copies, in first-seen order; how many rows copy an earlier one)."""
  x = np.asarray(x_NxZ, np.float64)
  if len(x) < 2:
    return x, 0
  radius = spread(x)
  if radius == 0.0:
    return x[:1], len(x) - 1
  i, j = neighbours.copy_pairs(x, DUPLICATE_RTOL * radius)
  graph = sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(len(x), len(x)))
  _, group = csgraph.connected_components(graph, directed=False)
  _, first = np.unique(group, return_index=True)
  return x[np.sort(first)], len(x) - len(first)


def _knee(d) -> float:
  """The point of a sorted curve farthest below its end-to-end chord (never 0)."""
  if len(d) < 3 or d[-1] <= d[0]:
    return float(max(d[-1], 1e-6))
  t = np.linspace(0.0, 1.0, len(d))
  y = (d - d[0]) / (d[-1] - d[0])
  eps = float(d[int(np.argmax(t - y))])
  return eps if eps > 0 else float(d[d > 0].min()) if (d > 0).any() else 1e-6


def knee_eps(x_NxZ, min_samples: int) -> float:
  """eps at the knee of the k-distance curve of the distinct points (copies would pull the knee to 0)."""
  return _knee(k_distances(distinct(x_NxZ)[0], min_samples))


def dbscan(x_NxZ, labels, eps: float = -1.0, min_samples: int = 3, seed: int = 0) -> dict:
  """DBSCAN of every point (eps from the distinct points' knee when eps <= 0) scored with ARI and NMI.

  Besides the scores: 'assignment' (cluster per point, -1 noise) and 'k_distances' (the distinct points' curve).
  """
  x = np.asarray(x_NxZ, np.float64)
  labels = np.asarray(labels)
  rows, duplicates = distinct(x)
  curve = k_distances(rows, min_samples)
  if eps <= 0:
    eps = _knee(curve)
  # DBSCAN still sees every row, and copies count toward min_samples: a row repeated min_samples
  # times is a core point at any eps. eps from the distinct points keeps the radius at the scale of
  # different neighbours, so clusters have to join different points, not only copies of one.
  # Neighbourhoods from the index (a sparse radius graph), clustered by sklearn's own DBSCAN: its labels exactly.
  found = cluster.DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(
      neighbours.radius_graph(x, eps))
  nmi = metrics.normalized_mutual_info_score(labels, found)
  # NMI is positive for unrelated labelings of a finite set: its chance is estimated by permutation.
  rng = np.random.default_rng(seed)
  nmi_chance = float(np.mean([metrics.normalized_mutual_info_score(rng.permutation(labels), found)
                              for _ in range(20)]))
  return {"eps": float(eps), "min_samples": int(min_samples), "clusters": int(len(set(found) - {-1})),
          "identities": int(len(set(labels.tolist()))), "noise_fraction": float(np.mean(found == -1)),
          "duplicates": int(duplicates),
          "ari": float(metrics.adjusted_rand_score(labels, found)), "ari_chance": 0.0,
          "nmi": float(nmi), "nmi_chance": nmi_chance, "assignment": found, "k_distances": curve}


def identity_centroids(mu_NxZ, labels):
  """(identity labels, mean latent per identity)."""
  ids, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
  member = sparse.csr_matrix((np.ones(len(inverse)), (inverse, np.arange(len(inverse)))))
  return ids, np.asarray(member @ np.asarray(mu_NxZ, np.float64)) / counts[:, None]


def nearest_identities(query_mu, gallery_mu, labels, top: int = 5, score: str = "cosine") -> dict:
  """For each identity's centroid in the query space, the identities whose gallery centroids lie nearest.

  Returns {'nearest': {identity: [top identities]}, 'own_rank': {identity: rank of itself}} (ties: the
  average of the optimistic and pessimistic rank, as in retrieval).
  """
  ids, q = identity_centroids(query_mu, labels)
  _, g = identity_centroids(gallery_mu, labels)
  s = retrieval.score_matrix(q, g, score)
  order = np.argsort(-s, axis=1, kind="stable")
  own = np.diag(s)
  ranks = (s > own[:, None]).sum(1) + 1 + ((s == own[:, None]).sum(1) - 1) / 2
  return {"nearest": {int(ids[i]): [int(ids[j]) for j in order[i, :top]] for i in range(len(ids))},
          "own_rank": {int(ids[i]): float(ranks[i]) for i in range(len(ids))}}


def shown_caption(shown: int, total: int) -> str:
  """'all 60 points', or '20,000 of 150,000 points, stratified by identity'."""
  if shown >= total:
    return f"all {total:,} points"
  return f"{shown:,} of {total:,} points, stratified by identity"


def ordinal(n: int) -> str:
  """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st."""
  n = int(n)
  suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
  return f"{n}{suffix}"


LABELLED = 9  # colours(n)'s strong hues: beyond, colours alone do not tell identities apart, so each gets its number


def colours(n: int) -> np.ndarray:
  """n RGBA colours, as distinct as the count allows: tab20's strong hues, their light tones, tab20b's, then a map.

  No grey: grey marks DBSCAN's noise.
  """
  hues = [k for k in range(0, 20, 2) if k != 14]  # tab20's greys are 14 and 15
  if n <= 2 * len(hues) + 20:  # the strong hues first, so that few identities are as distinct as tab10's
    tab20, tab20b = plt.get_cmap("tab20"), plt.get_cmap("tab20b")
    pool = [tab20(k) for k in hues] + [tab20(k + 1) for k in hues] + [tab20b(k) for k in range(20)]
    return np.array(pool[:n])
  return plt.get_cmap("turbo")(np.linspace(0.0, 1.0, n))


def _number_clusters(ax, block, lab, ids):
  """Writes identity k's number (k + 1, as in the legend) on its point nearest its median: a name for each cluster."""
  for k, i in enumerate(ids):
    pts = block[lab == i]
    if len(pts):
      at = pts[np.argmin(np.sum((pts - np.median(pts, 0)) ** 2, axis=1))]
      ax.annotate(str(k + 1), at, xytext=(2, 2), textcoords="offset points", fontsize=7, fontweight="bold",
                  path_effects=[patheffects.withStroke(linewidth=2, foreground="white")])


def _legend(ax, n):
  if n <= MAX_LEGEND:
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, ncol=1 + n // 20)


def _marker_size(n: int) -> float:
  """Dots shrink with the count so that 20,000 points still show structure, not one blot."""
  return float(min(14.0, max(1.0, 14.0 * np.sqrt(1000.0 / max(n, 1)))))


MARKERS = "o^sDvP*Xh<>"  # one per modality in the joint panel


def plot_embedding(path, points_by_space: dict, labels, names: dict, title: str, joint: dict | None = None,
                   totals: dict | None = None):
  """t-SNE panels, one per space, coloured by identity; `joint` names a panel holding every modality stacked.

  Beyond LABELLED identities (up to MAX_LEGEND) each identity's points also carry its number, as in the legend.

  labels: one array for every panel, or {panel: labels of its points (of one block, for a joint panel)}.
  joint: {panel: [modality display label, ...]}: that panel's points are the modalities' points in that
  order (len(labels) each), drawn with one marker per modality. totals: {panel: points in the whole space}
  when a panel shows a sample (its title then says so). Returns the (closed) figure, whose artists can still be read.
  """
  per_panel = labels if isinstance(labels, dict) else {space: labels for space in points_by_space}
  ids = np.unique(np.concatenate([np.asarray(v) for v in per_panel.values()]))
  palette = colours(len(ids))
  numbered = LABELLED < len(ids) <= MAX_LEGEND
  fig, axes = plt.subplots(1, len(points_by_space), figsize=(5.2 * len(points_by_space) + 1.5, 4.8))
  axes = np.atleast_1d(axes)
  for ax, (space, pts) in zip(axes, points_by_space.items()):
    lab = np.asarray(per_panel[space])
    n, size = len(lab), _marker_size(len(pts))
    parts = (joint or {}).get(space) or [None]
    for k, part in enumerate(parts):
      block = pts[k * n:(k + 1) * n]
      marker = MARKERS[k % len(MARKERS)]
      # One call per block: a call per identity costs seconds with 1,251 identities.
      ax.scatter(block[:, 0], block[:, 1], c=palette[np.searchsorted(ids, lab)], marker=marker, s=size,
                 linewidths=0)
      if numbered:
        _number_clusters(ax, block, lab, ids)
      if part is not None:
        ax.scatter([], [], color="k", marker=marker, label=f"{part} ({marker})")
    if len(ids) <= MAX_LEGEND and ax is axes[-1]:
      for c, i in enumerate(ids):
        ax.scatter([], [], color=palette[c], s=14, label=f"{c + 1}: {names.get(i, i)}" if numbered
                   else names.get(i, str(i)))
    if part is not None and len(ids) > MAX_LEGEND:  # no identity legend, but the markers still need one
      ax.legend(fontsize=7, loc="upper right")
    total = (totals or {}).get(space, len(pts))
    ax.set_title(f"{space} latents\n{shown_caption(len(pts), total)}", fontsize=10)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
  _legend(axes[-1], len(ids))
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return fig


def plot_dbscan(path, points_by_space: dict, results: dict, kdist: dict, totals: dict | None = None):
  """Top row: t-SNE coloured by DBSCAN cluster (noise grey); bottom row: the distinct points' k-distance and eps.

  Returns the (closed) figure, whose artists can still be read.
  """
  spaces = list(points_by_space)
  fig, axes = plt.subplots(2, len(spaces), figsize=(5.0 * len(spaces), 8.8), squeeze=False)
  for col, space in enumerate(spaces):
    pts, res = points_by_space[space], results[space]
    found = res["assignment"]
    size = _marker_size(len(pts))
    ax = axes[0, col]
    noise = found == -1
    ax.scatter(pts[noise, 0], pts[noise, 1], c="lightgrey", s=size * 0.7, linewidths=0, label="noise")
    ax.scatter(pts[~noise, 0], pts[~noise, 1], c=colours(max(1, res["clusters"]))[found[~noise]], s=size,
               linewidths=0)
    total = (totals or {}).get(space, len(pts))
    ax.set_title(f"{space}: {res['clusters']} clusters, noise {res['noise_fraction']:.0%}\n"
                 f"ARI {res['ari']:.2f}, NMI {res['nmi']:.2f} (chance {res['nmi_chance']:.2f})\n"
                 f"{shown_caption(len(pts), total)}", fontsize=9)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.legend(fontsize=7)
    ax = axes[1, col]
    ax.plot(np.arange(1, len(kdist[space]) + 1), kdist[space], label="k-distance")
    ax.axhline(res["eps"], color="r", ls="--", label=f"eps = {res['eps']:.3g}")
    ax.set_xlabel("distinct points, sorted by that distance")
    ax.xaxis.set_major_locator(plt.MaxNLocator(5, integer=True))  # 5-digit counts would run together
    ax.set_ylabel(f"distance to {ordinal(res['min_samples'])} nearest point\n(itself counted)")
    ax.set_title(f"{space}: k-distance curve of {len(kdist[space]):,} distinct points\n"
                 f"({res['duplicates']} duplicates left out)", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return fig
