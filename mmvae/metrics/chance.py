"""Exact chance levels of ranking metrics: R relevant items among M, ranked uniformly at random."""

import functools

import numpy as np
from scipy import special

# Chance of pairwise metrics (verification AUC and EER, 1:2 matching) does not depend on the gallery.
AUC_CHANCE = 0.5
EER_CHANCE = 0.5
MATCHING_CHANCE = 0.5


def _check(m: int, r: int) -> None:
  if not 1 <= r <= m:
    raise ValueError(f"need 1 <= relevant ({r}) <= gallery size ({m})")


def _log_comb(n, k):
  return special.gammaln(np.asarray(n, np.float64) + 1) - special.gammaln(
      np.asarray(k, np.float64) + 1) - special.gammaln(np.asarray(n, np.float64) - k + 1)


# Few entries: each holds an m-long array (8 MB at a million items); the metrics need one (m, r) at a time.
@functools.lru_cache(maxsize=8)
def first_hit_pmf(m: int, r: int) -> np.ndarray:
  """P(first relevant item at position k), k = 1..m-r+1: C(m-k, r-1) / C(m, r)."""
  _check(m, r)
  k = np.arange(1, m - r + 2, dtype=np.float64)
  pmf = np.exp(_log_comb(m - k, r - 1) - _log_comb(m, r))
  pmf.setflags(write=False)
  return pmf


def expected_inverse_first_hit(m: int, r: int, g: int = 0) -> float:
  """E[1 / (g + position of the first relevant item)] among m items with r relevant, ranked at random."""
  pmf = first_hit_pmf(m, r)
  return float(np.sum(pmf / (g + np.arange(1, pmf.size + 1))))


def miss_probability(m: int, r: int, j) -> np.ndarray:
  """P(no relevant item among the first j positions) = C(m-j, r) / C(m, r); j may be an array."""
  _check(m, r)
  j = np.clip(np.asarray(j, np.float64), 0, m)
  out = np.zeros_like(j)
  ok = m - j >= r
  out[ok] = np.exp(_log_comb(m - j[ok], r) - _log_comb(m, r))
  return out


def harmonic(n) -> np.ndarray:
  """H(n) = sum_{i<=n} 1/i for integer n >= 0 (exact enough in float64 through digamma)."""
  n = np.asarray(n, np.float64)
  return np.where(n > 0, special.digamma(n + 1) + np.euler_gamma, 0.0)


def mrr(m: int, r: int) -> float:
  """E[1 / rank of the first relevant item]."""
  pmf = first_hit_pmf(m, r)
  return float(np.sum(pmf / np.arange(1, pmf.size + 1)))


def recall_at_k(m: int, r: int, k: int) -> float:
  """P(at least one relevant item in the top k)."""
  return float(1.0 - miss_probability(m, r, k))


def average_precision(m: int, r: int) -> float:
  """E[AP] = (1/m) [H(m) + (r-1)/(m-1) (m - H(m))]: E[precision at a relevant item's rank]."""
  _check(m, r)
  h = float(harmonic(m))
  b = (r - 1) / (m - 1) if m > 1 else 0.0
  return (h + b * (m - h)) / m


def average_precision_at_k(m: int, r: int, k: int) -> float:
  """E[AP@k], AP@k = sum of precision at relevant ranks <= k, divided by min(r, k)."""
  _check(m, r)
  p = min(k, m)
  h = float(harmonic(p))
  b = (r - 1) / (m - 1) if m > 1 else 0.0
  return r * (h + b * (p - h)) / m / min(r, k)


def hypergeom_pmf(t: int, r: int, p: int) -> np.ndarray:
  """P(j of the r relevant items among t land in the first p positions), j = 0..min(r, p)."""
  if not (0 <= r <= t and 0 <= p <= t):
    raise ValueError(f"need 0 <= relevant ({r}), drawn ({p}) <= group size ({t})")
  j = np.arange(min(r, p) + 1, dtype=np.float64)
  ok = p - j <= t - r  # the rest of the first p positions must be filled by non-relevant items
  pmf = np.zeros_like(j)
  pmf[ok] = np.exp(_log_comb(r, j[ok]) + _log_comb(t - r, p - j[ok]) - _log_comb(t, p))
  return pmf


def average_precision_top_k(m: int, r: int, k: int) -> float:
  """E[AP over the top k, divided by the relevant items IN the top k] (M-CVS mAP@k; 0 with none there).

  Given j relevant items in the top p = min(k, m) (hypergeometric), they sit uniformly among those p
  positions, so the AP is the full AP of a p-item gallery with j relevant: E = sum_j P(j) E[AP](p, j).
  """
  _check(m, r)
  p = min(k, m)
  pmf = hypergeom_pmf(m, r, p)
  return float(sum(pmf[j] * average_precision(p, j) for j in range(1, pmf.size)))
