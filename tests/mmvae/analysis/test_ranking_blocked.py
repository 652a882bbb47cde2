"""Blocked ranking (NumPy and JAX kernels) against plain loops over every tie order, sorted rows and counts."""

import itertools
import math

import numpy as np
import pytest

from mmvae.metrics import chance, ranking, retrieval


def _tie_orders(scores):
  levels = sorted(set(scores), reverse=True)
  groups = [[i for i, s in enumerate(scores) if s == lv] for lv in levels]
  for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
    yield [i for p in perms for i in p]


def _metrics_of_ranking(ranked_rel, ks, ap_k):
  """MRR, Recall@k, AP, AP@k and AP_top@k of one ranked list of relevance flags, by a plain loop."""
  n_rel = sum(ranked_rel)
  hits, precisions, first = 0, [], None
  for pos, rel in enumerate(ranked_rel, start=1):
    if rel:
      hits += 1
      precisions.append((pos, hits / pos))
      first = first or pos
  top = [p for pos, p in precisions if pos <= ap_k]
  out = {"mrr": 1.0 / first, "ap": sum(p for _, p in precisions) / n_rel,
         f"ap@{ap_k}": sum(top) / min(n_rel, ap_k), f"ap_top@{ap_k}": sum(top) / len(top) if top else 0.0}
  out.update({f"recall@{k}": float(first <= k) for k in ks})
  return out


def _expected(scores, relevant, ks, ap_k):
  """Every metric averaged over all tie orders (tiny galleries only)."""
  totals, count = {}, 0
  for order in _tie_orders(scores):
    count += 1
    for key, v in _metrics_of_ranking([relevant[j] for j in order], ks, ap_k).items():
      totals[key] = totals.get(key, 0.0) + v
  return {k: v / count for k, v in totals.items()}


def _matching(scores, relevant, negative):
  pairs = [(a, b) for a in range(len(scores)) for b in range(len(scores)) if relevant[a] and negative[b]]
  if not pairs:
    return float("nan")
  return sum(1.0 if scores[a] > scores[b] else 0.5 if scores[a] == scores[b] else 0.0 for a, b in pairs) / len(pairs)


def _close(got, want):
  return (math.isnan(want) and np.isnan(got)) or got == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("use_jax", [False, True])
@pytest.mark.parametrize("n,m,chunk,exclude_self", [(13, 7, 28, False), (9, 9, 30, True), (11, 6, 6, False)])
def test_ties_match_every_tie_order(use_jax, n, m, chunk, exclude_self):
  rng = np.random.default_rng(n * 100 + m)
  # Integer 1-d features under the euclidean score: exact small-integer scores in float32 too, so many ties.
  q = rng.integers(0, 3, (n, 1)).astype(float)
  g = q[:m].copy() if exclude_self else rng.integers(0, 3, (m, 1)).astype(float)
  q_lab = rng.integers(0, 3, n)
  g_lab = q_lab[:m].copy() if exclude_self else rng.integers(0, 3, m)
  q_lab[0] = 7  # nothing relevant (with exclude_self: only itself, which is excluded)
  q_grp, g_grp = rng.integers(0, 2, n), rng.integers(0, 2, m)
  if exclude_self:
    g_lab, g_grp = q_lab.copy(), q_grp.copy()
  ks, ap_k = (1, 2, 4), 3
  per = retrieval.rank_queries(q, g, q_lab, g_lab, score="euclidean", exclude_self=exclude_self, ks=ks, ap_k=ap_k,
                               query_groups=q_grp, gallery_groups=g_grp, chunk_elems=chunk, use_jax=use_jax,
                               progress=False)
  for i in range(n):
    items = [j for j in range(m) if not (exclude_self and j == i)]
    scores = [-abs(q[i, 0] - g[j, 0]) for j in items]
    relevant = [q_lab[i] == g_lab[j] for j in items]
    assert per["n_relevant"][i] == sum(relevant)
    if not any(relevant):
      assert np.isnan(per["mrr"][i]) and np.isnan(per["ap"][i])
      continue
    for key, v in _expected(scores, relevant, ks, ap_k).items():
      assert _close(per[key][i], v), (i, key)
    negative = [not r for r in relevant]
    assert _close(per["matching_1v2"][i], _matching(scores, relevant, negative))
    neg_g = [negative[k] and q_grp[i] == g_grp[j] for k, j in enumerate(items)]
    assert _close(per["matching_1v2_gender"][i], _matching(scores, relevant, neg_g))


@pytest.mark.parametrize("use_jax", [False, True])
@pytest.mark.parametrize("n,m,chunk", [(37, 53, 53 * 8), (64, 61, 61 * 16), (5, 200, 200 * 4)])
def test_continuous_scores_match_sorted_rows(use_jax, n, m, chunk):
  rng = np.random.default_rng(n + m)
  q, g = rng.normal(size=(n, 6)), rng.normal(size=(m, 6))
  q_lab, g_lab = rng.integers(0, 5, n), rng.integers(0, 5, m)
  q_lab[-1] = 99
  ks, ap_k = (1, 5, 10), 20
  per = retrieval.rank_queries(q, g, q_lab, g_lab, ks=ks, ap_k=ap_k, chunk_elems=chunk, use_jax=use_jax,
                               progress=False)
  for i in range(n):
    s = [float(q[i] @ g[j]) / math.sqrt(float(q[i] @ q[i]) * float(g[j] @ g[j])) for j in range(m)]
    ranked = [g_lab[j] == q_lab[i] for j in sorted(range(m), key=lambda j: -s[j])]
    if not any(ranked):
      assert np.isnan(per["mrr"][i])
      continue
    for key, v in _metrics_of_ranking(ranked, ks, ap_k).items():
      assert per[key][i] == pytest.approx(v, abs=1e-9), (i, key)
  mrr = retrieval.mean_reciprocal_rank(q, g, q_lab, g_lab)
  assert mrr == pytest.approx(np.nanmean(per["mrr"]), abs=1e-12)


@pytest.mark.parametrize("use_jax,chunk,redo", [(False, 0, False), (True, 0, False), (True, 8, False),
                                                (True, 8, True)])
def test_first_hit_mode_matches_a_plain_loop(use_jax, chunk, redo, monkeypatch):
  if chunk:  # the two-pass kernel over a gallery sorted by label in chunks of 8 columns (21 items: one padded)
    monkeypatch.setattr(ranking, "FIRST_HIT_CHUNK", chunk)
  if redo:  # every row flagged as disagreeing between the passes: all redone by the one-pass kernel
    kernel = ranking._jax_first_hit  # pylint: disable=protected-access

    def flagged(*key):
      f = kernel(*key)
      return lambda *a: {k: v[:3] + (v[3] & False,) for k, v in f(*a).items()}
    monkeypatch.setattr(ranking, "_jax_first_hit", flagged)
  rng = np.random.default_rng(3)
  x = rng.integers(0, 3, (21, 2)).astype(float)  # ties, some in the first relevant group
  lab = rng.integers(0, 4, 21)
  per, _ = retrieval.rank_many(x, None, x, None, lab, lab, ("euclidean",), exclude_self=True, ks=(1, 3),
                               use_jax=use_jax, block_elems=21 * 4, progress=False, metrics="first_hit")
  for i in range(21):
    items = [j for j in range(21) if j != i]
    scores = [-float(np.linalg.norm(x[i] - x[j])) for j in items]
    relevant = [lab[i] == lab[j] for j in items]
    if not any(relevant):
      assert np.isnan(per["euclidean"]["mrr"][i])
      continue
    # Independent of the library's law: the exact mean over random tie orders by a seeded simulation.
    rng_i = np.random.default_rng(i)
    sims = [next(p for p, j in enumerate(sorted(range(20), key=lambda j: (-scores[j], key[j])), 1) if relevant[j])
            for key in rng_i.random((4000, 20))]
    assert per["euclidean"]["mrr"][i] == pytest.approx(np.mean([1.0 / p for p in sims]), abs=0.02), i
    assert per["euclidean"]["recall@3"][i] == pytest.approx(np.mean([p <= 3 for p in sims]), abs=0.03), i
    assert per["euclidean"]["mrr_chance"][i] == pytest.approx(chance.mrr(20, sum(relevant)))


def test_threshold_counts_match_brute_force():
  rng = np.random.default_rng(4)
  for n_cells in (3, 5, 64):
    s = rng.integers(0, 6, (7, 40)).astype(np.float32)
    s[2, 5] = -np.inf
    rel = rng.random((7, 40)) < 0.2
    with np.errstate(invalid="ignore"):  # the -inf item in a row of zero scale
      key = ranking._cells(np, s, rel, n_cells) + np.arange(7)[:, None] * n_cells
    row, col = np.nonzero(rel)
    mask = rng.random((7, 40)) < 0.5  # the query's group
    plain = ranking.threshold_counts(s, key, row, col, n_cells)
    both, in_group = ranking.threshold_counts(s, key + np.where(mask, 0, 7 * n_cells), row, col, n_cells,
                                              grouped=True)
    np.testing.assert_array_equal(plain, both)
    for counts, ok in ((plain, np.ones((7, 40), bool)), (in_group, mask)):
      for e, (i, j) in enumerate(zip(row, col)):
        assert counts[0][e] == sum(1 for k in range(40) if ok[i, k] and s[i, k] > s[i, j])
        assert counts[1][e] == sum(1 for k in range(40) if ok[i, k] and s[i, k] == s[i, j])


def test_shared_scores_equal_separate_calls_and_sklearn():
  from sklearn import metrics as skm
  rng = np.random.default_rng(5)
  mu_a, mu_b = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
  lv_a, lv_b = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
  lab = rng.integers(0, 5, 30)
  both = retrieval.retrieval_scores(mu_a, mu_b, lab, lab, retrieval.SCORES, lv_a, lv_b, progress=False)
  for score in retrieval.SCORES:
    one = retrieval.retrieval_metrics(mu_a, mu_b, lab, lab, score, lv_a, lv_b, progress=False)
    assert set(one) == set(both[score])
    for key, v in one.items():
      assert v == pytest.approx(both[score][key], abs=1e-12), (score, key)
    s = retrieval.score_matrix(retrieval.features(mu_a, lv_a, score), retrieval.features(mu_b, lv_b, score), score)
    assert one["auc"] == pytest.approx(skm.roc_auc_score((lab[:, None] == lab[None]).ravel(), s.ravel()))


def test_jax_path_agrees_with_numpy_on_continuous_scores():
  rng = np.random.default_rng(6)
  x, y = rng.normal(size=(150, 8)), rng.normal(size=(150, 8))
  lab, grp = rng.integers(0, 10, 150), rng.integers(0, 2, 150)
  for score in ("cosine", "euclidean"):
    a = retrieval.rank_queries(x, y, lab, lab, score, query_groups=grp, gallery_groups=grp, progress=False,
                               use_jax=False)
    b = retrieval.rank_queries(x, y, lab, lab, score, query_groups=grp, gallery_groups=grp, progress=False,
                               use_jax=True, chunk_elems=150 * 32)
    for key in a:
      np.testing.assert_allclose(a[key], b[key], atol=1e-9, err_msg=key)


def test_chance_cache_is_bounded():
  chance.first_hit_pmf.cache_clear()
  for r in range(1, 60):
    chance.mrr(5000, r)
  info = chance.first_hit_pmf.cache_info()
  assert info.maxsize is not None and info.maxsize <= 16 and info.currsize <= info.maxsize
  assert chance.expected_inverse_first_hit(6, 2, 3) == pytest.approx(
      sum(math.comb(6 - k, 1) / math.comb(6, 2) / (3 + k) for k in range(1, 6)))


@pytest.mark.parametrize("n, m, max_pairs, exclude_self", [(5, 5, 5, True), (5, 5, 20, True), (4, 6, 6, False)])
def test_pair_sample_keeps_each_pair_with_probability_p(n, m, max_pairs, exclude_self):
  p, seeds = max_pairs / (n * m), 3000
  freq, counts = np.zeros((n, m)), []
  for seed in range(seeds):
    rows, cols = retrieval.sample_pairs(n, m, max_pairs, seed, exclude_self)
    flat = rows * m + cols
    assert np.all(np.diff(flat) > 0)  # distinct, row-major
    freq[rows, cols] += 1
    counts.append(len(rows))
  valid = ~np.eye(n, m, dtype=bool) if exclude_self else np.ones((n, m), bool)
  assert np.all(freq[~valid] == 0)
  sd = math.sqrt(p * (1 - p) / seeds)
  assert np.all(np.abs(freq[valid] / seeds - p) < 5 * sd)  # every valid pair equally likely, at p
  total = valid.sum()
  assert abs(np.mean(counts) - total * p) < 5 * math.sqrt(total * p * (1 - p) / seeds)
  assert np.var(counts) == pytest.approx(total * p * (1 - p), rel=0.15)  # a Binomial count: independent pairs


def test_pair_sample_at_size_is_uniform_seeded_and_never_n_by_m():
  n = m = 400
  p = 0.1
  rows, cols = retrieval.sample_pairs(n, m, int(p * n * m), seed=4, exclude_self=True)
  total = n * (m - 1)
  assert abs(len(rows) - total * p) < 5 * math.sqrt(total * p * (1 - p))
  assert np.all(rows != cols) and len(np.unique(rows * m + cols)) == len(rows)
  for c in (np.bincount(rows, minlength=n), np.bincount(cols, minlength=m)):
    e = (m - 1) * p  # Binomial(M - 1, p) per row (and per column)
    stat = np.sum((c - e) ** 2) / (e * (1 - p))  # ~ chi-square with n degrees of freedom
    assert abs(stat - n) < 6 * math.sqrt(2 * n)
  again = retrieval.sample_pairs(n, m, int(p * n * m), seed=4, exclude_self=True)
  other = retrieval.sample_pairs(n, m, int(p * n * m), seed=5, exclude_self=True)
  assert all(np.array_equal(x, y) for x, y in zip((rows, cols), again))
  assert len(other[0]) != len(rows) or not np.array_equal(other[1], cols)
  n = m = 200_000  # 4e10 pairs: one draw (or bool) per pair would not fit in memory
  rows, cols = retrieval.sample_pairs(n, m, 100_000, seed=0, exclude_self=True)
  assert abs(len(rows) - 100_000) < 5 * math.sqrt(100_000) and np.all(rows != cols)
  assert len(np.unique(rows * m + cols)) == len(rows) and rows.max() > 0.99 * n and cols.max() > 0.99 * m


def _plain_score(a, b, score):
  """One pair's score by a plain loop over coordinates."""
  dot = sum(x * y for x, y in zip(a, b))
  if score == "cosine":
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
  return -math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def _plain_eer(scores, same):
  """EER by brute force over every threshold, interpolated where FAR crosses FRR."""
  pos, neg = [s for s, y in zip(scores, same) if y], [s for s, y in zip(scores, same) if not y]
  pts = [(0.0, 0.0)] + [(sum(x >= t for x in neg) / len(neg), sum(x >= t for x in pos) / len(pos))
                        for t in sorted(set(scores), reverse=True)]
  for (f0, t0), (f1, t1) in zip(pts, pts[1:]):
    if f1 + t1 >= 1.0:
      return f0 + (1.0 - t0 - f0) / ((f1 - f0) + (t1 - t0)) * (f1 - f0)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_sampled_verification_is_sklearn_on_the_sampled_pairs(exclude_self):
  from sklearn import metrics as skm
  rng = np.random.default_rng(9)
  n, m = (70, 70) if exclude_self else (70, 50)
  mu_q, mu_g = rng.normal(size=(n, 4)), rng.normal(size=(m, 4))
  lv_q, lv_g = rng.normal(size=(n, 4)), rng.normal(size=(m, 4))
  lq, lg = rng.integers(0, 4, n), rng.integers(0, 4, m)
  rows, cols = retrieval.sample_pairs(n, m, 900, 2, exclude_self)
  both = retrieval.retrieval_scores(mu_q, mu_g, lq, lg, retrieval.SCORES, lv_q, lv_g, exclude_self, max_pairs=900,
                                    seed=2, progress=False)  # pairs read off the ranking blocks
  for score in retrieval.SCORES:
    q, g = retrieval.features(mu_q, lv_q, score), retrieval.features(mu_g, lv_g, score)
    s, same, sampled = retrieval.verification_pairs(q, g, lq, lg, score, exclude_self, 900, seed=2)
    plain = [_plain_score(q[i], g[j], score) for i, j in zip(rows, cols)]
    plain_same = [lq[i] == lg[j] for i, j in zip(rows, cols)]
    assert sampled and np.array_equal(same, plain_same)
    np.testing.assert_allclose(s, plain, rtol=1e-12, atol=1e-12)
    out = retrieval.verification(q, g, lq, lg, score, exclude_self, 900, seed=2)
    assert out == retrieval.verification(q, g, lq, lg, score, exclude_self, 900, seed=2, chunk_elems=7)
    assert out["verification_pairs"] == len(rows) and out["verification_pairs_sampled"]
    assert out["auc"] == pytest.approx(skm.roc_auc_score(plain_same, plain), abs=1e-12)
    assert out["eer"] == pytest.approx(_plain_eer(plain, plain_same), abs=1e-12)
    for key in ("auc", "eer", "verification_pairs", "verification_pairs_sampled"):
      assert both[score][key] == pytest.approx(out[key], abs=1e-12), (score, key)


def test_sampled_pair_scores_are_the_block_scores_in_float32():
  rng = np.random.default_rng(10)
  mu_q, mu_g = rng.normal(size=(40, 6)), rng.normal(size=(30, 6))
  sig_q, sig_g = rng.uniform(0.1, 2, size=(40, 6)), rng.uniform(0.1, 2, size=(30, 6))
  code_q, code_g = rng.integers(0, 3, 40).astype(np.int32), rng.integers(0, 3, 30).astype(np.int32)
  rows, cols = retrieval.sample_pairs(40, 30, 300, seed=1)
  for use_jax in (False, True):
    scorer = ranking.BlockScorer(mu_q, sig_q, mu_g, sig_g, code_q, code_g, retrieval.SCORES, False, use_jax)
    full = {k: np.concatenate([blocks[k][0] for _, _, blocks in scorer]) for k in retrieval.SCORES}
    got = ranking.pair_scores(mu_q, sig_q, mu_g, sig_g, rows, cols, retrieval.SCORES, use_jax, chunk=17)
    for k in retrieval.SCORES:
      assert got[k].dtype == full[k].dtype == (np.float32 if use_jax else np.float64)
      tol = 4e-6 * np.abs(full[k]).max() if use_jax else 1e-13  # float32: summation order only
      np.testing.assert_allclose(got[k], full[k][rows, cols], rtol=tol, atol=tol, err_msg=k)
  big = rng.normal(size=(2100, 3))  # 4.4M pairs: the float32 size class, as the blocks would be
  s, _, sampled = retrieval.verification_pairs(big, big, np.arange(2100) % 7, np.arange(2100) % 7,
                                               max_pairs=5000, exclude_self=True)
  assert sampled and s.dtype == np.float32 and abs(len(s) - 5000) < 5 * math.sqrt(5000)


def test_verification_summary_of_float32_ties_matches_sklearn():
  from sklearn import metrics as skm
  rng = np.random.default_rng(8)
  for trial in range(4):
    same = rng.random(2000) < 0.2
    s = (rng.normal(size=2000) + same).astype(np.float32)
    if trial % 2:
      s = np.round(s, 1).astype(np.float32)  # ties, and -0.0 beside 0.0
    out = retrieval._verification_summary(s, same, False)
    assert out["auc"] == pytest.approx(skm.roc_auc_score(same, s.astype(np.float64)), abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(same, s.astype(np.float64))
    i = int(np.argmax(fpr + tpr >= 1.0))  # the first ROC point past the EER line, then interpolate
    a = (1.0 - tpr[i - 1] - fpr[i - 1]) / ((fpr[i] - fpr[i - 1]) + (tpr[i] - tpr[i - 1]))
    assert out["eer"] == pytest.approx(fpr[i - 1] + a * (fpr[i] - fpr[i - 1]), abs=1e-12)
