"""Clustered bootstrap intervals: the vectorised resampling against plain loops, its behaviour on simulated data,
and the intervals, queries.npz and report.md of an analysis of the real VoxCeleb1 mini corpus."""

import math

import numpy as np
import pytest

from mmvae.metrics import bootstrap


def _loop_interval(values, clusters, n_boot, seed, level):
  """The module docstring's draw order, written out: drop NaNs, clusters in sorted order, C draws per resample."""
  kept = [(v, c) for v, c in zip(values, clusters) if not math.isnan(v)]
  ids = sorted({c for _, c in kept})
  members = {c: [v for v, cc in kept if cc == c] for c in ids}
  rng = np.random.default_rng(seed)
  stats = []
  for _ in range(n_boot):
    idx = rng.integers(0, len(ids), size=len(ids))
    total, count = 0.0, 0
    for i in idx.tolist():
      total += sum(members[ids[i]])
      count += len(members[ids[i]])
    stats.append(total / count)
  stats.sort()

  def quantile(p):  # linear interpolation between order statistics (numpy's default)
    h = (len(stats) - 1) * p
    lo = math.floor(h)
    return stats[lo] + (h - lo) * (stats[min(lo + 1, len(stats) - 1)] - stats[lo])

  return quantile((1 - level) / 2), quantile((1 + level) / 2)


def test_clustered_interval_equals_a_plain_resampling_loop():
  rng = np.random.default_rng(3)
  clusters = [f"v{k}" for k in rng.integers(0, 23, 180)]  # unequal cluster sizes, ids not in sorted order
  values = rng.random(180).tolist()
  for i in (4, 50, 51, 170):
    values[i] = float("nan")  # queries with nothing relevant
  got = bootstrap.cluster_bootstrap(values, clusters, n_boot=300, seed=11, level=0.9)
  want = _loop_interval(values, clusters, 300, 11, 0.9)
  assert got == pytest.approx(want, rel=1e-12, abs=1e-14)
  # Several metrics at once, sharing draws where their NaNs coincide: each exactly as alone.
  other = np.where(np.isnan(values), np.nan, rng.random(180))
  third = rng.random(180)
  both = bootstrap.intervals({"a": values, "b": other, "c": third}, clusters, n_boot=300, seed=11, level=0.9)
  assert both["a"] == pytest.approx(want, rel=1e-12, abs=1e-14)
  assert both["b"] == pytest.approx(_loop_interval(other.tolist(), clusters, 300, 11, 0.9), rel=1e-12, abs=1e-14)
  assert both["c"] == pytest.approx(_loop_interval(third.tolist(), clusters, 300, 11, 0.9), rel=1e-12, abs=1e-14)


def test_without_clusters_it_is_a_plain_per_query_bootstrap():
  rng = np.random.default_rng(0)
  values = rng.normal(size=75)
  values[[3, 9]] = np.nan
  got = bootstrap.cluster_bootstrap(values, None, n_boot=400, seed=5)
  # Plain per-query bootstrap: each kept query drawn with replacement, in index order.
  kept = values[~np.isnan(values)].tolist()
  gen = np.random.default_rng(5)
  means = sorted(sum(kept[i] for i in gen.integers(0, len(kept), size=len(kept)).tolist()) / len(kept)
                 for _ in range(400))
  want = np.quantile(means, [0.025, 0.975])
  assert got == pytest.approx(tuple(want), rel=1e-12)
  # Every query its own cluster: the same interval.
  assert bootstrap.cluster_bootstrap(values, np.arange(75), n_boot=400, seed=5) == pytest.approx(got, rel=1e-12)
  assert all(math.isnan(v) for v in bootstrap.cluster_bootstrap([np.nan, np.nan], None))  # nothing to resample


def test_interval_covers_the_mean_narrows_with_n_and_widens_with_a_cluster_effect():
  rng = np.random.default_rng(1)
  widths = []
  for n in (100, 1600, 25600):
    v = rng.random(n)
    low, high = bootstrap.cluster_bootstrap(v, None, n_boot=500, seed=0)
    assert low < v.mean() < high
    widths.append(high - low)
  assert widths[0] > 2 * widths[1] > 4 * widths[2]  # ~ 1 / sqrt(n): 4x the queries, half the width
  # Strong cluster effect: 40 videos of 25 queries, each video's own success rate.
  video = np.repeat(np.arange(40), 25)
  hits = (rng.random(1000) < rng.beta(0.5, 0.5, 40)[video]).astype(float)
  lo_c, hi_c = bootstrap.cluster_bootstrap(hits, video, n_boot=1000, seed=0)
  lo_p, hi_p = bootstrap.cluster_bootstrap(hits, None, n_boot=1000, seed=0)
  assert lo_c < hits.mean() < hi_c and lo_p < hits.mean() < hi_p
  assert hi_c - lo_c > 2.5 * (hi_p - lo_p)
  # Coverage over repeated simulations of that design: the clustered interval holds the true rate (0.5) about
  # 95% of the time; the per-query one, far too narrow, much less often.
  covered_c = covered_p = 0
  for rep in range(60):
    r = np.random.default_rng(100 + rep)
    h = (r.random(1000) < r.beta(0.5, 0.5, 40)[video]).astype(float)
    lo, hi = bootstrap.cluster_bootstrap(h, video, n_boot=300, seed=rep)
    covered_c += lo <= 0.5 <= hi
    lo, hi = bootstrap.cluster_bootstrap(h, None, n_boot=300, seed=rep)
    covered_p += lo <= 0.5 <= hi
  assert covered_c >= 50 and covered_p <= 30


def test_cluster_choice_follows_the_split():
  fields = {"label": np.array([0, 0, 1, 1]), "video": np.array(["a", "b", "c", "c"]),
            "identity": np.array(["id1", "id1", "id2", "id2"])}
  clusters, kind = bootstrap.choose_clusters(fields, {"split_policy": "closed"})
  assert kind == "video" and clusters.tolist() == ["a", "b", "c", "c"]
  clusters, kind = bootstrap.choose_clusters(fields, {"split_policy": "open"})
  assert kind == "identity" and clusters.tolist() == ["id1", "id1", "id2", "id2"]
  # Test labels unseen in training make an open-set split too (coherence's rule); the label stands in.
  clusters, kind = bootstrap.choose_clusters({"label": fields["label"]}, {}, train_labels=np.array([5, 6]))
  assert kind == "identity" and clusters.tolist() == ["0", "0", "1", "1"]
  clusters, kind = bootstrap.choose_clusters({"label": fields["label"]}, {})
  assert kind == "example" and len(set(clusters.tolist())) == 4
  # A modality named video is no text field.
  assert bootstrap.choose_clusters({**fields, "video_mu": np.zeros((4, 2))}, {})[1] == "example"


@pytest.fixture(scope="module")
def mini_analysis(shared_data, tmp_path_factory):
  """The real VoxCeleb1 mini corpus prepared, its test split analysed from fixed random projections of the stored
  features (no training: the arrays are what a model would give), cross generation = the real data."""
  from data_prep import prepare
  from mmvae import data
  from mmvae.analysis import report
  base = tmp_path_factory.mktemp("bootstrap_mini")
  manifest = prepare.prepare_voxceleb1(shared_data / "voxceleb1-mini", base / "data", config="reference:tiny",
                                       workers=1)
  ds = data.Dataset(base / "data")
  test, train, specs = ds.arrays("test"), ds.arrays("train"), ds.modalities()
  rng = np.random.default_rng(0)
  lat = {}
  for m in specs:
    x = np.asarray(test[m], np.float64).reshape(len(test["label"]), -1)
    lat[f"{m}_mu"] = (x - x.mean(0)) @ rng.normal(size=(x.shape[1], 6))
    lat[f"{m}_logvar"] = np.zeros_like(lat[f"{m}_mu"])
  rep = base / "report"
  rep.mkdir()
  latents = report._save_latents(rep, lat, test)
  faces = test["face"][:, 0].astype(np.float32) / 255.0
  generated = {"face_from_audio": faces, "face_from_face": faces, "audio_from_face": test["audio"],
               "audio_from_audio": test["audio"]}
  from mmvae.analysis import generation_figures, latent_space
  with pytest.MonkeyPatch.context() as mp:  # no figures: most of an analysis's time, and none of this file's concern
    mp.setattr(generation_figures, "plot_pairs", lambda *a, **k: [])
    mp.setattr(latent_space, "plot_embedding", lambda *a, **k: None)
    mp.setattr(latent_space, "plot_dbscan", lambda *a, **k: None)
    metrics = report.analyze_arrays(rep, latents, generated, test, train, specs, manifest)
  return rep, latents, metrics, test


def _expected_reciprocal_rank(scores, relevant):
  """E[1 / rank of the first relevant item] with ties broken uniformly at random (None without a relevant item)."""
  if not relevant.any():
    return None
  best = scores[relevant].max()
  above = int((scores > best).sum())
  r, t = int((relevant & (scores == best)).sum()), int((~relevant & (scores == best)).sum())
  total, p_before = 0.0, 1.0  # x wrong items of the tied group come first, then a relevant one
  for x in range(t + 1):
    total += p_before * r / (r + t - x) / (above + 1 + x)
    p_before *= (t - x) / (r + t - x)
  return total


def test_analysis_has_intervals_and_queries_npz_that_reproduce_its_metrics(mini_analysis):
  rep, latents, metrics, test = mini_analysis
  names = ["audio", "face"]
  assert metrics["retrieval.ci_cluster"] == "video"  # VoxCeleb1's iden_split: closed-set, every example a video's
  assert metrics["retrieval.ci_clusters"] == len(set(test["video"].tolist()))
  assert metrics["retrieval.ci_resamples"] == 2000 and metrics["retrieval.ci_level"] == 0.95
  for q in names:
    for g in names:
      for m in ("mrr", "recall@1", "matching_1v2"):
        key = f"retrieval.{q}_to_{g}.{m}"
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
      assert metrics[f"retrieval.{q}_to_{g}.mrr_ci_high"] > metrics[f"retrieval.{q}_to_{g}.mrr_ci_low"]
      if q != g:
        key = f"coherence.{q}_to_{g}.accuracy"
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
  with np.load(rep / "queries.npz") as f:
    queries = {k: f[k] for k in f.files}
  pairs = [("audio", "face"), ("face", "audio")]
  assert set(queries) == {"label", "cluster", "cluster_kind"} | {
      f"{q}_to_{g}.{m}" for q, g in pairs for m in ("mrr", "recall@1", "matching_1v2")}
  assert str(queries["cluster_kind"]) == "video" and queries["cluster"].tolist() == test["video"].tolist()
  np.testing.assert_array_equal(queries["label"], test["label"])
  for q, g in pairs:
    for m in ("mrr", "recall@1", "matching_1v2"):
      assert np.nanmean(queries[f"{q}_to_{g}.{m}"]) == pytest.approx(metrics[f"retrieval.{q}_to_{g}.{m}"], rel=1e-12)
  # Per-query reciprocal ranks recomputed by brute force from latents.npz: cosine, ties at random.
  saved = np.load(rep / "latents.npz")
  qv, gv, labels = saved["audio_mu"], saved["face_mu"], saved["label"]
  qn = qv / np.linalg.norm(qv, axis=1, keepdims=True)
  gn = gv / np.linalg.norm(gv, axis=1, keepdims=True)
  rr = [_expected_reciprocal_rank(gn @ qn[i], labels == labels[i]) for i in range(len(labels))]
  np.testing.assert_allclose(queries["audio_to_face.mrr"], rr, rtol=1e-9)
  assert metrics["retrieval.audio_to_face.mrr"] == pytest.approx(np.mean(rr), rel=1e-9)
  # The same interval from the saved per-query values and clusters (the sum of a video's queries, resampled).
  assert bootstrap.cluster_bootstrap(rr, queries["cluster"], seed=0) == pytest.approx(
      (metrics["retrieval.audio_to_face.mrr_ci_low"], metrics["retrieval.audio_to_face.mrr_ci_high"]), rel=1e-12)


def test_report_md_shows_the_intervals(mini_analysis):
  rep, _, metrics, test = mini_analysis
  md = (rep / "report.md").read_text()
  key = "retrieval.audio_to_face.mrr"
  assert (f"{metrics[key]:.4f} [{metrics[key + '_ci_low']:.4f}, {metrics[key + '_ci_high']:.4f}] "
          f"({metrics[key + '_chance']:.4f})") in md
  key = "coherence.face_to_audio.accuracy"
  assert f"{metrics[key]:.4f} [{metrics[key + '_ci_low']:.4f}, {metrics[key + '_ci_high']:.4f}]" in md
  videos = len(set(test["video"].tolist()))
  assert f"95% confidence interval, a percentile bootstrap over {videos} videos" in md and "2,000 resamples" in md
