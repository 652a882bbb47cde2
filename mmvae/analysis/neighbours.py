"""Exact Euclidean neighbours from a FAISS index: k nearest, radius graphs, copies; float64 distances.

FAISS searches in float32 with ||x||^2 + ||y||^2 - 2 x.y, so it only proposes candidates: every distance
returned here is recomputed in float64 from the differences, and candidate sets are searched with a margin
wider than float32's error, so the answers are those of a brute-force float64 search.
"""

import os

import faiss
import numpy as np
from scipy import sparse

PAIR_BLOCK = 1 << 18  # candidate pairs per float64 recomputation: bounds memory at ~200 MB for 100-d rows
KNN_MARGIN = 10  # extra neighbours asked of FAISS so float32 reordering cannot drop a true k-th neighbour


def cores() -> int:
  """Cores this process may use (a container's share, not the host's count)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _index(x_NxD) -> tuple[faiss.Index, np.ndarray, float]:
  """(a flat L2 index of the centred rows, the float32 rows, the float32 error bound on a squared distance)."""
  x = np.asarray(x_NxD, np.float64)
  x32 = np.ascontiguousarray(x - x.mean(0), np.float32)  # centring shrinks the norms float32 error scales with
  index = faiss.IndexFlatL2(x32.shape[1])
  index.add(x32)
  sq = float(np.max(np.einsum("ij,ij->i", x32, x32), initial=0.0))
  # Worst-case float32 rounding of ||x||^2 + ||y||^2 - 2 x.y over D terms, with a factor 8 to spare.
  return index, x32, 8.0 * x32.shape[1] * np.finfo(np.float32).eps * 4.0 * sq


def pair_distances(x_NxD, i, j) -> np.ndarray:
  """Float64 Euclidean distances of the row pairs (i[k], j[k]), from the differences, in blocks."""
  x = np.asarray(x_NxD, np.float64)
  out = np.empty(len(i), np.float64)
  for s in range(0, len(i), PAIR_BLOCK):
    d = x[i[s:s + PAIR_BLOCK]] - x[j[s:s + PAIR_BLOCK]]
    out[s:s + PAIR_BLOCK] = np.sqrt(np.einsum("ij,ij->i", d, d))
  return out


def knn(x_NxD, k: int, include_self: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(indices [N, k], float64 distances [N, k]) of each row's k nearest rows, nearest first (ties: lower index)."""
  x = np.asarray(x_NxD, np.float64)
  n = len(x)
  k = min(k, n if include_self else n - 1)
  index, x32, _ = _index(x)
  ask = min(n, k + 1 + KNN_MARGIN)
  with _threads():
    _, cand_NxK = index.search(x32, ask)
  rows = np.repeat(np.arange(n), ask)
  dist_NxK = pair_distances(x, rows, cand_NxK.ravel()).reshape(n, ask)
  if not include_self:  # by index, as sklearn's kneighbors() does: a copy of the row is still a neighbour
    dist_NxK[cand_NxK == np.arange(n)[:, None]] = np.inf
  order = np.lexsort((cand_NxK, dist_NxK), axis=1)[:, :k]
  return np.take_along_axis(cand_NxK, order, 1), np.take_along_axis(dist_NxK, order, 1)


def radius_graph(x_NxD, radius: float) -> sparse.csr_matrix:
  """Sparse [N, N] float64 distances of every pair of distinct rows at most `radius` apart (zeros stored)."""
  x = np.asarray(x_NxD, np.float64)
  n = len(x)
  index, x32, slack = _index(x)
  with _threads():
    lims, _, cand = index.range_search(x32, radius * radius + slack)
  rows = np.repeat(np.arange(n), np.diff(lims.astype(np.int64)))
  keep = rows != cand
  rows, cand = rows[keep], cand[keep].astype(np.int64)
  dist = pair_distances(x, rows, cand)
  keep = dist <= radius  # sklearn's radius neighbours: at most eps, boundary included
  graph = sparse.csr_matrix((dist[keep], (rows[keep], cand[keep])), shape=(n, n))
  graph.sort_indices()
  return graph


def copy_pairs(x_NxD, radius: float) -> tuple[np.ndarray, np.ndarray]:
  """(i, j), i < j: the row pairs at most `radius` apart, for a radius far below the spread of the rows.

  Sorted along one seeded random direction, two rows within `radius` lie within `radius` in that order too,
  so only runs of near-equal projections are compared: O(N log N) instead of the O(N^2) of a full search.
  """
  x = np.asarray(x_NxD, np.float64)
  u = np.random.default_rng(0).normal(size=x.shape[1])
  proj = x @ (u / np.linalg.norm(u))
  order = np.argsort(proj, kind="stable")
  p = proj[order]
  reach = radius + 1e-12 * float(np.max(np.abs(p), initial=0.0))  # projection rounding
  found_i, found_j = [], []
  for step in range(1, len(x)):
    near = np.flatnonzero(p[step:] - p[:-step] <= reach)
    if not len(near):
      break
    a, b = order[near], order[near + step]
    close = pair_distances(x, a, b) <= radius
    found_i.append(np.minimum(a, b)[close])
    found_j.append(np.maximum(a, b)[close])
  if not found_i:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  return np.concatenate(found_i), np.concatenate(found_j)


class _threads:
  """FAISS's OpenMP threads set to this process's cores for the call (FAISS otherwise takes the host's count)."""

  def __enter__(self):
    self.before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(min(self.before, cores()))

  def __exit__(self, *exc):
    faiss.omp_set_num_threads(self.before)
