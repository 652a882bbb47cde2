"""`mmvae sweep --cv K`: fold assignment (data_prep/folds.py), fold corpora, and the CV table (mmvae/cv.py)."""

import collections
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from data_prep import folds, voxceleb1
from mmvae import cv

REPO = pathlib.Path(__file__).resolve().parents[2]


def _lines(videos_per_identity: dict[str, int], utterances: int = 2) -> list[str]:
  """iden_split.txt lines: identity i has that many videos v<i>_<j>, each with `utterances` utterances."""
  out = []
  for identity, n in videos_per_identity.items():
    for j in range(n):
      for u in range(utterances):
        out.append(f"{1 + (j + u) % 3} {identity}/yt{identity[-2:]}{j:03d}/{u + 1:05d}.wav")
  return out


COUNTS = {"id00001": 5, "id00002": 6, "id00003": 8, "id00004": 3 + 2, "id00005": 11}


@pytest.mark.parametrize("k,seed", [(3, 0), (4, 1), (5, 7)])
def test_video_folds_spread_each_identity_evenly_and_every_video_is_tested_once(k, seed):
  lines = _lines(COUNTS)
  assign = folds.video_folds(lines, k, seed)
  videos = {l.split()[1].split("/")[1]: l.split()[1].split("/")[0] for l in lines}
  assert set(assign) == set(videos) and set(assign.values()) == set(range(k))
  for identity, n in COUNTS.items():  # as even as possible: counts n // k or n // k + 1
    per_fold = collections.Counter(assign[v] for v, i in videos.items() if i == identity)
    assert sorted(per_fold.get(f, 0) for f in range(k)) == sorted([n // k + (f < n % k) for f in range(k)])
  sizes = collections.Counter(assign.values())
  assert max(sizes.values()) - min(sizes.values()) <= 1
  tested = collections.Counter()
  for test_fold in range(k):
    roles = {}
    for line in folds.fold_lines(lines, assign, k, test_fold):
      code, rel = line.split()
      identity, video, _ = rel.split("/")
      roles.setdefault(video, set()).add(code)
    assert all(len(r) == 1 for r in roles.values())  # no video in two roles
    tested.update(v for v, r in roles.items() if r == {"3"})
    for role_code in ("1", "3"):  # every identity (each has >= K videos) trains and is tested in every round
      assert {videos[v] for v, r in roles.items() if r == {role_code}} == set(COUNTS)
    val = {v for v, r in roles.items() if r == {"2"}}
    assert val == {v for v, f in assign.items() if f == (test_fold + 1) % k}
  assert tested == collections.Counter({v: 1 for v in videos})


def test_assignment_is_a_function_of_the_seed_and_not_of_line_order():
  lines = _lines(COUNTS)
  a = folds.video_folds(lines, 4, seed=3)
  assert folds.video_folds(list(reversed(lines)), 4, seed=3) == a
  others = [folds.video_folds(lines, 4, seed=s) for s in range(4, 9)]
  assert any(o != a for o in others)


def test_a_video_listed_under_two_identities_stays_in_one_fold():
  lines = _lines({"id00001": 4, "id00002": 4}) + ["1 id00002/yt01000/00009.wav"]  # id00001's video under id00002
  assign = folds.video_folds(lines, 3, 0)
  assert "yt01000" in assign
  for line in folds.fold_lines(lines, assign, 3, 0):
    if "yt01000" in line:
      assert line.split()[0] == folds.ROLE_CODES[folds.role(assign["yt01000"], 3, 0)]


def test_impossible_k_is_refused_in_one_line_naming_the_identity():
  lines = _lines(COUNTS)
  with pytest.raises(ValueError, match=r"identity id00001 has only 5 videos.*--cv <= 5"):
    folds.video_folds(lines, 6, 0)
  with pytest.raises(ValueError, match="K >= 3"):
    folds.video_folds(lines, 2, 0)
  with pytest.raises(ValueError, match=r"--split open.*needs >= 6 identities"):
    folds.identity_folds(lines, 3, 0)  # 5 identities: 3 folds would leave a test fold with one identity
  with pytest.raises(ValueError, match=r"--split open.*--cv <= 3"):
    folds.identity_folds(_lines({f"id{i:05d}": 1 for i in range(7)}), 4, 0)


def test_identity_folds_hold_out_whole_identities():
  lines = _lines({f"id{i:05d}": 2 + i % 3 for i in range(7)})
  assign = folds.identity_folds(lines, 3, seed=2)
  assert sorted(collections.Counter(assign.values()).values()) == [2, 2, 3]
  for test_fold in range(3):
    roles = {}
    for line in folds.fold_lines(lines, assign, 3, test_fold, by="identity"):
      code, rel = line.split()
      roles.setdefault(rel.split("/")[0], set()).add(code)
    assert all(len(r) == 1 for r in roles.values())
    assert {i for i, r in roles.items() if r == {"3"}} == {i for i, f in assign.items() if f == test_fold}


def _vox_mini(shared_data) -> pathlib.Path:
  root = shared_data / "voxceleb1-mini"
  if not (root / "iden_split.txt").is_file():
    pytest.skip(f"voxceleb1-mini not found at {root}")
  return root


def test_fold_root_lists_through_symlinks_with_the_assigned_splits(shared_data, tmp_path):
  root = _vox_mini(shared_data)
  lines = (root / "iden_split.txt").read_text().split("\n")
  lines = [l for l in lines if l.strip()]
  assign = folds.video_folds(lines, 5, seed=0)
  fold = folds.write_fold_root(root, tmp_path / "fold2", assign, 2)
  assert (fold / "wav").is_symlink() and (fold / "faces").is_symlink() and (fold / "vox1_meta.csv").is_symlink()
  assert not (fold / "iden_split.txt").is_symlink()
  corpus = voxceleb1.list_examples(fold, strict=True)
  assert len(corpus.examples) == len(lines) and not corpus.skipped
  expected = {0: "train", 1: "train", 2: "test", 3: "validation", 4: "train"}
  for e in corpus.examples:
    assert e["split"] == expected[assign[e["video"]]], e["id"]
    assert e["faces"] and all(pathlib.Path(f).is_file() for f in e["faces"])
  # rerunning updates in place and keeps the links
  folds.write_fold_root(root, fold, assign, 3)
  assert {e["video"] for e in voxceleb1.list_examples(fold).examples if e["split"] == "test"} == \
      {v for v, f in assign.items() if f == 3}


def test_fold_corpus_prepares_and_its_splits_hold_the_assigned_videos(shared_data, tmp_path):
  from data_prep import prepare
  from mmvae import data
  root = _vox_mini(shared_data)
  record = cv.make_folds(root, tmp_path / "cv", 5, "video", seed=0)
  assign = record["assignment"]
  prepare.prepare_voxceleb1(tmp_path / "cv" / "folds" / "fold0", tmp_path / "prepared", config="voxceleb1:tiny",
                            workers=1)
  ds = data.Dataset(tmp_path / "prepared")
  for split, folds_of in (("test", {0}), ("validation", {1}), ("train", {2, 3, 4})):
    got = set(ds.column(split, "video"))
    assert got == {v for v, f in assign.items() if f in folds_of}, split


def test_open_folds_of_the_real_corpus_hold_out_whole_identities(shared_data, tmp_path):
  root = _vox_mini(shared_data)
  assign = cv.make_folds(root, tmp_path, 3, "identity", seed=0)["assignment"]
  assert sorted(collections.Counter(assign.values()).values()) == [2, 2, 2]
  for test_fold in range(3):
    corpus = voxceleb1.list_examples(tmp_path / "folds" / f"fold{test_fold}", strict=True)
    by_split = {s: {e["identity"] for e in corpus.examples if e["split"] == s} for s in ("train", "validation", "test")}
    assert by_split["test"] == {i for i, f in assign.items() if f == test_fold}
    assert by_split["validation"] == {i for i, f in assign.items() if f == (test_fold + 1) % 3}
    assert not by_split["train"] & (by_split["test"] | by_split["validation"])
    assert not voxceleb1.split_warnings(corpus.examples)


def test_other_folds_in_the_same_out_are_refused(shared_data, tmp_path):
  root = _vox_mini(shared_data)
  cv.make_folds(root, tmp_path, 3, "video", seed=0)
  cv.make_folds(root, tmp_path, 3, "video", seed=0)  # the same folds: fine
  with pytest.raises(ValueError, match="other folds"):
    cv.make_folds(root, tmp_path, 4, "video", seed=0)


# --- the table, on fabricated run folders -------------------------------------------------------------------

def _sweep(tmp_path) -> dict:
  return {"path": str(tmp_path / "s.py"), "description": "",
          "rows": [{"name": "A", "slug": "a", "config": "x", "overrides": []},
                   {"name": "B", "slug": "b", "config": "x", "overrides": []}],
          "columns": [{"key": "retrieval.audio_to_face.mrr", "title": "v->f MRR"},
                      {"key": "coherence.joint.accuracy", "title": "joint"}]}


TEST = {  # (row, fold, seed) -> test MRR; coherence = MRR / 2
    ("a", 0, 0): 0.50, ("a", 1, 0): 0.60, ("a", 2, 0): 0.70, ("a", 0, 1): 0.55, ("a", 1, 1): 0.65, ("a", 2, 1): 0.40,
    ("b", 0, 0): 0.30, ("b", 1, 0): 0.35, ("b", 2, 0): 0.45, ("b", 0, 1): 0.20, ("b", 1, 1): 0.25,
    # ("b", 2, 1) has no report: not finished
}
VALID = {"a": (0.40, 0.30), "b": (0.52, 0.10)}  # every validation report of a row: its MRR and joint coherence


def _write_runs(out: pathlib.Path, with_queries: bool = True) -> dict:
  """Writes metrics.json (and report-validation/, queries.npz) for TEST; returns the queries written."""
  queries = {}
  rng = np.random.default_rng(0)
  for (slug, fold, seed), mrr in TEST.items():
    wd = out / f"fold{fold}" / "runs" / slug / f"seed{seed}"
    (wd / "report").mkdir(parents=True)
    (wd / "report" / "metrics.json").write_text(json.dumps({
        "retrieval.audio_to_face.mrr": mrr, "retrieval.audio_to_face.mrr_chance": 0.4 + 0.01 * fold,
        "coherence.joint.accuracy": mrr / 2, "coherence.joint.accuracy_chance": 0.25}))
    (wd / "report-validation").mkdir()
    (wd / "report-validation" / "metrics.json").write_text(json.dumps({
        "retrieval.audio_to_face.mrr": VALID[slug][0], "coherence.joint.accuracy": VALID[slug][1]}))
    if with_queries:
      n = 4 + fold
      q = {"label": np.arange(n) % 2, "cluster": np.array([f"vid{fold}_{i // 2}" for i in range(n)]),
           "cluster_kind": np.array("video"),
           "audio_to_face.mrr": rng.uniform(0, 1, n), "face_to_audio.mrr": rng.uniform(0, 1, n),
           "audio_to_face.recall@1": rng.uniform(0, 1, n)}
      q["audio_to_face.mrr"][0] = np.nan
      np.savez(wd / "report" / "queries.npz", **q)
      queries[(slug, fold, seed)] = q
  return queries


def _t_interval(values):
  """Brute force: mean ± t * s / sqrt(n), t from the 0.975 quantile of Student's t by bisection on its CDF."""
  from scipy import special
  n = len(values)
  mean = sum(values) / n
  s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
  df = n - 1
  cdf = lambda t: 1 - 0.5 * special.betainc(df / 2, 0.5, df / (df + t * t))
  lo, hi = 0.0, 100.0
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if cdf(mid) < 0.975 else (lo, mid)
  half = lo * s / math.sqrt(n)
  return mean, mean - half, mean + half


def test_aggregate_against_hand_computed_numbers(tmp_path):
  _write_runs(tmp_path, with_queries=False)
  result = cv.aggregate(tmp_path, _sweep(tmp_path), 3, [0, 1])
  rows = {r["slug"]: r for r in result["rows"]}
  key = "retrieval.audio_to_face.mrr"
  a = rows["a"]["metrics"][key]
  mean, low, high = _t_interval([0.50, 0.60, 0.70, 0.55, 0.65, 0.40])
  assert a["mean"] == pytest.approx(mean) and a["n"] == 6
  assert a["low"] == pytest.approx(low, abs=1e-9) and a["high"] == pytest.approx(high, abs=1e-9)
  assert a["folds"] == pytest.approx([0.525, 0.625, 0.55])
  b = rows["b"]["metrics"][key]
  assert b["n"] == 5 and b["mean"] == pytest.approx(0.31)
  assert b["folds"] == pytest.approx([0.25, 0.30, 0.45])
  assert rows["b"]["finished"] == 5 and rows["b"]["expected"] == 6
  assert rows["a"]["metrics"]["coherence.joint.accuracy"]["mean"] == pytest.approx(0.2833333333)
  assert rows["a"]["metrics"][key]["chance"] == pytest.approx((0.40 + 0.41 + 0.42) / 3)
  assert result["chance"][key]["min"] == pytest.approx(rows["b"]["metrics"][key]["chance"])
  assert result["select"]["keys"] == [key]  # the sweep has no 'select': its first metric
  assert rows["b"]["validation"][key]["mean"] == pytest.approx(0.52)
  assert rows["b"]["selection_score"] == pytest.approx(0.52) and rows["a"]["selection_score"] == pytest.approx(0.40)
  # b scores higher on validation, but one of its runs is missing: only complete rows compete
  assert not rows["b"]["selectable"] and rows["a"]["selected"] and result["selected"] == "A"
  assert rows["a"]["pooled"] == {"0": {"missing_folds": [0, 1, 2]}, "1": {"missing_folds": [0, 1, 2]}}
  on_disk = json.loads((tmp_path / "cv.json").read_text())
  assert on_disk["rows"][0]["selected"] and on_disk["written_by"] == cv.WRITTEN_BY
  md = (tmp_path / "cv.md").read_text()
  assert f"| A | 6/6 | {mean:.3f} [{low:.3f}, {high:.3f}] |" in md and "**selected**" in md
  assert "| *chance* |" in md and "None yet" in md
  # with b's last run it competes and wins on validation MRR; 'select' on another key picks by that one
  wd = tmp_path / "fold2" / "runs" / "b" / "seed1"
  for sub, content in (("report", {key: 0.5}), ("report-validation", {key: 0.52, "coherence.joint.accuracy": 0.1})):
    (wd / sub).mkdir(parents=True)
    (wd / sub / "metrics.json").write_text(json.dumps(content))
  result = cv.aggregate(tmp_path, _sweep(tmp_path), 3, [0, 1])
  assert result["selected"] == "B"
  result = cv.aggregate(tmp_path, dict(_sweep(tmp_path), select="coherence.joint.accuracy"), 3, [0, 1])
  assert result["select"]["keys"] == ["coherence.joint.accuracy"] and result["selected"] == "A"
  result = cv.aggregate(tmp_path, dict(_sweep(tmp_path), select="-coherence.joint.accuracy"), 3, [0, 1])
  assert result["select"]["lower_is_better"] and result["selected"] == "B"
  # only the runs `done` names count
  result = cv.aggregate(tmp_path, _sweep(tmp_path), 3, [0], done={(0, "a", 0), (1, "a", 0)},
                        planned={(0, "a", 0), (1, "a", 0)})
  assert [r["slug"] for r in result["rows"]] == ["a"]
  assert result["rows"][0]["metrics"][key]["mean"] == pytest.approx(0.55)
  assert result["rows"][0]["expected"] == 3 and not result["rows"][0]["selectable"]


def test_a_later_cv_with_other_rows_keeps_the_earlier_rows_finished_runs(shared_data, tmp_path, monkeypatch):
  """`--cv` with --rows B after a CV of rows A and B: cv.json still holds A's finished runs (found on disk) beside
  this invocation's, as a sweep's own table keeps earlier --rows; counts and means against the runs written."""
  from mmvae import sweep as sweep_lib
  root = _vox_mini(shared_data)
  _write_runs(tmp_path, with_queries=False)
  (tmp_path / "s.py").write_text(
      "def get_sweep():\n"
      "  return {'rows': [{'name': 'A', 'config': 'synthetic:tiny'}, {'name': 'B', 'config': 'synthetic:tiny'}],\n"
      "          'seeds': [0, 1], 'metrics': [('retrieval.audio_to_face.mrr', 'v->f MRR')]}\n")

  def only_b_this_time(spec, out, root, parallel, seeds, rows, split, command):
    fold = int(pathlib.Path(out).name[len("fold"):])
    return {"rows": [{"slug": "b", "failed": 0,
                      "runs": [{"seed": s, "status": "done"} for s in (0, 1) if ("b", fold, s) in TEST]}]}
  monkeypatch.setattr(sweep_lib, "run", only_b_this_time)
  result = cv.run(str(tmp_path / "s.py"), tmp_path, root, 3, seeds=[0, 1], rows="B")
  rows = {r["slug"]: r for r in result["rows"]}
  key = "retrieval.audio_to_face.mrr"
  assert rows["a"]["finished"] == 6 == rows["a"]["expected"]
  assert rows["a"]["metrics"][key]["mean"] == pytest.approx(np.mean([v for (r, _, _), v in TEST.items() if r == "a"]))
  assert rows["b"]["finished"] == 5 and rows["b"]["metrics"][key]["mean"] == pytest.approx(0.31)
  assert "| A |" in (tmp_path / "cv.md").read_text()
  assert cv.finished_runs(tmp_path, sweep_lib.load_sweep(str(tmp_path / "s.py")), 3) == {
      (f, r, s) for (r, f, s) in TEST}


def test_pooled_queries_pool_every_fold_of_a_seed(tmp_path):
  queries = _write_runs(tmp_path)
  result = cv.aggregate(tmp_path, _sweep(tmp_path), 3, [0, 1])
  rows = {r["slug"]: r for r in result["rows"]}
  assert set(rows["b"]["pooled"]) == {"0"}  # seed 1 of row b lacks fold 2's run
  pooled = rows["a"]["pooled"]["1"]["retrieval.audio_to_face.mrr"]
  values = np.concatenate([queries[("a", f, 1)]["audio_to_face.mrr"] for f in range(3)])
  values = values[np.isfinite(values)]
  assert pooled["mrr"] == pytest.approx(float(np.mean(values)))
  assert pooled["queries"] == 4 + 5 + 6 - 3 and pooled["clusters"] == 2 + 3 + 3
  assert pooled["cluster_kind"] == "video"
  assert pooled["folds"][2] == pytest.approx(float(np.nanmean(queries[("a", 2, 1)]["audio_to_face.mrr"])))
  assert set(rows["a"]["pooled"]["1"]) == {"retrieval.audio_to_face.mrr", "retrieval.face_to_audio.mrr"}
  assert "## Pooled queries" in (tmp_path / "cv.md").read_text()


def test_pooled_queries_have_a_clustered_bootstrap_interval(tmp_path):
  try:
    from mmvae.metrics import bootstrap
  except ImportError:
    pytest.skip("mmvae.metrics.bootstrap (cluster_bootstrap) is not written yet: the interval of the pooled MRR "
                "is untested; the pooled MRR itself is tested above")
  queries = _write_runs(tmp_path)
  pooled = cv.pooled_queries(tmp_path, "a", 3, 0)["retrieval.audio_to_face.mrr"]
  assert pooled["low"] <= pooled["mrr"] <= pooled["high"]
  values, clusters = [], []
  for f in range(3):
    v = queries[("a", f, 0)]["audio_to_face.mrr"]
    keep = np.isfinite(v)
    values.append(v[keep])
    clusters.append(np.array([f"{f}/{c}" for c in queries[("a", f, 0)]["cluster"][keep]]))
  _, index = np.unique(np.concatenate(clusters), return_inverse=True)
  expected = bootstrap.cluster_bootstrap(np.concatenate(values), index, n_boot=2000, seed=0, level=0.95)
  assert (pooled["low"], pooled["high"]) == pytest.approx(tuple(float(x) for x in expected))


def test_t_interval_needs_two_values():
  assert cv.t_interval([0.5]) == {"mean": 0.5, "low": None, "high": None, "n": 1, "std": None}
  assert cv.t_interval([float("nan"), None])["mean"] is None


# --- the command line ---------------------------------------------------------------------------------------

def _cli(*args, timeout: int = 120):
  return subprocess.run([sys.executable, "-m", "mmvae.cli", *args], capture_output=True, text=True, cwd=REPO,
                        timeout=timeout)


def test_cli_refuses_cv_with_data_and_impossible_k(shared_data, tmp_path):
  root = _vox_mini(shared_data)
  got = _cli("sweep", "--sweep", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--cv", "3")
  assert got.returncode == 2 and "--cv needs --root" in got.stderr and len(got.stderr.strip().splitlines()) == 1
  got = _cli("sweep", "--sweep", "tiny", "--root", str(root), "--out", str(tmp_path / "o"), "--cv", "6")
  assert got.returncode == 2 and "identity id10001 has only 5 videos" in got.stderr
  assert len(got.stderr.strip().splitlines()) == 1
  got = _cli("sweep", "--sweep", "tiny", "--root", str(root), "--out", str(tmp_path / "o"), "--cv", "3",
             "--split", "validation")
  assert got.returncode == 2 and "--split 'validation' with --cv" in got.stderr
  got = _cli("sweep", "--sweep", "tiny", "--root", str(root), "--out", str(tmp_path / "o"), "--cv", "4",
             "--split", "open")
  assert got.returncode == 2 and "6 identities give some test fold fewer than 2" in got.stderr
  assert not (tmp_path / "o").exists()


def test_sweep_cv_end_to_end(tmp_path):
  """Slow (conftest SLOW, ~3 min): 3 folds x one tiny row x one seed on a 4-identity synthetic corpus (8 utterances
  a fold), against the runs' own metrics.json; then a rerun trains nothing."""
  from data_prep import synthetic
  raw = synthetic.generate_corpus(tmp_path / "raw", identities=4, seed=0, videos_per_identity=3,
                                  utterances_per_video=2, frames_per_video=2, utterance_seconds=1.0,
                                  progress=False, workers=1)
  out = tmp_path / "cv"
  args = ("sweep", "--sweep", "tiny", "--root", str(raw), "--out", str(out), "--cv", "3", "--seeds", "0",
          "--rows", "synthetic tiny", "--parallel", "1")
  got = _cli(*args, timeout=1200)
  assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
  result = json.loads((out / "cv.json").read_text())
  row = result["rows"][0]
  assert row["name"] == "synthetic tiny" and row["finished"] == 3 == row["expected"]
  key = "retrieval.audio_to_face.mrr"
  runs = [json.loads((out / f"fold{f}" / "runs" / "synthetic-tiny" / "seed0" / "report" / "metrics.json")
                     .read_text())[key] for f in range(3)]
  assert row["metrics"][key]["mean"] == pytest.approx(float(np.mean(runs)))
  assert row["metrics"][key]["folds"] == pytest.approx(runs)
  for f in range(3):
    manifest = json.loads((out / f"fold{f}" / "results.json").read_text())
    assert manifest["root"] == str(out / "folds" / f"fold{f}")
  got = _cli(*args, timeout=300)
  assert got.returncode == 0 and "0 trained, 1 finished before" in got.stdout
