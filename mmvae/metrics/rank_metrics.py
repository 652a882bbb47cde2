"""Per-query expected ranking metrics from each relevant item's counts, under uniformly random tie-breaking.

Each relevant item (an entry: its query row and score) brings g = items scoring strictly above it, t = items tied
with it (itself included), and rel_above / rel_in, the relevant items among those. That is all the metrics need:
no sorted row. The formulas are those of the full-ranking implementation they replace (see retrieval.py).
"""

import numpy as np

from mmvae.metrics import chance


def _per_row(row, weights, b):
  return np.bincount(row, weights=weights, minlength=b).astype(np.float64)


def _ap_top(row, g, t, rel_above, rel_in, n_rel, k, prec, harm, b):
  """E[AP_top@k]: precision summed at relevant ranks <= k over the number n of relevant items in the top k.

  Groups wholly in the top k (g + t <= k) give a fixed count and their expected precisions `prec`. At most one
  group straddles the cut-off (g < k < g + t); the number j of its relevant items in its first p = k - g
  positions is hypergeometric(t, rel_in, p) and, given j, they sit uniformly among those p, so their expected
  precision sum B_j is the full-group formula with t -> p and rel_in -> j: E = sum_j P(j) (A + B_j) / (n_above + j).
  """
  inside = g + t <= k
  n_in = _per_row(row, inside, b)
  a_sum = _per_row(row, np.where(inside, prec, 0.0), b)
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.where(n_rel > 0, np.where(n_in > 0, a_sum / n_in, 0.0), np.nan)
  straddle = np.flatnonzero((g < k) & (g + t > k))  # a tied group cut by k that holds a relevant item: rare
  _, first = np.unique(row[straddle], return_index=True)  # every entry of that group has the same counts
  for e in straddle[first]:
    i = row[e]
    gi, ti, ri, above = int(g[e]), int(t[e]), int(rel_in[e]), int(rel_above[e])
    p = k - gi
    pmf = chance.hypergeom_pmf(ti, ri, p)
    j = np.arange(pmf.size)
    h = harm[gi + p] - harm[gi]
    bj = (j - 1) / (p - 1) if p > 1 else np.zeros(pmf.size)
    b_sum = j / p * ((above + 1) * h + bj * (p - (gi + 1) * h))
    den = above + j  # every relevant item above the straddling group is in the top k
    with np.errstate(invalid="ignore", divide="ignore"):
      out[i] = float(np.sum(np.where(den > 0, pmf * (a_sum[i] + b_sum) / den, 0.0)))
  return out


def first_hit(row, g, t, rel_in, n_rel, ks):
  """MRR and Recall@k from the first relevant tie group: its position in the group follows chance's law."""
  b = len(n_rel)
  has = n_rel > 0
  g0, t0, r0 = np.zeros(b, np.int64), np.ones(b, np.int64), np.ones(b, np.int64)
  if len(row):
    order = np.lexsort((g, row))  # by row, then fewest items above: the best relevant item first
    first = order[np.searchsorted(row[order], np.flatnonzero(has))]
    g0[has], t0[has], r0[has] = g[first], t[first], rel_in[first]
  rr = np.where(has, 1.0 / (g0 + 1), np.nan)
  hits = {k: np.where(has, (g0 < k).astype(np.float64), np.nan) for k in ks}
  for i in np.flatnonzero(has & (t0 > 1)):  # only tied first groups need the exact law
    ti, ri, gi = int(t0[i]), int(r0[i]), int(g0[i])
    rr[i] = chance.expected_inverse_first_hit(ti, ri, gi)
    for k in ks:
      hits[k][i] = 1.0 - chance.miss_probability(ti, ri, k - gi)
  return rr, hits


def query_metrics(row, g, t, rel_above, rel_in, n_rel, ks, ap_k, harm, matching=()):
  """{metric: per-query array} for one block; `matching`: (name, neg_above, neg_in, n_neg) per 1:2 variant."""
  b = len(n_rel)
  g, t, rel_above, rel_in = (np.asarray(x, np.int64) for x in (g, t, rel_above, rel_in))
  # E[precision at a relevant item] with position p uniform in its group and the other relevant
  # items of the group placed at random: (1/t) sum_p (rel_above + 1 + (p-1)(rel_in-1)/(t-1)) / (g+p).
  bb = np.where(t > 1, (rel_in - 1) / np.maximum(t - 1, 1), 0.0)
  a = rel_above + 1.0

  def expected_precision(p_max):
    h = harm[g + p_max] - harm[g]
    return (a * h + bb * (p_max - (g + 1) * h)) / t

  prec = expected_precision(t)
  with np.errstate(invalid="ignore", divide="ignore"):
    ap = _per_row(row, prec, b) / n_rel
    ap_at = _per_row(row, expected_precision(np.clip(ap_k - g, 0, t)), b) / np.minimum(n_rel, ap_k)
  out = {"ap": ap, f"ap@{ap_k}": ap_at,
         f"ap_top@{ap_k}": _ap_top(row, g, t, rel_above, rel_in, n_rel, ap_k, prec, harm, b)}
  rr, hits = first_hit(row, g, t, rel_in, n_rel, ks)
  out["mrr"] = rr
  out.update({f"recall@{k}": hits[k] for k in ks})
  for name, neg_above, neg_in, n_neg in matching:
    # A relevant item beats the negatives below it and half of those tied with it.
    wins = _per_row(row, (n_neg[row] - neg_above - neg_in) + 0.5 * neg_in, b)
    with np.errstate(invalid="ignore", divide="ignore"):
      out[name] = np.where(n_neg > 0, wins / (n_rel * n_neg), np.nan)
  return out
