"""DBSCAN, the k-distance knee, nearest identities and t-SNE against independent computations."""

import math

import numpy as np
import pytest
from sklearn import cluster, metrics

from mmvae.analysis import latent_space


def _blobs(seed=0, n_per=15, ids=4, spread=0.15, dim=5):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(ids, dim)) * 4
  labels = np.repeat(np.arange(ids), n_per)
  return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def test_knee_eps_matches_a_plain_loop():
  x, _ = _blobs()
  k = 3
  kd = []
  for i in range(len(x)):
    d = sorted(math.dist(x[i], x[j]) for j in range(len(x)))  # includes itself at 0
    kd.append(d[k - 1])
  kd.sort()
  best, best_gap = None, -1.0
  for i, v in enumerate(kd):
    gap = i / (len(kd) - 1) - (v - kd[0]) / (kd[-1] - kd[0])
    if gap > best_gap:
      best, best_gap = v, gap
  np.testing.assert_allclose(latent_space.k_distances(x, k), kd, rtol=1e-9)
  assert latent_space.knee_eps(x, k) == pytest.approx(best)


def test_dbscan_summary_matches_sklearn_and_recovers_blobs():
  x, labels = _blobs()
  x = np.vstack([x, [[50.0] * 5]])  # one far outlier: noise
  labels = np.r_[labels, 9]
  res = latent_space.dbscan(x, labels, min_samples=3)
  ref = cluster.DBSCAN(eps=res["eps"], min_samples=3).fit_predict(x)
  np.testing.assert_array_equal(res["assignment"], ref)
  assert res["noise_fraction"] == pytest.approx(sum(1 for v in ref if v == -1) / len(ref))
  assert res["clusters"] == len({v for v in ref if v != -1}) == 4
  assert res["ari"] == pytest.approx(metrics.adjusted_rand_score(labels, ref))
  assert res["nmi"] == pytest.approx(metrics.normalized_mutual_info_score(labels, ref))
  assert res["ari"] > 0.95 and res["nmi"] > res["nmi_chance"] + 0.5
  fixed = latent_space.dbscan(x, labels, eps=0.01, min_samples=3)
  assert fixed["eps"] == 0.01 and fixed["noise_fraction"] == 1.0 and fixed["clusters"] == 0


def _plain_knee(x, k):
  """The k-distance knee by plain loops over every row, copies included (the old eps rule)."""
  kd = sorted(sorted(math.dist(a, b) for b in x)[k - 1] for a in x)
  gaps = [i / (len(kd) - 1) - (v - kd[0]) / (kd[-1] - kd[0]) for i, v in enumerate(kd)]
  return kd[gaps.index(max(gaps))]


def test_copies_do_not_move_eps_but_are_clustered_and_counted():
  x, labels = _blobs()
  # Like face latents: 40 of the 60 points come three times (utterances sharing their video's frames).
  copies = np.r_[np.arange(60), np.repeat(np.arange(40), 2)]
  order = np.random.default_rng(3).permutation(len(copies))
  rep, rep_labels = x[copies[order]], labels[copies[order]]
  assert _plain_knee(rep.tolist(), 3) == 0.0  # what the knee of all rows gives: eps collapses
  assert _plain_knee(x.tolist(), 3) > 0.05
  rows, dups = latent_space.distinct(rep)
  assert dups == 80 and len(rows) == 60
  np.testing.assert_array_equal(np.unique(rows, axis=0), np.unique(x, axis=0))
  plain = latent_space.dbscan(x, labels, min_samples=3)
  res = latent_space.dbscan(rep, rep_labels, min_samples=3)
  assert plain["duplicates"] == 0 and res["duplicates"] == 80
  assert res["eps"] == plain["eps"] == pytest.approx(_plain_knee(x.tolist(), 3))
  # Every row, copies included, is clustered with that eps, exactly as sklearn does it.
  ref = cluster.DBSCAN(eps=res["eps"], min_samples=3).fit_predict(rep)
  np.testing.assert_array_equal(res["assignment"], ref)
  # A copied point is a core point by itself (copies count toward min_samples), so a few isolated
  # triples may form their own small clusters; the identities still dominate.
  assert len(res["assignment"]) == 140 and 4 <= res["clusters"] <= 8 and res["ari"] > 0.85
  # Last-bit differences (an encoder batching a repeated input differently) are still copies...
  noisy = rep + 1e-12 * np.random.default_rng(4).normal(size=rep.shape)
  res_noisy = latent_space.dbscan(noisy, rep_labels, min_samples=3)
  assert res_noisy["duplicates"] == 80 and res_noisy["eps"] == pytest.approx(plain["eps"], rel=1e-9)
  # ...but close, different points are not.
  assert latent_space.distinct(np.vstack([x, x[:5] + 1e-3]))[1] == 0


def test_nearest_identities_match_brute_force():
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(7), 3)
  face, voice = rng.normal(size=(21, 4)), rng.normal(size=(21, 4))

  def centroid(x, i):
    rows = [x[j] for j in range(len(labels)) if labels[j] == i]
    return [sum(r[d] for r in rows) / len(rows) for d in range(4)]

  def cos(a, b):
    return sum(p * q for p, q in zip(a, b)) / math.sqrt(sum(p * p for p in a) * sum(q * q for q in b))

  for query, gallery in ((face, voice), (voice, face)):
    out = latent_space.nearest_identities(query, gallery, labels, top=5)
    for i in range(7):
      sims = sorted(((cos(centroid(query, i), centroid(gallery, j)), j) for j in range(7)), reverse=True)
      assert out["nearest"][i] == [j for _, j in sims[:5]]
      assert out["own_rank"][i] == 1 + [j for _, j in sims].index(i)


def test_tsne_and_figures(tmp_path):
  x, labels = _blobs(n_per=6, ids=3)
  assert latent_space.adapted_perplexity(18) == pytest.approx(17 / 3)
  assert latent_space.adapted_perplexity(1000) == 30.0
  y = latent_space.tsne(x)
  assert y.shape == (18, 2) and np.isfinite(y).all()
  names = {0: "a", 1: "b", 2: "c"}
  three = latent_space.tsne(np.vstack([x, x + 0.01, x - 0.01]))
  latent_space.plot_embedding(tmp_path / "t.png", {"audio": y, "face": y, "text": y, "joint": three}, labels, names,
                              "t", joint={"joint": ["audio", "face", "text"]})
  res = {s: latent_space.dbscan(x, labels) for s in ("audio", "face")}
  kd = {s: latent_space.k_distances(x, 3) for s in res}
  latent_space.plot_dbscan(tmp_path / "d.png", {"audio": y, "face": y}, res, kd)
  assert (tmp_path / "t.png").stat().st_size > 5000 and (tmp_path / "d.png").stat().st_size > 5000
