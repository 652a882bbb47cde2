"""Retrieval metrics against plain-Python loops over every tie order, scikit-learn, and simulation."""

import itertools
import math

import numpy as np
import pytest
from scipy import interpolate, optimize
from sklearn import metrics as skm

from mmvae.metrics import chance, retrieval


def _tie_orders(scores):
  """Every ranking (list of item indices) consistent with descending scores."""
  levels = sorted(set(scores), reverse=True)
  groups = [[i for i, s in enumerate(scores) if s == lv] for lv in levels]
  for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
    yield [i for p in perms for i in p]


def _brute(scores, relevant, ks=(1, 2, 5), ap_k=3):
  """Metrics of one query averaged over all tie orders, by plain loops."""
  totals, count = {}, 0
  n_rel = sum(relevant)
  for ranking in _tie_orders(scores):
    count += 1
    hits, precisions, first = 0, [], None
    for pos, item in enumerate(ranking, start=1):
      if relevant[item]:
        hits += 1
        precisions.append((pos, hits / pos))
        if first is None:
          first = pos
    top = [p for pos, p in precisions if pos <= ap_k]
    vals = {"mrr": 1.0 / first, "ap": sum(p for _, p in precisions) / n_rel,
            f"ap@{ap_k}": sum(top) / min(n_rel, ap_k), f"ap_top@{ap_k}": sum(top) / len(top) if top else 0.0}
    for k in ks:
      vals[f"recall@{k}"] = 1.0 if first <= k else 0.0
    for key, v in vals.items():
      totals[key] = totals.get(key, 0.0) + v
  return {k: v / count for k, v in totals.items()}


def _brute_matching(scores, relevant, negative):
  wins, pairs = 0.0, 0
  for a in range(len(scores)):
    for b in range(len(scores)):
      if relevant[a] and negative[b]:
        pairs += 1
        wins += 1.0 if scores[a] > scores[b] else 0.5 if scores[a] == scores[b] else 0.0
  return wins / pairs if pairs else float("nan")


def test_ranking_metrics_match_brute_force_with_ties():
  rng = np.random.default_rng(0)
  n, m = 9, 7
  # 1-d features with euclidean score give integer-valued scores, so ties are frequent.
  q = rng.integers(0, 4, (n, 1)).astype(float)
  g = rng.integers(0, 4, (m, 1)).astype(float)
  q_lab, g_lab = rng.integers(0, 3, n), rng.integers(0, 3, m)
  q_lab[0], g_lab[0] = 5, 5  # one query with a single relevant item
  q_grp, g_grp = rng.integers(0, 2, n), rng.integers(0, 2, m)
  per = retrieval.rank_queries(q, g, q_lab, g_lab, score="euclidean", ks=(1, 2, 5), ap_k=3,
                               query_groups=q_grp, gallery_groups=g_grp, chunk_elems=10)
  checked = 0
  for i in range(n):
    scores = [-abs(q[i, 0] - g[j, 0]) for j in range(m)]
    relevant = [q_lab[i] == g_lab[j] for j in range(m)]
    if not any(relevant):
      assert np.isnan(per["mrr"][i]) and per["n_relevant"][i] == 0
      continue
    checked += 1
    want = _brute(scores, relevant)
    for key, v in want.items():
      assert per[key][i] == pytest.approx(v, abs=1e-12), (i, key)
    negative = [not r for r in relevant]
    assert per["matching_1v2"][i] == pytest.approx(_brute_matching(scores, relevant, negative))
    neg_g = [negative[j] and q_grp[i] == g_grp[j] for j in range(m)]
    got = per["matching_1v2_gender"][i]
    want_g = _brute_matching(scores, relevant, neg_g)
    assert (np.isnan(got) and math.isnan(want_g)) or got == pytest.approx(want_g)
  assert checked >= 6


def test_exclude_self_equals_removing_the_query_with_its_label():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(12, 3))
  lab = rng.integers(0, 3, 12)
  per = retrieval.rank_queries(x, x, lab, lab, exclude_self=True, ks=(1, 3), ap_k=4)
  for i in range(12):
    keep = [j for j in range(12) if j != i]
    scores = [float(x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])) for j in keep]
    relevant = [lab[j] == lab[i] for j in keep]
    if not any(relevant):
      assert per["n_relevant"][i] == 0
      continue
    want = _brute(scores, relevant, ks=(1, 3), ap_k=4)
    for key, v in want.items():
      assert per[key][i] == pytest.approx(v, abs=1e-12), (i, key)
    assert per["mrr_chance"][i] == pytest.approx(chance.mrr(11, sum(relevant)))


def test_chunking_and_direction_do_not_change_results():
  rng = np.random.default_rng(2)
  a, f = rng.normal(size=(30, 4)), rng.normal(size=(25, 4))
  la, lf = rng.integers(0, 4, 30), rng.integers(0, 4, 25)
  big = retrieval.rank_queries(a, f, la, lf, chunk_elems=10_000)
  small = retrieval.rank_queries(a, f, la, lf, chunk_elems=30)
  for key in big:
    np.testing.assert_allclose(big[key], small[key])
  # The reverse direction must rank the transposed score matrix (no stale index from the first).
  rev = retrieval.rank_queries(f, a, lf, la)
  s = retrieval.score_matrix(a, f).T
  for i in range(25):
    order = sorted(range(30), key=lambda j: -s[i, j])
    first = next(pos for pos, j in enumerate(order, 1) if la[j] == lf[i]) if (la == lf[i]).any() else None
    if first is not None:
      assert rev["mrr"][i] == pytest.approx(1.0 / first)
  assert retrieval.mean_reciprocal_rank(f, a, lf, la) == pytest.approx(np.nanmean(rev["mrr"]))


def test_w2_score_is_exact_gaussian_wasserstein():
  rng = np.random.default_rng(3)
  mu_a, lv_a, mu_b, lv_b = (rng.normal(size=(4, 3)) for _ in range(4))
  s = retrieval.score_matrix(retrieval.features(mu_a, lv_a, "w2"), retrieval.features(mu_b, lv_b, "w2"), "w2")
  for i in range(4):
    for j in range(4):
      w2sq = np.sum((mu_a[i] - mu_b[j]) ** 2) + np.sum((np.exp(lv_a[i] / 2) - np.exp(lv_b[j] / 2)) ** 2)
      assert s[i, j] == pytest.approx(-math.sqrt(w2sq))


@pytest.mark.parametrize("m,r", [(30, 1), (30, 4), (12, 12)])
def test_chance_levels_match_simulation(m, r):
  rng = np.random.default_rng(4)
  sims = 20000
  mrr = rec5 = ap = ap10 = 0.0
  for _ in range(sims):
    rel = np.zeros(m, bool)
    rel[rng.choice(m, r, replace=False)] = True  # a uniformly random ranking of the relevant items
    pos = np.flatnonzero(rel) + 1
    prec = np.arange(1, r + 1) / pos
    mrr += 1 / pos[0]
    rec5 += pos[0] <= 5
    ap += prec.mean()
    ap10 += prec[pos <= 10].sum() / min(r, 10)
  tol = 0.012
  assert chance.mrr(m, r) == pytest.approx(mrr / sims, abs=tol)
  assert chance.recall_at_k(m, r, 5) == pytest.approx(rec5 / sims, abs=tol)
  assert chance.average_precision(m, r) == pytest.approx(ap / sims, abs=tol)
  assert chance.average_precision_at_k(m, r, 10) == pytest.approx(ap10 / sims, abs=tol)
  assert chance.first_hit_pmf(m, r).sum() == pytest.approx(1.0)


def test_constant_scores_give_exactly_chance():
  lab = np.repeat(np.arange(4), 5)
  out = retrieval.retrieval_metrics(np.ones((20, 2)), np.ones((20, 2)), lab, lab)
  for key in ("mrr", "recall@1", "recall@5", "map", "map@50", "map_top@50", "matching_1v2", "auc"):
    assert out[key] == pytest.approx(out[f"{key}_chance"], abs=1e-12), key


def _sk_eer(scores, same):
  fpr, tpr, _ = skm.roc_curve(same, scores)
  return optimize.brentq(lambda x: 1.0 - x - interpolate.interp1d(fpr, tpr)(x), 0.0, 1.0)


def test_auc_and_eer_match_sklearn():
  rng = np.random.default_rng(5)
  for trial in range(5):
    same = rng.random(300) < 0.3
    scores = rng.normal(size=300) + same * rng.uniform(0, 2)
    if trial % 2:
      scores = np.round(scores, 1)  # ties
    assert retrieval.roc_auc(scores, same) == pytest.approx(skm.roc_auc_score(same, scores))
    assert retrieval.equal_error_rate(scores, same) == pytest.approx(_sk_eer(scores, same), abs=1e-6)


def test_verification_uses_every_pair_or_a_seeded_sample():
  rng = np.random.default_rng(6)
  a, f = rng.normal(size=(15, 3)), rng.normal(size=(10, 3))
  la, lf = rng.integers(0, 3, 15), rng.integers(0, 3, 10)
  out = retrieval.verification(a, f, la, lf)
  s = retrieval.score_matrix(a, f)
  assert out["auc"] == pytest.approx(skm.roc_auc_score((la[:, None] == lf[None]).ravel(), s.ravel()))
  assert out["verification_pairs"] == 150 and not out["verification_pairs_sampled"]
  s1 = retrieval.verification(a, f, la, lf, max_pairs=100, seed=1)
  s2 = retrieval.verification(a, f, la, lf, max_pairs=100, seed=1, chunk_elems=20)
  assert s1 == s2 and s1["verification_pairs_sampled"] and 60 < s1["verification_pairs"] < 140


def _plain_ranking_metrics(query, gallery, q_lab, g_lab, same_set, k=50):
  """MRR and mAP@k of cosine retrieval by plain loops (continuous scores: no ties); the query left out when same_set."""
  def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

  rr, ap, ap_top = [], [], []
  for i, qv in enumerate(query):
    items = [(cos(qv, gv), g_lab[j] == q_lab[i]) for j, gv in enumerate(gallery) if not (same_set and j == i)]
    ranked = [rel for _, rel in sorted(items, key=lambda t: -t[0])]
    n_rel = sum(ranked)
    if not n_rel:
      continue
    rr.append(1.0 / (ranked.index(True) + 1))
    hits, precision_sum = 0, 0.0
    for pos, rel in enumerate(ranked[:k], start=1):
      if rel:
        hits += 1
        precision_sum += hits / pos
    ap.append(precision_sum / min(n_rel, k))
    ap_top.append(precision_sum / hits if hits else 0.0)
  return sum(rr) / len(rr), sum(ap) / len(ap), sum(ap_top) / len(ap_top)


def _plain_chance(q_lab, g_lab, same_set, k=50):
  """E[MRR] and E[AP@k] of a uniformly random ranking, by sums over positions (not the library's closed forms)."""
  mrrs, aps = [], []
  for i, lab in enumerate(q_lab):
    m = len(g_lab) - (1 if same_set else 0)
    r = sum(1 for j, g in enumerate(g_lab) if g == lab and not (same_set and j == i))
    # P(first relevant at position p) = C(m-p, r-1) / C(m, r); E[rel_p * precision_p] = r/m * (1 + (p-1)(r-1)/(m-1)) / p
    mrrs.append(sum(math.comb(m - p, r - 1) / math.comb(m, r) / p for p in range(1, m - r + 2)))
    aps.append(sum(r / m * (1 + (p - 1) * (r - 1) / (m - 1)) / p for p in range(1, min(k, m) + 1)) / min(r, k))
  return sum(mrrs) / len(mrrs), sum(aps) / len(aps)


def test_every_ordered_pair_of_three_modalities_matches_plain_loops(tmp_path):
  from mmvae import modalities
  from mmvae.analysis import markdown, report
  rng = np.random.default_rng(7)
  n, ids = 66, 6  # galleries beyond 50 items, so the @50 cut-off matters
  labels = np.repeat(np.arange(ids), n // ids)
  centres = rng.normal(size=(ids, 5))
  names = ["audio", "image", "text"]
  latents = {"label": labels}
  for k, m in enumerate(names):  # each modality its own noise level around shared class centres
    latents[f"{m}_mu"] = centres[labels] + (0.8 + 0.6 * k) * rng.normal(size=(n, 5))
    latents[f"{m}_logvar"] = rng.normal(size=(n, 5))
  metrics = report.retrieval_section(latents, names)
  for q in names:
    for g in names:
      mrr, map50, map_top50 = _plain_ranking_metrics(latents[f"{q}_mu"].tolist(), latents[f"{g}_mu"].tolist(),
                                                     labels.tolist(), labels.tolist(), same_set=q == g)
      mrr_c, map50_c = _plain_chance(labels.tolist(), labels.tolist(), same_set=q == g)
      key = f"retrieval.{q}_to_{g}"
      assert metrics[f"{key}.mrr"] == pytest.approx(mrr, abs=1e-12), key
      assert metrics[f"{key}.map@50"] == pytest.approx(map50, abs=1e-12), key
      assert metrics[f"{key}.map_top@50"] == pytest.approx(map_top50, abs=1e-12), key
      assert metrics[f"{key}.mrr_chance"] == pytest.approx(mrr_c, abs=1e-12), key
      assert metrics[f"{key}.map@50_chance"] == pytest.approx(map50_c, abs=1e-12), key
      for prefix in ("retrieval_euclidean", "retrieval_w2"):
        assert f"{prefix}.{q}_to_{g}.mrr_chance" in metrics
  assert metrics["retrieval.audio_to_image.mrr"] != metrics["retrieval.image_to_audio.mrr"]
  # report.md's query-by-retrieval tables: row = query, column = gallery, value (chance).
  specs = {m: modalities.Modality(m, "vector", (5,), "float32") for m in names}
  path = tmp_path / "report.md"
  markdown.write_report(path, {"examples": n, "identities": ids, "model.can_generate": False, **metrics}, specs,
                        {}, near={}, id_names={})
  text = path.read_text()
  for title, metric in (("MRR", "mrr"), ("mAP@50 over min(R, 50)", "map@50")):
    table = text.split(f"**{title}**")[1].strip().splitlines()
    assert table[0] == "| query \\ gallery | audio | image | text |"
    for q, line in zip(names, table[2:5]):
      cells = [c.strip() for c in line.strip("|").split("|")]
      assert cells[0] == q
      for g, cell in zip(names, cells[1:]):
        key = f"retrieval.{q}_to_{g}.{metric}"
        assert cell == f"{metrics[key]:.4f} ({metrics[f'{key}_chance']:.4f})"
