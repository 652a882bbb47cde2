"""Latent-space pictures and clusters: t-SNE, DBSCAN with a k-distance knee, nearest identities."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.sparse import csgraph  # noqa: E402
from sklearn import cluster, manifold, metrics, neighbors  # noqa: E402

from mmvae.analysis import retrieval  # noqa: E402

DPI = 120
MAX_LEGEND = 48  # beyond this a legend hides the plot; colours still separate identities
# Rows closer than this share of the set's spread count as copies: float32 encoders can return a
# repeated input with last-bit differences (batch position), which would still land the knee near 0.
DUPLICATE_RTOL = 1e-6


def adapted_perplexity(n: int, perplexity: float = -1.0) -> float:
  """The configured perplexity, or min(30, (n-1)/3) for small sets; always below n as sklearn needs."""
  if n < 3:
    raise ValueError(f"t-SNE needs at least 3 points, got {n}")
  p = perplexity if perplexity > 0 else min(30.0, (n - 1) / 3.0)
  return float(max(1.0, min(p, n - 1.5)))


def tsne(x_NxZ, perplexity: float = -1.0, seed: int = 0) -> np.ndarray:
  """2-d t-SNE embedding (PCA initialisation, seeded)."""
  x = np.asarray(x_NxZ, np.float64)
  p = adapted_perplexity(len(x), perplexity)
  # Exact gradients for small sets: more faithful, and no OpenMP threads to oversubscribe.
  method = "exact" if len(x) <= 300 else "barnes_hut"
  return manifold.TSNE(n_components=2, perplexity=p, init="pca", random_state=seed, method=method,
                       learning_rate="auto").fit_transform(x)


def k_distances(x_NxZ, k: int) -> np.ndarray:
  """Sorted distance of each point to its k-th nearest point, itself counted (DBSCAN's core radius)."""
  k = min(k, len(x_NxZ))
  nn = neighbors.NearestNeighbors(n_neighbors=k).fit(x_NxZ)
  return np.sort(nn.kneighbors(x_NxZ)[0][:, -1])


def distinct(x_NxZ) -> tuple[np.ndarray, int]:
  """(one row per group of copies, in first-seen order; how many rows copy an earlier one)."""
  x = np.asarray(x_NxZ, np.float64)
  if len(x) < 2:
    return x, 0
  spread = float(np.sqrt(np.mean(np.sum((x - x.mean(0)) ** 2, axis=1))))
  if spread == 0.0:
    return x[:1], len(x) - 1
  graph = neighbors.radius_neighbors_graph(x, DUPLICATE_RTOL * spread, include_self=False)
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
  """DBSCAN of every point (eps from the distinct points' knee when eps <= 0) scored with ARI and NMI."""
  x = np.asarray(x_NxZ, np.float64)
  labels = np.asarray(labels)
  rows, duplicates = distinct(x)
  if eps <= 0:
    eps = _knee(k_distances(rows, min_samples))
  # DBSCAN still sees every row, and copies count toward min_samples: a row repeated min_samples
  # times is a core point at any eps. eps from the distinct points keeps the radius at the scale of
  # different neighbours, so clusters have to join different points, not only copies of one.
  found = cluster.DBSCAN(eps=eps, min_samples=min_samples).fit_predict(x)
  nmi = metrics.normalized_mutual_info_score(labels, found)
  # NMI is positive for unrelated labelings of a finite set: its chance is estimated by permutation.
  rng = np.random.default_rng(seed)
  nmi_chance = float(np.mean([metrics.normalized_mutual_info_score(rng.permutation(labels), found)
                              for _ in range(20)]))
  return {"eps": float(eps), "min_samples": int(min_samples), "clusters": int(len(set(found) - {-1})),
          "identities": int(len(set(labels.tolist()))), "noise_fraction": float(np.mean(found == -1)),
          "duplicates": int(duplicates),
          "ari": float(metrics.adjusted_rand_score(labels, found)), "ari_chance": 0.0,
          "nmi": float(nmi), "nmi_chance": nmi_chance, "assignment": found}


def identity_centroids(mu_NxZ, labels):
  """(identity labels, mean latent per identity)."""
  labels = np.asarray(labels)
  ids = np.unique(labels)
  return ids, np.stack([np.asarray(mu_NxZ)[labels == i].mean(0) for i in ids])


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


def _legend(ax, n):
  if n <= MAX_LEGEND:
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, ncol=1 + n // 20)


MARKERS = "o^sDvP*Xh<>"  # one per modality in the joint panel


def plot_embedding(path, points_by_space: dict, labels, names: dict, title: str, joint: dict | None = None) -> None:
  """t-SNE panels, one per space, coloured by identity; `joint` names a panel holding every modality stacked.

  joint: {panel: [modality display label, ...]}: that panel's points are the modalities' points in that
  order (len(labels) each), drawn with one marker per modality.
  """
  labels = np.asarray(labels)
  ids = np.unique(labels)
  if len(ids) <= 20:
    colour = {i: plt.get_cmap("tab20")(k) for k, i in enumerate(ids)}
  else:
    colour = {i: plt.get_cmap("hsv")(k / len(ids)) for k, i in enumerate(ids)}
  fig, axes = plt.subplots(1, len(points_by_space), figsize=(5.2 * len(points_by_space) + 1.5, 4.8))
  axes = np.atleast_1d(axes)
  n = len(labels)
  for ax, (space, pts) in zip(axes, points_by_space.items()):
    parts = (joint or {}).get(space) or [None]
    for k, part in enumerate(parts):
      block = pts[k * n:(k + 1) * n]
      marker = MARKERS[k % len(MARKERS)]
      for i in ids:
        sel = labels == i
        ax.scatter(block[sel, 0], block[sel, 1], color=colour[i], marker=marker, s=14,
                   label=names.get(i, str(i)) if k == 0 else None)
      if part is not None:
        ax.scatter([], [], color="k", marker=marker, label=f"{part} ({marker})")
    ax.set_title(f"{space} latents")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
  _legend(axes[-1], len(ids))
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def plot_dbscan(path, points_by_space: dict, results: dict, kdist: dict) -> None:
  """Top row: t-SNE coloured by DBSCAN cluster (noise grey); bottom row: the distinct points' k-distance and eps."""
  spaces = list(points_by_space)
  fig, axes = plt.subplots(2, len(spaces), figsize=(5.0 * len(spaces), 8.4), squeeze=False)
  for col, space in enumerate(spaces):
    pts, res = points_by_space[space], results[space]
    found = res["assignment"]
    ax = axes[0, col]
    noise = found == -1
    ax.scatter(pts[noise, 0], pts[noise, 1], c="lightgrey", s=10, label="noise")
    ax.scatter(pts[~noise, 0], pts[~noise, 1], c=found[~noise], cmap="tab20", s=14)
    ax.set_title(f"{space}: {res['clusters']} clusters, noise {res['noise_fraction']:.0%}\n"
                 f"ARI {res['ari']:.2f}, NMI {res['nmi']:.2f} (chance {res['nmi_chance']:.2f})")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.legend(fontsize=7)
    ax = axes[1, col]
    ax.plot(np.arange(1, len(kdist[space]) + 1), kdist[space], label="k-distance")
    ax.axhline(res["eps"], color="r", ls="--", label=f"eps = {res['eps']:.3g}")
    ax.set_xlabel("points, sorted")
    ax.set_ylabel(f"distance to {res['min_samples']}-th neighbour")
    ax.set_title(f"{space}: k-distance curve of {len(kdist[space])} distinct points\n"
                 f"({res['duplicates']} duplicates left out)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
