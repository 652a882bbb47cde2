"""The M-CVS paper's mAP@K (divided by the relevant items IN the top K) against loops, hand examples and simulation."""

import itertools
import math

import numpy as np
import pytest

from mmvae.analysis import markdown
from mmvae.metrics import chance, retrieval


def _ap_top(ranked_relevant, k):
  """AP = (1/n) sum_{i<=k} P(i) rel(i), n = relevant items in the top k (0 when none), by a plain loop."""
  hits, total = 0, 0.0
  for pos, rel in enumerate(ranked_relevant[:k], start=1):
    if rel:
      hits += 1
      total += hits / pos
  return total / hits if hits else 0.0


def _one_query(gallery_values, gallery_labels, k, query_label=0):
  """rank_queries on 1-d features at distances `gallery_values` from a query at 0 (euclidean: equal values tie)."""
  g = np.asarray(gallery_values, float)[:, None]
  per = retrieval.rank_queries(np.zeros((1, 1)), g, np.array([query_label]), np.asarray(gallery_labels),
                               score="euclidean", ap_k=k, progress=False)
  return per


@pytest.mark.parametrize("ap_k", [1, 3, 7, 20, 40, 100])
def test_continuous_scores_match_a_plain_loop(ap_k):
  rng = np.random.default_rng(10)
  q, g = rng.normal(size=(25, 4)), rng.normal(size=(40, 4))
  q_lab, g_lab = rng.integers(0, 5, 25), rng.integers(0, 5, 40)
  q_lab[0] = 9  # a query with nothing relevant stays NaN
  per = retrieval.rank_queries(q, g, q_lab, g_lab, ap_k=ap_k, chunk_elems=100, progress=False)
  s = retrieval.score_matrix(q, g)
  for i in range(25):
    order = sorted(range(40), key=lambda j: -s[i, j])
    ranked = [g_lab[j] == q_lab[i] for j in order]
    if not any(ranked):
      assert np.isnan(per[f"ap_top@{ap_k}"][i])
      continue
    assert per[f"ap_top@{ap_k}"][i] == pytest.approx(_ap_top(ranked, ap_k), abs=1e-12), i
  if ap_k >= 40:  # the cut-off keeps every item: the paper's mAP@K is the full AP
    valid = per["n_relevant"] > 0
    np.testing.assert_allclose(per[f"ap_top@{ap_k}"][valid], per["ap"][valid], atol=1e-12)
  summary = retrieval.summarise(per)
  assert f"map_top@{ap_k}" in summary and f"map_top@{ap_k}_chance" in summary and f"map@{ap_k}" in summary


def test_hand_examples():
  # No ties, K = 5, ranking R N R N N | R N: relevant at ranks 1 and 3 within the top 5 (the R at 6 is cut).
  # P(1) = 1, P(3) = 2/3, n = 2 -> AP = (1 + 2/3) / 2 = 5/6; the min(R, K) version divides by 3 -> 5/9.
  per = _one_query([1, 2, 3, 4, 5, 6, 7], [0, 1, 0, 1, 1, 0, 1], k=5)
  assert per["ap_top@5"][0] == pytest.approx(5 / 6, abs=1e-12)
  assert per["ap@5"][0] == pytest.approx(5 / 9, abs=1e-12)
  # Ties across the cut-off, K = 3: R at rank 1, then a tied group {R, R, N} at ranks 2-4.
  # N at 2: R N R | R -> (1 + 2/3) / 2 = 5/6;  N at 3: R R N | R -> (1 + 1) / 2 = 1;  N at 4: R R R -> 1.
  # Expected: (5/6 + 1 + 1) / 3 = 17/18 (the min(R, K) version: (5/9 + 2/3 + 1) / 3 = 20/27).
  per = _one_query([1, 2, 2, 2], [0, 0, 0, 1], k=3)
  assert per["ap_top@3"][0] == pytest.approx(17 / 18, abs=1e-12)
  assert per["ap@3"][0] == pytest.approx(20 / 27, abs=1e-12)
  # N at rank 1, then tied {R, N, N} at ranks 2-4, K = 3: R at 2 -> 1/2, at 3 -> 1/3, at 4 -> cut, AP = 0.
  # Expected: (1/2 + 1/3 + 0) / 3 = 5/18.
  per = _one_query([1, 2, 2, 2], [1, 0, 1, 1], k=3)
  assert per["ap_top@3"][0] == pytest.approx(5 / 18, abs=1e-12)


def _tie_orders(scores):
  levels = sorted(set(scores), reverse=True)
  groups = [[i for i, s in enumerate(scores) if s == lv] for lv in levels]
  for perms in itertools.product(*(itertools.permutations(grp) for grp in groups)):
    yield [i for p in perms for i in p]


@pytest.mark.parametrize("ap_k", [1, 2, 3, 4, 6, 9])
def test_ties_match_every_tie_order(ap_k):
  rng = np.random.default_rng(11)
  n, m = 14, 8
  q = rng.integers(0, 3, (n, 1)).astype(float)  # few distinct values: large tied groups straddle the cut-off
  g = rng.integers(0, 3, (m, 1)).astype(float)
  q_lab, g_lab = rng.integers(0, 2, n), rng.integers(0, 2, m)
  per = retrieval.rank_queries(q, g, q_lab, g_lab, score="euclidean", ap_k=ap_k, chunk_elems=16, progress=False)
  for i in range(n):
    scores = [-abs(q[i, 0] - g[j, 0]) for j in range(m)]
    relevant = [q_lab[i] == g_lab[j] for j in range(m)]
    vals = [_ap_top([relevant[j] for j in order], ap_k) for order in _tie_orders(scores)]
    want = sum(vals) / len(vals) if any(relevant) else float("nan")
    got = per[f"ap_top@{ap_k}"][i]
    assert (math.isnan(want) and np.isnan(got)) or got == pytest.approx(want, abs=1e-12), i


@pytest.mark.parametrize("m,r,k", [(20, 4, 5), (20, 20, 5), (9, 2, 3), (60, 6, 50), (12, 3, 30)])
def test_constant_scores_give_exactly_chance(m, r, k):
  labels = np.r_[np.zeros(r, int), np.ones(m - r, int)]
  per = retrieval.rank_queries(np.ones((1, 2)), np.ones((m, 2)), np.array([0]), labels, ap_k=k, progress=False)
  assert per[f"ap_top@{k}"][0] == pytest.approx(per[f"ap_top@{k}_chance"][0], abs=1e-12)
  assert per[f"ap_top@{k}_chance"][0] == chance.average_precision_top_k(m, r, k)


@pytest.mark.parametrize("m,r,k", [(1, 1, 1), (4, 1, 2), (5, 2, 2), (6, 3, 4), (7, 3, 1), (7, 2, 5), (6, 6, 3),
                                   (5, 2, 9)])
def test_chance_equals_the_mean_over_every_permutation(m, r, k):
  rel = [True] * r + [False] * (m - r)
  vals = [_ap_top(list(p), k) for p in itertools.permutations(rel)]  # every ranking, equally likely
  assert chance.average_precision_top_k(m, r, k) == pytest.approx(sum(vals) / len(vals), abs=1e-12)


@pytest.mark.parametrize("m,r,k", [(100, 5, 50), (200, 3, 50), (80, 20, 10), (30, 1, 50)])
def test_chance_matches_simulation(m, r, k):
  rng = np.random.default_rng(12)
  sims = 20000
  keys = rng.random((sims, m))
  rel_SxM = np.argsort(keys, axis=1) < r  # the items 0..r-1 are relevant: a uniformly random ranking of them
  hits = np.cumsum(rel_SxM[:, :k], axis=1)
  prec_sum = np.sum(rel_SxM[:, :k] * hits / np.arange(1, min(k, m) + 1), axis=1)
  ap = np.where(hits[:, -1] > 0, prec_sum / np.maximum(hits[:, -1], 1), 0.0)
  assert chance.average_precision_top_k(m, r, k) == pytest.approx(ap.mean(), abs=4 * ap.std() / math.sqrt(sims))
  # The paper's definition never scores below the min(R, K) one (it divides by fewer items).
  assert chance.average_precision_top_k(m, r, k) >= chance.average_precision_at_k(m, r, k) - 1e-12


def test_hypergeom_pmf_sums_to_one_and_matches_counts():
  for t, r, p in [(7, 3, 4), (5, 5, 2), (6, 1, 6), (8, 0, 3), (9, 6, 5)]:
    pmf = chance.hypergeom_pmf(t, r, p)
    assert pmf.sum() == pytest.approx(1.0)
    for j, v in enumerate(pmf):
      assert v == pytest.approx(math.comb(r, j) * math.comb(t - r, p - j) / math.comb(t, p), abs=1e-14)


def _metrics():
  """A hand-built metrics dict over three modalities: value = 0.1 * (query index) + 0.01 * (retrieved index)."""
  names = ["audio", "image", "text"]
  metrics = {}
  for i, q in enumerate(names):
    for j, g in enumerate(names):
      metrics[f"retrieval.{q}_to_{g}.map_top@50"] = 0.1 * (i + 1) + 0.01 * (j + 1)
      metrics[f"retrieval.{q}_to_{g}.map_top@50_chance"] = 0.05
  return names, metrics


def test_pair_table_of_a_hand_built_dict():
  names, metrics = _metrics()
  rows, row_avg, overall = markdown.pair_table(metrics, names, "map_top@50")
  want = [[None, 0.12, 0.13], [0.21, None, 0.23], [0.31, 0.32, None]]
  for i in range(3):
    for j in range(3):
      if i == j:
        assert math.isnan(rows[i][j])  # the within-modality value is in the dict but not a cross-modal pair
      else:
        assert rows[i][j] == pytest.approx(want[i][j])
  assert row_avg == pytest.approx([0.125, 0.22, 0.315])
  assert overall == pytest.approx((0.12 + 0.13 + 0.21 + 0.23 + 0.31 + 0.32) / 6)
  # A missing pair is left out of the averages, and the overall is over pairs, not over row averages.
  del metrics["retrieval.audio_to_text.map_top@50"]
  rows, row_avg, overall = markdown.pair_table(metrics, names, "map_top@50")
  assert math.isnan(rows[0][2]) and row_avg[0] == pytest.approx(0.12)
  assert overall == pytest.approx((0.12 + 0.21 + 0.23 + 0.31 + 0.32) / 5)
  rows, _, overall = markdown.pair_table({"x.audio_to_image.mrr": 0.5}, ["audio", "image"], "mrr", prefix="x")
  assert rows[0][1] == 0.5 and math.isnan(rows[1][0]) and overall == 0.5


def test_report_shows_the_paper_table():
  names, metrics = _metrics()
  lines = markdown._retrieval_lines(metrics, names, {n: n for n in names})
  text = "\n".join(lines)
  table = text.split(f"**{markdown.PAPER_TABLE[1]}**")[1].strip().splitlines()
  assert table[0] == "| query \\ retrieved | audio | image | text | Average |"
  assert table[2] == "| audio | \u2013 | 0.1200 | 0.1300 | 0.1250 |"
  assert table[3] == "| image | 0.2100 | \u2013 | 0.2300 | 0.2200 |"
  assert table[4] == "| text | 0.3100 | 0.3200 | \u2013 | 0.3150 |"
  assert table[5] == "| Average | 0.2600 | 0.2200 | 0.1800 | 0.2200 |"
  assert table[7] == ("Chance (a uniformly random ranking of the same gallery), mean over the cross-modal pairs: "
                      "0.0500.")
  # One modality has no cross-modal pair: no paper table.
  one = markdown._retrieval_lines({"retrieval.audio_to_audio.map_top@50": 0.3}, ["audio"], {"audio": "audio"})
  assert markdown.PAPER_TABLE[1] not in "\n".join(one)
