"""Cross-modal retrieval metrics with exact chance levels, computed from blocked score products.

Scores come a block of queries at a time (ranking.py: NumPy float64 for small sets, JAX float32 jit for large
ones), never as an N x M matrix, and several scores of one (query, gallery) pair share the dot products
(`retrieval_scores`). No row is sorted: each relevant item's rank is a count of the items scoring above it and
tied with it (ranking.threshold_counts), and the metrics follow from those counts (rank_metrics.py).

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
from mmvae.metrics import chance, rank_metrics, ranking

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


def _codes(query_labels, gallery_labels):
  """Labels as small integers shared by query and gallery (any label type)."""
  q_lab, g_lab = np.asarray(query_labels), np.asarray(gallery_labels)
  _, inv = np.unique(np.concatenate([q_lab, g_lab]), return_inverse=True)
  return inv[:len(q_lab)].astype(np.int32), inv[len(q_lab):].astype(np.int32)


class _Relevant:
  """(row, gallery index) of every relevant pair of a query block, from the gallery grouped by label."""

  def __init__(self, q_code, g_code, exclude_self):
    self.q_code, self.exclude_self = q_code, exclude_self
    self.order = np.argsort(g_code, kind="stable")
    n_codes = int(max(q_code.max(initial=0), g_code.max(initial=0))) + 1
    self.count = np.bincount(g_code, minlength=n_codes)
    self.start = np.cumsum(self.count) - self.count

  def block(self, lo, hi):
    code = self.q_code[lo:hi]
    r = self.count[code]
    row = np.repeat(np.arange(hi - lo), r)
    within = np.arange(len(row)) - np.repeat(np.cumsum(r) - r, r)
    col = self.order[self.start[code][row] + within]
    if self.exclude_self:
      keep = col != row + lo
      row, col = row[keep], col[keep]
    return row, col


def _count(x, b):
  return np.bincount(x, minlength=b)


def _block_stats(s_BxM, key_BxM, key_rows, row, col, lo, exclude_self, groups, n_cells):
  """Counts behind every metric for the relevant pairs (row, col) of one query block."""
  b, m = s_BxM.shape
  counts = ranking.threshold_counts(s_BxM, key_BxM, row, col, n_cells, groups is not None, key_rows)
  (above, tied), group_counts = (counts, None) if groups is None else counts
  val = s_BxM[row, col]
  rel_above, rel_in = ranking.rank_within(row, val)
  n_rel = _count(row, b)
  n_valid = m - (1 if exclude_self else 0)
  matching = [("matching_1v2", above - rel_above, tied - rel_in, n_valid - n_rel)]
  if groups is not None:
    q_grp, g_grp = groups
    g_count = np.bincount(g_grp, minlength=int(max(q_grp.max(), g_grp.max())) + 1)
    n_same = g_count[q_grp[lo:lo + b]] - (1 if exclude_self else 0)  # an excluded self is in its own group
    rel_same = q_grp[lo + row] == g_grp[col]
    rg_above, rg_in = ranking.rank_within(row, val, mask=rel_same)
    (g_above, g_tied) = group_counts
    matching.append(("matching_1v2_gender", g_above - rg_above, g_tied - rg_in, n_same - _count(row[rel_same], b)))
  return dict(row=row, g=above, t=tied, rel_above=rel_above, rel_in=rel_in, n_rel=n_rel, matching=matching)


def _distinct(rng, t, k):
  """k distinct integers of [0, t), sorted: the first k distinct values of uniform draws, a uniform k-subset
  (every k-subset equally likely by symmetry) in O(k) memory and time, however large t is."""
  if k == 0:
    return np.empty(0, np.int64)
  if 2 * k > t:  # mostly kept: drop a uniform (t - k)-subset instead (t < 2k here, so still O(k))
    keep = np.ones(t, bool)
    keep[_distinct(rng, t, t - k)] = False
    return np.flatnonzero(keep)
  draws = np.empty(0, np.int64)
  have = 0
  while have < k:
    short = k - have
    more = int(short * t / (t - have)) + 16  # expected repeats among the new draws, plus slack
    draws = np.concatenate([draws, rng.integers(0, t, size=more, dtype=np.int64)])
    uniq, first = np.unique(draws, return_index=True)  # index of each value's first draw
    have = len(uniq)
  return np.sort(draws[np.sort(first)[:k]])


def sample_pairs(n, m, max_pairs, seed, exclude_self=False):
  """The seeded verification sample of N x M pairs as (rows, cols), row-major, self pairs left out with
  exclude_self: each pair kept independently with probability max_pairs / (N*M), drawn as a Binomial count of
  distinct uniform positions (the same law) in O(max_pairs) instead of one draw per pair."""
  width = m - 1 if exclude_self else m
  total = n * width
  rng = np.random.default_rng(seed)
  k = int(rng.binomial(total, min(1.0, max_pairs / float(n * m)))) if total else 0
  flat = _distinct(rng, total, k)
  rows, cols = np.divmod(flat, max(width, 1))
  if exclude_self:
    cols = cols + (cols >= rows)  # skip the diagonal: position j of row i's M - 1 others
  return rows, cols


def _full_pairs(lo, b, m, exclude_self):
  """Every pair of a query block, self pairs left out with exclude_self."""
  keep = np.ones((b, m), bool)
  if exclude_self:
    keep[np.arange(b), np.arange(lo, lo + b)] = False
  return keep


def rank_many(q_mu, q_sig, g_mu, g_sig, query_labels, gallery_labels, scores=("cosine",), exclude_self=False,
              query_groups=None, gallery_groups=None, ks=DEFAULT_KS, ap_k=DEFAULT_AP_K, verify=None,
              use_jax=None, block_elems=None, n_cells=ranking.N_CELLS, progress=True, desc="retrieval",
              metrics="all"):
  """{score: per-query metrics} for several scores of one (query, gallery) pair, from shared score blocks.

  q_sig / g_sig: posterior standard deviations (needed by 'w2'); verify: (max_pairs, seed) to also return
  {score: (sampled scores, same-label flags)} as the second value, else None; metrics='first_hit': MRR and
  Recall@K only, from three counts per query fused with the score kernel (no per-item work).
  """
  n, m = len(q_mu), len(g_mu)
  if len(query_labels) != n or len(gallery_labels) != m:
    raise ValueError(f"labels ({len(query_labels)}, {len(gallery_labels)}) do not match latents ({n}, {m})")
  if exclude_self and n != m:
    raise ValueError("exclude_self needs the query set to be the gallery set")
  if m == 0 or n == 0:
    raise ValueError("empty query or gallery set")
  q_code, g_code = _codes(query_labels, gallery_labels)
  groups = None
  if query_groups is not None and gallery_groups is not None:
    groups = _codes(query_groups, gallery_groups)
  relevant = _Relevant(q_code, g_code, exclude_self)
  first_only = metrics == "first_hit"
  if block_elems is None:  # query rows x gallery per block: few counts come back per row in first_hit mode
    block_elems = 1 << (25 if first_only else 23)
  scorer = ranking.BlockScorer(q_mu, q_sig, g_mu, g_sig, q_code, g_code, scores, exclude_self, use_jax,
                               block_elems, 0 if first_only else n_cells, None if first_only else groups)
  sample = None
  if verify is not None and verify[0] < n * m:
    sample = sample_pairs(n, m, *verify, exclude_self=exclude_self)
  harm = chance.harmonic(np.arange(m + 1))
  per = {s: {} for s in scores}
  pairs = {s: ([], []) for s in scores}
  for lo, hi, blocks in progress_lib.bar(scorer, desc=desc, disable=not progress or len(scorer) < 4):
    if first_only:
      sel = slice(lo, hi) if scorer.order is None else scorer.order[lo:hi]
      for score, (g0, t0, r0) in blocks.items():
        n_rel = relevant.count[q_code[sel]] - (1 if exclude_self else 0) * (relevant.count[q_code[sel]] > 0)
        rows = np.flatnonzero(n_rel > 0)
        rr, hits = rank_metrics.first_hit(rows, g0[rows], t0[rows], r0[rows], n_rel, ks)
        for key, val in {"mrr": rr, **{f"recall@{k}": hits[k] for k in ks}, "n_relevant": n_rel}.items():
          per[score].setdefault(key, []).append(val)
      continue
    row, col = relevant.block(lo, hi)
    keep = same = None
    if sample is not None:  # the block's sampled pairs, read off the block
      i0, i1 = np.searchsorted(sample[0], (lo, hi))
      keep = (sample[0][i0:i1] - lo, sample[1][i0:i1])
      same = q_code[sample[0][i0:i1]] == g_code[keep[1]]
    elif verify is not None:
      keep = _full_pairs(lo, hi - lo, m, exclude_self)
      same = (q_code[lo:hi, None] == g_code[None, :])[keep]
    for score, (s_BxM, key_BxM, key_rows) in blocks.items():
      st = _block_stats(s_BxM, key_BxM, key_rows, row, col, lo, exclude_self, groups, scorer.n_cells)
      vals = rank_metrics.query_metrics(st["row"], st["g"], st["t"], st["rel_above"], st["rel_in"], st["n_rel"],
                                        ks, ap_k, harm, st["matching"])
      vals["n_relevant"] = st["n_rel"]
      for key, val in vals.items():
        per[score].setdefault(key, []).append(val)
      if keep is not None:
        pairs[score][0].append(s_BxM[keep])  # float32 sorts faster; same order
        pairs[score][1].append(same)
  back = slice(None) if not first_only or scorer.order is None else np.argsort(scorer.order)  # blocks' order undone
  out = {s: _with_chance({k: np.concatenate(v)[back] for k, v in per[s].items()}, m - 1 if exclude_self else m, ks,
                         ap_k) for s in scores}
  if verify is None:
    return out, None
  return out, {s: (np.concatenate(a), np.concatenate(b)) for s, (a, b) in pairs.items()}


def _with_chance(out, m_eff, ks, ap_k):
  """Adds `<metric>_chance` per query: the same metric of a uniformly random ranking of its gallery."""
  r = out["n_relevant"]
  cache = {}
  for ri in np.unique(r[r > 0]):
    ri = int(ri)
    cache[ri] = {"mrr": chance.mrr(m_eff, ri), "ap": chance.average_precision(m_eff, ri),
                 f"ap@{ap_k}": chance.average_precision_at_k(m_eff, ri, ap_k),
                 f"ap_top@{ap_k}": chance.average_precision_top_k(m_eff, ri, ap_k),
                 **{f"recall@{k}": chance.recall_at_k(m_eff, ri, k) for k in ks}}
  for key in [k for k in next(iter(cache.values()), {}) if k in out]:
    out[f"{key}_chance"] = np.array([cache[int(x)][key] if x > 0 else np.nan for x in r])
  return out


def rank_queries(query_NxD, gallery_MxD, query_labels, gallery_labels, score="cosine",
                 exclude_self=False, query_groups=None, gallery_groups=None, ks=DEFAULT_KS,
                 ap_k=DEFAULT_AP_K, chunk_elems=None, progress=True, use_jax=None) -> dict:
  """Per-query metric arrays and their exact chance levels; NaN for queries with nothing relevant.

  `*_NxD` are `features(...)` of the same score; `*_groups` (e.g. gender) enable the constrained
  1:2 matching; exclude_self requires query i and gallery i to be the same example.
  """
  if score not in SCORES:
    raise ValueError(f"unknown retrieval score {score!r}; use one of {SCORES}")
  kind = "cosine" if score == "cosine" else "euclidean"  # W2 features: the Euclidean distance of [mu, sigma]
  per, _ = rank_many(query_NxD, None, gallery_MxD, None, query_labels, gallery_labels, (kind,), exclude_self,
                     query_groups, gallery_groups, ks, ap_k, use_jax=use_jax, block_elems=chunk_elems,
                     progress=progress, desc=f"retrieval ({score})")
  return per[kind]


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
  return retrieval_scores(query_mu, gallery_mu, query_labels, gallery_labels, (score,), query_logvar,
                          gallery_logvar, exclude_self, max_pairs, seed, **kwargs)[score]


def _sigma(mu, logvar, scores):
  if "w2" not in scores:
    return None
  if logvar is None:
    raise ValueError("score 'w2' needs the posteriors' log-variances")
  return np.exp(0.5 * np.asarray(logvar, np.float64))


def retrieval_scores(query_mu, gallery_mu, query_labels, gallery_labels, scores=SCORES, query_logvar=None,
                     gallery_logvar=None, exclude_self=False, max_pairs=4_000_000, seed=0, return_per_query=False,
                     **kwargs):
  """{score: retrieval_metrics(...)} for several scores at once: one pass of shared dot products.

  return_per_query: also return {score: `per_query` arrays} (the values the summaries average) as a second value.
  """
  for score in scores:
    if score not in SCORES:
      raise ValueError(f"unknown retrieval score {score!r}; use one of {SCORES}")
  kwargs.setdefault("progress", True)
  kwargs.pop("chunk_elems", None)
  per, pairs = rank_many(np.asarray(query_mu, np.float64), _sigma(query_mu, query_logvar, scores),
                         np.asarray(gallery_mu, np.float64), _sigma(gallery_mu, gallery_logvar, scores),
                         query_labels, gallery_labels, tuple(scores), exclude_self, verify=(max_pairs, seed),
                         **kwargs)
  out = {}
  for score in scores:
    out[score] = summarise(per[score])
    out[score].update(_verification_summary(*pairs[score], pairs_sampled=max_pairs < len(query_mu) * len(
        gallery_mu)))
  if return_per_query:
    return out, {score: per_query(per[score]) for score in scores}
  return out


def per_query(per: dict) -> dict:
  """Each metric per query in query order, NaN where `summarise` leaves the query out (nothing relevant, or the
  metric undefined for it): `summarise`'s means are the NaN-ignoring means of these."""
  valid = per["n_relevant"] > 0
  return {k: np.where(valid, np.asarray(v, np.float64), np.nan) for k, v in per.items()
          if k != "n_relevant" and not k.endswith("_chance")}


def mean_reciprocal_rank(query_NxZ, gallery_MxZ, query_labels, gallery_labels, score="cosine",
                         query_logvar=None, gallery_logvar=None) -> float:
  """MRR of retrieving same-label gallery items (expected value under random tie-breaking)."""
  q = features(query_NxZ, query_logvar, score)
  g = features(gallery_MxZ, gallery_logvar, score)
  kind = "cosine" if score == "cosine" else "euclidean"
  per, _ = rank_many(q, None, g, None, query_labels, gallery_labels, (kind,), ks=(), progress=False,
                     metrics="first_hit")
  rr = per[kind]["mrr"][per[kind]["n_relevant"] > 0]
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
  return _eer(tpr, fpr)


def _eer(tpr, fpr) -> float:
  """The EER on an ROC curve given at every distinct threshold, from the strictest (0, 0) on."""
  d = fpr - (1.0 - tpr)  # rises from -1 to +1
  i = int(np.argmax(d >= 0))
  if i == 0:
    return float(fpr[0])
  f0, f1, t0, t1 = fpr[i - 1], fpr[i], tpr[i - 1], tpr[i]
  a = (1.0 - t0 - f0) / ((f1 - f0) + (t1 - t0))
  return float(f0 + a * (f1 - f0))


def _verification_summary(s, y, pairs_sampled) -> dict:
  """roc_auc and equal_error_rate of the same pairs from one sort (the sample holds millions of pairs)."""
  s, y = np.asarray(s), np.asarray(y, bool)
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  auc = eer = float("nan")
  if n_pos and n_neg:
    if s.dtype == np.float32:  # one sort of (order-preserving bits, label) keys instead of an argsort
      u = (s + np.float32(0.0)).view(np.uint32)  # -0.0 becomes 0.0: equal values, equal bits
      bits = np.where(u >> 31, ~u, u | np.uint32(1 << 31)).astype(np.uint64)
      key = np.sort((bits << np.uint64(1)) | y)
      ss, yy = key >> np.uint64(1), (key & np.uint64(1)).astype(bool)
    else:
      order = np.argsort(s, kind="stable")
      ss, yy = s[order], y[order]
    new = np.r_[True, ss[1:] != ss[:-1]]
    gid = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(ss)]
    midrank = (starts + 1 + ends) / 2.0  # ties share the mean of their ranks
    auc = float((midrank[gid][yy].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    pos = np.bincount(gid, weights=yy, minlength=len(starts))[::-1]  # highest threshold first
    neg = (ends - starts)[::-1] - pos
    eer = _eer(np.r_[0.0, np.cumsum(pos) / n_pos], np.r_[0.0, np.cumsum(neg) / n_neg])
  return {"auc": auc, "auc_chance": chance.AUC_CHANCE, "eer": eer, "eer_chance": chance.EER_CHANCE,
          "verification_pairs": int(len(s)), "verification_pairs_sampled": pairs_sampled}


def verification(query_NxD, gallery_MxD, query_labels, gallery_labels, score="cosine",
                 exclude_self=False, max_pairs=4_000_000, seed=0, chunk_elems=1 << 22) -> dict:
  """ROC AUC and EER over (query, gallery) pairs: all of them, or the seeded `sample_pairs` when there are more
  than max_pairs (the same pairs and scores for any chunk size)."""
  return _verification_summary(*verification_pairs(query_NxD, gallery_MxD, query_labels, gallery_labels, score,
                                                   exclude_self, max_pairs, seed, chunk_elems))


def verification_pairs(query_NxD, gallery_MxD, query_labels, gallery_labels, score="cosine",
                       exclude_self=False, max_pairs=4_000_000, seed=0, chunk_elems=1 << 22):
  """(scores, same-label flags, sampled) of the pairs `verification` summarises, row-major."""
  if score not in SCORES:
    raise ValueError(f"unknown retrieval score {score!r}; use one of {SCORES}")
  n, m = len(query_NxD), len(gallery_MxD)
  if exclude_self and n != m:
    raise ValueError("exclude_self needs the query set to be the gallery set")
  kind = "cosine" if score == "cosine" else "euclidean"
  q_code, g_code = _codes(query_labels, gallery_labels)
  if max_pairs < n * m:  # score the sampled pairs alone, as the blocks would hold them: O(max_pairs)
    rows, cols = sample_pairs(n, m, max_pairs, seed, exclude_self)
    chunk = chunk_elems // max(1, np.shape(query_NxD)[-1])  # pairs per gather, as many elements as a block
    s = ranking.pair_scores(query_NxD, None, gallery_MxD, None, rows, cols, (kind,), chunk=chunk)
    return s[kind], q_code[rows] == g_code[cols], True
  scorer = ranking.BlockScorer(query_NxD, None, gallery_MxD, None, q_code, g_code, (kind,), exclude_self,
                               block_elems=chunk_elems)
  scores, same = [], []
  for lo, hi, blocks in scorer:
    keep = _full_pairs(lo, hi - lo, m, exclude_self)
    scores.append(blocks[kind][0][keep])  # float32 sorts faster; same order
    same.append((q_code[lo:hi, None] == g_code[None, :])[keep])
  return np.concatenate(scores), np.concatenate(same), False
