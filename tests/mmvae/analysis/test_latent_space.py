"""DBSCAN, the k-distance knee, nearest identities and t-SNE against independent computations."""

import math

import numpy as np
import pytest
from sklearn import cluster, metrics

from mmvae.analysis import latent_space, neighbours


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


def _clustered(seed, n, ids, dim, spread=0.6):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, ids, n)
  return rng.normal(size=(ids, dim))[labels] * 3 + spread * rng.normal(size=(n, dim)), labels


def test_stratified_sample_keeps_each_identitys_share_and_follows_the_seed():
  rng = np.random.default_rng(5)
  labels = rng.choice(40, size=3001, p=rng.dirichlet(np.ones(40)))  # uneven identities, some tiny
  cap = 500
  a = latent_space.stratified_sample(labels, cap, seed=1)
  assert len(a) == cap and len(set(a.tolist())) == cap and np.all(np.diff(a) > 0)
  for c in np.unique(labels):  # each identity within one point of its proportional count
    assert abs(np.sum(labels[a] == c) - np.sum(labels == c) * cap / len(labels)) < 1.0, c
  np.testing.assert_array_equal(latent_space.stratified_sample(labels, cap, seed=1), a)
  b = latent_space.stratified_sample(labels, cap, seed=2)
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(latent_space.stratified_sample(labels, 5000, seed=1), np.arange(3001))


def test_index_neighbours_match_a_float64_brute_force():
  x, _ = _clustered(0, 300, 12, 20)
  x[7] = x[3]  # an exact copy: distance 0 to another row
  dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
  idx, d = neighbours.knn(x, 6, include_self=False)
  for i in range(len(x)):
    order = [j for j in np.lexsort((np.arange(len(x)), dist[i])) if j != i][:6]
    np.testing.assert_array_equal(idx[i], order)
    np.testing.assert_allclose(d[i], dist[i, order], rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(latent_space.k_distances(x, 4), np.sort(np.sort(dist, 1)[:, 3]), rtol=1e-12)
  graph = neighbours.radius_graph(x, 2.0)
  want = (dist <= 2.0) & ~np.eye(len(x), dtype=bool)
  assert graph.nnz == want.sum()  # stored entries, the copy's explicit 0 included
  for i in (3, 7, 100):
    row = slice(graph.indptr[i], graph.indptr[i + 1])
    np.testing.assert_array_equal(graph.indices[row], np.flatnonzero(want[i]))
    np.testing.assert_allclose(graph.data[row], dist[i, want[i]], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_dbscan_from_the_index_equals_sklearn_brute_force(seed):
  x, labels = _clustered(seed, 600, 30, 40, spread=0.9)
  x = np.vstack([x, x[:50]])  # copies count toward min_samples
  labels = np.r_[labels, labels[:50]]
  knee = latent_space.dbscan(x, labels, min_samples=4)
  assert 5 <= knee["clusters"] and knee["duplicates"] == 50
  for eps in (knee["eps"], 0.5 * knee["eps"], 1.3 * knee["eps"]):
    ours = latent_space.dbscan(x, labels, eps=eps, min_samples=4)["assignment"]
    for algorithm in ("brute", "kd_tree"):
      ref = cluster.DBSCAN(eps=eps, min_samples=4, algorithm=algorithm).fit_predict(x)
      np.testing.assert_array_equal(ours, ref)


def test_latent_section_states_the_sample_in_metrics_figures_and_report(tmp_path):
  from mmvae import modalities
  from mmvae.analysis import markdown, report
  x, labels = _clustered(3, 120, 6, 10)
  latents = {"label": labels, "audio_mu": x, "face_mu": x + 0.1,
             "audio_logvar": np.zeros_like(x), "face_logvar": np.zeros_like(x)}
  acfg = dict(report._analysis_cfg({}), max_points=60)  # 60 of 120 points; joint: 30 examples
  out, near = report.latent_section(latents, ["audio", "face"], {}, acfg, tmp_path)
  assert out["clusters.audio.points"] == 120 and out["clusters.audio.points_shown"] == 60
  assert out["clusters.joint.points"] == 240 and out["clusters.joint.points_shown"] == 60
  emb = np.load(tmp_path / "embeddings.npz")
  rows, joint_rows = emb["rows_audio"], emb["rows_joint"]
  np.testing.assert_array_equal(rows, latent_space.stratified_sample(labels, 60, 0))
  np.testing.assert_array_equal(joint_rows, latent_space.stratified_sample(labels, 30, 0))
  assert emb["tsne_joint"].shape == (60, 2) and emb["dbscan_audio"].shape == (60,)
  # The clusters are those of the sampled rows, as a direct call on them finds.
  direct = latent_space.dbscan(x[rows], labels[rows], min_samples=3)
  assert out["clusters.audio.clusters"] == direct["clusters"] and out["clusters.audio.eps"] == direct["eps"]
  specs = {m: modalities.Modality(m, "vector", (10,), "float32") for m in ("audio", "face")}
  metrics = {"examples": 120, "identities": 6, "model.can_generate": False, **out}
  markdown.write_report(tmp_path / "report.md", metrics, specs, {}, near=near, id_names={})
  text = (tmp_path / "report.md").read_text()
  assert "| voice | 60 of 120 (stratified) |" in text and "| joint | 60 of 240 (stratified) |" in text
  assert "sample stratified by identity" in text and "more than 60 points" in text
  # Below the cap nothing is sampled and the report says every point is shown.
  full, _ = report.latent_section(latents, ["audio", "face"], {}, dict(acfg, max_points=1000), tmp_path)
  assert full["clusters.joint.points_shown"] == full["clusters.joint.points"] == 240
