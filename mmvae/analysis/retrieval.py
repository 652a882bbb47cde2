"""Cross-modal retrieval metrics with exact chance levels, computed in query chunks.

Tie policy: every metric is its EXPECTED value under uniformly random tie-breaking (the ranking
is a random order among items with equal scores). For the rank itself this is the average of the
optimistic and pessimistic rank; MRR, Recall@K, AP, AP@K and AP_top@K are averaged over all tie orders
exactly (closed forms below), so a constant score gives exactly the chance level.

Definitions (per query, then averaged over queries with at least one relevant item):
- MRR: 1 / rank of the first relevant item.
- Recall@K: 1 if any relevant item is in the top K (the hit rate used by cross-modal papers).
- mAP: average precision over the whole ranking (mean of precision at each relevant item's rank).
- mAP@K: sum of precision at relevant ranks <= K divided by min(R, K).
- mAP_top@K (`map_top@K`, the M-CVS paper's mAP@50 after XMedia practice): AP = (1/n) sum_{k<=K} P(k) rel(k)
  with n the number of relevant items IN the top K (AP = 0 when n = 0). Under ties n is random too, so its
  expectation mixes over the hypergeometric count of relevant items the cut-off keeps from the tied group.
- 1:2 matching: probability that a relevant item outscores a non-relevant one (ties count 1/2),
  averaged over ALL (relevant, non-relevant) pairs of the query: exact, no random gallery choice.
  The gender-constrained variant only uses non-relevant items of the query's gender.
The query is never removed from the gallery array (that shifts labels); with exclude_self its
score is set to -inf and it is neither relevant nor a negative, and the gallery size drops by one.
"""

import numpy as np

from mmvae import progress as progress_lib
from mmvae.analysis import chance

SCORES = ("cosine", "euclidean", "w2")
DEFAULT_KS = (1, 5, 10)
DEFAULT_AP_K = 50


def features(mu_NxZ, logvar_NxZ=None, score: str = "cosine") -> np.ndarray:
  """What the score compares: means, or [mu, sigma] for W2 (W2^2 is their squared Euclidean distance)."""
  if score not in SCORES:
    raise ValueError(f"unknown retrieval score {score!r}; use one of {SCORES}")
  mu_NxZ = np.asarray(mu_NxZ, np.float64)
  if score != "w2":
    return mu_NxZ
  if logvar_NxZ is None:
    raise ValueError("score 'w2' needs the posteriors' log-variances")
  return np.concatenate([mu_NxZ, np.exp(0.5 * np.asarray(logvar_NxZ, np.float64))], axis=1)


def score_matrix(query_QxD, gallery_MxD, score: str = "cosine") -> np.ndarray:
  """Similarity (higher = closer): cosine, or minus the Euclidean / W2 distance of `features`."""
  q, g = np.asarray(query_QxD, np.float64), np.asarray(gallery_MxD, np.float64)
  if score == "cosine":
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return qn @ gn.T
  if score in ("euclidean", "w2"):
    d2 = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * q @ g.T
    return -np.sqrt(np.maximum(d2, 0.0))
  raise ValueError(f"unknown retrieval score {score!r}; use one of {SCORES}")


def _group_stats(s_CxM):
  """For rows sorted descending: start (= items strictly above) and size of each item's tie group."""
  c, m = s_CxM.shape
  idx = np.broadcast_to(np.arange(m), (c, m))
  new = np.ones((c, m), bool)
  new[:, 1:] = s_CxM[:, 1:] != s_CxM[:, :-1]
  start = np.maximum.accumulate(np.where(new, idx, 0), axis=1)
  last = np.ones((c, m), bool)
  last[:, :-1] = new[:, 1:]
  end = np.minimum.accumulate(np.where(last, idx, m)[:, ::-1], axis=1)[:, ::-1]
  return start, end


def _in_groups(mask_CxM, start, end):
  """Count of mask items above each item's group, and inside it."""
  cum = np.cumsum(mask_CxM, axis=1)
  excl = cum - mask_CxM
  above = np.take_along_axis(excl, start, axis=1)
  inside = np.take_along_axis(cum, end, axis=1) - above
  return above, inside


def _ap_top(rel, g, t, rel_above, rel_in, n_rel, k, prec_full, harm):
  """E[AP_top@k]: precision summed at relevant ranks <= k over the number n of relevant items in the top k.

  Groups wholly in the top k (g + t <= k) give a fixed count and their expected precisions `prec_full`. At
  most one group straddles the cut-off (g < k < g + t); the number j of its relevant items in its first
  p = k - g positions is hypergeometric(t, rel_in, p) and, given j, they sit uniformly among those p, so their
  expected precision sum B_j is the full-group formula with t -> p and rel_in -> j. The groups above are
  ordered independently of it: E = sum_j P(j) (A + B_j) / (n_above + j), 0 where the denominator is 0.
  """
  inside = rel & (g + t <= k)
  n_in = inside.sum(1)
  a_sum = np.where(inside, prec_full, 0.0).sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.where(n_rel > 0, np.where(n_in > 0, a_sum / n_in, 0.0), np.nan)
  straddle = rel & (g < k) & (g + t > k)  # a tied group cut by k that holds a relevant item: rare
  for i in np.flatnonzero(straddle.any(1)):
    c = int(np.argmax(straddle[i]))
    gi, ti, ri, above = int(g[i, c]), int(t[i, c]), int(rel_in[i, c]), int(rel_above[i, c])
    p = k - gi
    pmf = chance.hypergeom_pmf(ti, ri, p)
    j = np.arange(pmf.size)
    h = harm[gi + p] - harm[gi]
    b = (j - 1) / (p - 1) if p > 1 else np.zeros(pmf.size)
    b_sum = j / p * ((above + 1) * h + b * (p - (gi + 1) * h))
    den = above + j  # every relevant item above the straddling group is in the top k
    with np.errstate(invalid="ignore", divide="ignore"):
      out[i] = float(np.sum(np.where(den > 0, pmf * (a_sum[i] + b_sum) / den, 0.0)))
  return out


def _chunk_metrics(s_CxM, rel_CxM, neg_CxM, negg_CxM, ks, ap_k, harm):
  """Per-query expected metrics under random tie-breaking for one chunk of score rows."""
  order = np.argsort(-s_CxM, axis=1, kind="stable")
  s = np.take_along_axis(s_CxM, order, axis=1)
  rel = np.take_along_axis(rel_CxM, order, axis=1)
  start, end = _group_stats(s)
  g, t = start, end - start + 1
  rel_above, rel_in = _in_groups(rel, start, end)
  n_rel = rel.sum(1)
  # E[precision at a relevant item] with position p uniform in its group and the other relevant
  # items of the group placed at random: (1/t) sum_p (rel_above + 1 + (p-1)(rel_in-1)/(t-1)) / (g+p).
  b = np.where(t > 1, (rel_in - 1) / np.maximum(t - 1, 1), 0.0)
  a = rel_above + 1.0

  def expected_precision(p_max):
    h = harm[g + p_max] - harm[g]
    return np.where(rel, (a * h + b * (p_max - (g + 1) * h)) / t, 0.0)

  prec = expected_precision(t)
  with np.errstate(invalid="ignore", divide="ignore"):
    ap = prec.sum(1) / n_rel
    ap_at = expected_precision(np.clip(ap_k - g, 0, t)).sum(1) / np.minimum(n_rel, ap_k)
  out = {"ap": ap, f"ap@{ap_k}": ap_at,
         f"ap_top@{ap_k}": _ap_top(rel, g, t, rel_above, rel_in, n_rel, ap_k, prec, harm)}

  # First relevant group: its position in the group follows the chance law of (t, rel_in).
  first = np.argmax(rel, axis=1)[:, None]
  g0, t0, r0 = (np.take_along_axis(x, first, axis=1)[:, 0] for x in (g, t, rel_in))
  has = n_rel > 0
  rr = np.where(has, 1.0 / (g0 + 1), np.nan)
  hits = {k: np.where(has, (g0 < k).astype(np.float64), np.nan) for k in ks}
  for i in np.flatnonzero(has & (t0 > 1)):  # only tied first groups need the exact law
    pmf = chance.first_hit_pmf(int(t0[i]), int(r0[i]))
    rr[i] = float(np.sum(pmf / (g0[i] + np.arange(1, pmf.size + 1))))
    for k in ks:
      hits[k][i] = 1.0 - chance.miss_probability(int(t0[i]), int(r0[i]), k - g0[i])
  out["mrr"] = rr
  out.update({f"recall@{k}": hits[k] for k in ks})

  for name, neg_mask in (("matching_1v2", neg_CxM), ("matching_1v2_gender", negg_CxM)):
    if neg_mask is None:
      continue
    neg = np.take_along_axis(neg_mask, order, axis=1)
    n_neg = neg.sum(1)
    neg_above, neg_in = _in_groups(neg, start, end)
    wins = np.where(rel, (n_neg[:, None] - neg_above - neg_in) + 0.5 * neg_in, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
      out[name] = np.where(n_neg > 0, wins / (n_rel * n_neg), np.nan)
  return out


def rank_queries(query_NxD, gallery_MxD, query_labels, gallery_labels, score="cosine",
                 exclude_self=False, query_groups=None, gallery_groups=None, ks=DEFAULT_KS,
                 ap_k=DEFAULT_AP_K, chunk_elems=1 << 20, progress=True) -> dict:
  """Per-query metric arrays and their exact chance levels; NaN for queries with nothing relevant.

  `*_NxD` are `features(...)` of the same score; `*_groups` (e.g. gender) enable the constrained
  1:2 matching; exclude_self requires query i and gallery i to be the same example.
  """
  q_lab, g_lab = np.asarray(query_labels), np.asarray(gallery_labels)
  n, m = len(query_NxD), len(gallery_MxD)
  if len(q_lab) != n or len(g_lab) != m:
    raise ValueError(f"labels ({len(q_lab)}, {len(g_lab)}) do not match latents ({n}, {m})")
  if exclude_self and n != m:
    raise ValueError("exclude_self needs the query set to be the gallery set")
  if m == 0 or n == 0:
    raise ValueError("empty query or gallery set")
  harm = chance.harmonic(np.arange(m + 1))
  rows = max(1, chunk_elems // m)
  per = {}
  starts = range(0, n, rows)
  for lo in progress_lib.bar(starts, desc=f"retrieval ({score})", disable=not progress or len(starts) < 4):
    hi = min(n, lo + rows)
    s = score_matrix(query_NxD[lo:hi], gallery_MxD, score)
    rel = q_lab[lo:hi, None] == g_lab[None, :]
    valid = np.ones_like(rel)
    if exclude_self:
      i = np.arange(lo, hi)
      s[i - lo, i] = -np.inf
      rel[i - lo, i] = False
      valid[i - lo, i] = False
    neg = valid & ~rel
    negg = None
    if query_groups is not None and gallery_groups is not None:
      qg, gg = np.asarray(query_groups)[lo:hi, None], np.asarray(gallery_groups)[None, :]
      negg = neg & (qg == gg)
    for key, val in _chunk_metrics(s, rel, neg, negg, ks, ap_k, harm).items():
      per.setdefault(key, []).append(val)
    per.setdefault("n_relevant", []).append(rel.sum(1))
  out = {k: np.concatenate(v) for k, v in per.items()}
  m_eff = m - 1 if exclude_self else m
  r = out["n_relevant"]
  cache = {}
  for ri in np.unique(r[r > 0]):
    ri = int(ri)
    cache[ri] = {"mrr": chance.mrr(m_eff, ri), "ap": chance.average_precision(m_eff, ri),
                 f"ap@{ap_k}": chance.average_precision_at_k(m_eff, ri, ap_k),
                 f"ap_top@{ap_k}": chance.average_precision_top_k(m_eff, ri, ap_k),
                 **{f"recall@{k}": chance.recall_at_k(m_eff, ri, k) for k in ks}}
  for key in next(iter(cache.values()), {}):
    out[f"{key}_chance"] = np.array([cache[int(x)][key] if x > 0 else np.nan for x in r])
  return out


def summarise(per_query: dict) -> dict:
  """Means over queries with a relevant item (per-query 'ap' becomes 'map'), chance levels, query count."""
  valid = per_query["n_relevant"] > 0
  out = {}
  for key, val in per_query.items():
    if key == "n_relevant":
      continue
    v = val[valid]
    v = v[~np.isnan(v)]
    key = "map" + key[2:] if key.startswith("ap") else key  # the mean of AP is mAP
    out[key] = float(v.mean()) if v.size else float("nan")
    if key.startswith("matching_1v2"):
      out[f"{key}_chance"] = chance.MATCHING_CHANCE
  out["queries"] = int(valid.sum())
  out["queries_without_relevant"] = int((~valid).sum())
  return out


def retrieval_metrics(query_mu, gallery_mu, query_labels, gallery_labels, score="cosine",
                      query_logvar=None, gallery_logvar=None, exclude_self=False, max_pairs=4_000_000,
                      seed=0, **kwargs) -> dict:
  """Summary metrics (with `_chance` keys) for one direction and score, verification included."""
  q = features(query_mu, query_logvar, score)
  g = features(gallery_mu, gallery_logvar, score)
  out = summarise(rank_queries(q, g, query_labels, gallery_labels, score=score,
                               exclude_self=exclude_self, **kwargs))
  out.update(verification(q, g, query_labels, gallery_labels, score=score, exclude_self=exclude_self,
                          max_pairs=max_pairs, seed=seed))
  return out


def mean_reciprocal_rank(query_NxZ, gallery_MxZ, query_labels, gallery_labels, score="cosine",
                         query_logvar=None, gallery_logvar=None) -> float:
  """MRR of retrieving same-label gallery items (expected value under random tie-breaking)."""
  q = features(query_NxZ, query_logvar, score)
  g = features(gallery_MxZ, gallery_logvar, score)
  per = rank_queries(q, g, query_labels, gallery_labels, score=score, ks=(), progress=False)
  rr = per["mrr"][per["n_relevant"] > 0]
  return float(rr.mean()) if rr.size else float("nan")


def roc_auc(scores, same) -> float:
  """Area under the ROC curve: P(same-pair score > different-pair score), ties counting 1/2."""
  from scipy import stats
  scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
  n_pos, n_neg = int(same.sum()), int((~same).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = stats.rankdata(scores)  # midranks: the 1/2 for ties
  return float((ranks[same].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def equal_error_rate(scores, same) -> float:
  """Rate where false accepts equal false rejects, linearly interpolated on the ROC curve."""
  scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
  n_pos, n_neg = int(same.sum()), int((~same).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(-scores, kind="stable")
  s, y = scores[order], same[order]
  last = np.r_[s[1:] != s[:-1], True]  # accept everything scoring >= each distinct threshold
  tpr = np.r_[0.0, np.cumsum(y)[last] / n_pos]
  fpr = np.r_[0.0, np.cumsum(~y)[last] / n_neg]
  d = fpr - (1.0 - tpr)  # rises from -1 to +1
  i = int(np.argmax(d >= 0))
  if i == 0:
    return float(fpr[0])
  f0, f1, t0, t1 = fpr[i - 1], fpr[i], tpr[i - 1], tpr[i]
  a = (1.0 - t0 - f0) / ((f1 - f0) + (t1 - t0))
  return float(f0 + a * (f1 - f0))


def verification(query_NxD, gallery_MxD, query_labels, gallery_labels, score="cosine",
                 exclude_self=False, max_pairs=4_000_000, seed=0, chunk_elems=1 << 20) -> dict:
  """ROC AUC and EER over (query, gallery) pairs: all of them, or each kept with probability
  max_pairs / (N*M) by a seeded generator when there are more (same pairs for any chunk size)."""
  q_lab, g_lab = np.asarray(query_labels), np.asarray(gallery_labels)
  n, m = len(query_NxD), len(gallery_MxD)
  keep_p = min(1.0, max_pairs / float(n * m))
  rng = np.random.default_rng(seed)
  rows = max(1, chunk_elems // m)
  scores, same = [], []
  for lo in range(0, n, rows):
    hi = min(n, lo + rows)
    s = score_matrix(query_NxD[lo:hi], gallery_MxD, score)
    keep = np.ones(s.shape, bool)
    if exclude_self:
      i = np.arange(lo, hi)
      keep[i - lo, i] = False
    if keep_p < 1.0:
      keep &= rng.random(s.shape) < keep_p
    scores.append(s[keep])
    same.append((q_lab[lo:hi, None] == g_lab[None, :])[keep])
  s, y = np.concatenate(scores), np.concatenate(same)
  return {"auc": roc_auc(s, y), "auc_chance": chance.AUC_CHANCE, "eer": equal_error_rate(s, y),
          "eer_chance": chance.EER_CHANCE, "verification_pairs": int(len(s)),
          "verification_pairs_sampled": keep_p < 1.0}
