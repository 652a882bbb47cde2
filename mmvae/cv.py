"""`mmvae sweep --cv K`: a sweep cross-validated over K folds of a VoxCeleb1-layout corpus -> OUT/cv.json and cv.md.

The videos of every split are pooled and dealt into K folds stratified by identity (data_prep/folds.py; with
--split open whole identities instead, so test identities are unseen). Round k trains on K - 2 folds, selects
checkpoints on fold k+1 mod K (validation) and is tested on fold k, as the sweep OUT/fold<k>/ of the corpus
OUT/folds/fold<k>/ (symlinks to the corpus, its own iden_split.txt); each round is an ordinary resumable sweep.
OUT/folds/folds.json records the assignment: a rerun with other folds (corpus, K, policy) is refused.

Per row and metric column, cv.json holds the mean over the folds x seeds of the runs' test results with a 95%
t-interval of that mean (the fold x seed values taken as independent, which they are not quite: the interval is
a guide, not a test), the per-fold means (over seeds), the validation means (WORKDIR/report-validation/) with
the row of the best mean selection score marked selected, and, from WORKDIR/report/queries.npz, each seed's
MRR over the pooled queries of all folds with a bootstrap interval that resamples videos (clusters).
"""

import datetime
import hashlib
import json
import math
import pathlib

import numpy as np

from mmvae import files

WRITTEN_BY = "mmvae sweep --cv"
POLICIES = {"test": "video", "closed": "video", "open": "identity"}  # --split under --cv -> what is folded
LEVEL = 0.95
N_BOOT = 2000
INTERVAL_NOTE = ("mean over the folds x seeds of finished runs, with a 95% t-interval of that mean "
                 "(mean ± t(0.975, n-1) · s / sqrt(n), s the sample std of the n fold x seed values, taken as "
                 "independent); null with fewer than two values")
POOLED_NOTE = ("per seed, MRR over the queries of all K test folds together (WORKDIR/report/queries.npz, NaN "
               "queries left out), with a 95% bootstrap interval resampling videos (mmvae.metrics.bootstrap."
               "cluster_bootstrap, 2000 resamples, seed 0, the clusters queries.npz gives); only when every fold's run "
               "wrote queries.npz")


def _fold_dir(out: pathlib.Path, k: int) -> pathlib.Path:
  return out / f"fold{k}"


def _lines_of(root: pathlib.Path) -> list[str]:
  from data_prep import folds, voxceleb1
  return [f"{folds.ROLE_CODES[s]} {rel}" for s, rel in voxceleb1.read_split(root / "iden_split.txt")]


def make_folds(root, out, k: int, by: str = "video", seed: int = 0) -> dict:
  """Writes OUT/folds/fold<i>/ for i < K and OUT/folds/folds.json; refuses OUT's earlier folds when they differ."""
  from data_prep import folds, voxceleb1
  root = voxceleb1.check_root(pathlib.Path(root).absolute())
  lines = _lines_of(root)
  assign = folds.video_folds(lines, k, seed) if by == "video" else folds.identity_folds(lines, k, seed)
  digest = hashlib.sha256("\n".join(sorted(l.split()[-1] for l in lines)).encode()).hexdigest()[:16]
  record = {"written_by": WRITTEN_BY, "root": str(root), "k": k, "by": by, "seed": seed, "utterances": len(lines),
            "utterance_digest": digest, "assignment": dict(sorted(assign.items()))}
  path = pathlib.Path(out) / "folds" / "folds.json"
  if path.is_file():
    try:
      old = json.loads(path.read_text())
    except ValueError:
      old = {}
    same = ("k", "by", "seed", "utterance_digest", "assignment")
    if {key: old.get(key) for key in same} != {key: record[key] for key in same}:
      raise ValueError(f"{pathlib.Path(out)} holds a cross-validation of other folds ({path}: K={old.get('k')}, "
                       f"by {old.get('by')}, {old.get('utterances')} utterances); its runs would mix them: choose "
                       "another --out")
  path.parent.mkdir(parents=True, exist_ok=True)
  for i in range(k):
    folds.write_fold_root(root, path.parent / f"fold{i}", assign, i, by=by)
  files.write_json_atomic(path, record, indent=1)
  return record


def _check_out(out: pathlib.Path) -> None:
  cv_json = out / "cv.json"
  if cv_json.exists():
    try:
      ok = json.loads(cv_json.read_text()).get("written_by") == WRITTEN_BY
    except (OSError, ValueError, AttributeError):
      ok = False
    if not ok:
      raise ValueError(f"{cv_json} was not written by {WRITTEN_BY}; move it or choose another --out")
  elif (out / "results.md").exists() or (out / "results.json").exists():
    raise ValueError(f"{out} holds a sweep's results.md/json; a cross-validation writes OUT/fold<k>/ sweeps and "
                     "OUT/cv.json: choose another --out")


def run(spec: str, out, root, k: int, seeds=None, rows=None, parallel: int = 0, command: str = "",
        policy: str = "closed", fold_seed: int = 0) -> dict:
  """Runs (or resumes) the sweep `spec` on each of K folds of ROOT into OUT/fold<k>/; returns cv.json's contents.

  policy: closed (or test): fold videos, stratified by identity; open: fold identities (test identities unseen).
  """
  from mmvae import sweep as sweep_lib
  if policy not in POLICIES:
    raise ValueError(f"--split {policy!r} with --cv: use closed (folds of videos, every identity in every fold) or "
                     "open (folds of identities: test identities unseen); each round is analysed on its test fold")
  if root is None:
    raise ValueError("--cv needs --root, a raw VoxCeleb1-layout corpus (the folds re-split its videos)")
  by = POLICIES[policy]
  root = pathlib.Path(root).absolute()
  if not root.is_dir():
    raise FileNotFoundError(f"--root {root} is not a folder (a raw VoxCeleb1 corpus)")
  out = pathlib.Path(out).absolute()
  sweep = sweep_lib.load_sweep(spec)  # a bad sweep file fails before any fold is written
  if rows:
    sweep_lib.select_rows(dict(sweep), rows)  # a bad --rows fails here too
  _check_out(out)
  record = make_folds(root, out, k, by, fold_seed)
  # Runs an earlier --rows/--seeds of this sweep finished in OUT stay in cv.json and cv.md, as in a sweep's table.
  earlier = finished_runs(out, sweep, k)
  done, planned, failed = set(earlier), set(earlier), 0
  seen_seeds = sorted({seed for _, _, seed in earlier})
  info = {"command": command, "root": str(root), "by": by, "fold_seed": fold_seed, "policy": policy,
          "folds": str(out / "folds" / "folds.json"), "assignment": record["assignment"]}
  for i in range(k):
    print(f"mmvae sweep --cv: fold {i + 1}/{k} (test fold {i}, validation fold {(i + 1) % k}) -> "
          f"{_fold_dir(out, i)}", flush=True)
    results = sweep_lib.run(spec, _fold_dir(out, i), root=out / "folds" / f"fold{i}", parallel=parallel,
                            seeds=seeds, rows=rows, split="test", command=command)
    for row in results["rows"]:
      failed += row.get("failed", 0)
      for r in row.get("runs", []):
        seen_seeds += [r["seed"]] if r["seed"] not in seen_seeds else []
        planned.add((i, row["slug"], r["seed"]))
        if r.get("status") in ("done", "skipped"):
          done.add((i, row["slug"], r["seed"]))
    cv = aggregate(out, sweep, k, seen_seeds, done=done, planned=planned,
                   info=dict(info, folds_run=i + 1, failed_runs=failed))
  print(f"mmvae sweep --cv: {k} folds, {len(done)} finished runs, {failed} failed -> {out / 'cv.md'}", flush=True)
  return cv


def finished_runs(out, sweep: dict, k: int) -> set:
  """The (fold, row slug, seed) of every run in OUT/fold<f>/runs/<slug>/seed<s>/ with a report/metrics.json."""
  found = set()
  for fold in range(k):
    for row in sweep["rows"]:
      for workdir in (_fold_dir(pathlib.Path(out), fold) / "runs" / row["slug"]).glob("seed*"):
        seed = workdir.name[len("seed"):]
        if seed.isdigit() and (workdir / "report" / "metrics.json").is_file():
          found.add((fold, row["slug"], int(seed)))
  return found


def t_interval(values, level: float = LEVEL) -> dict:
  """Mean of the finite values with a t-interval of the mean; low/high None with fewer than two values."""
  vals = [float(v) for v in values if _finite(v)]
  n = len(vals)
  out = {"mean": float(np.mean(vals)) if vals else None, "low": None, "high": None, "n": n,
         "std": float(np.std(vals, ddof=1)) if n > 1 else None}
  if n > 1:
    from scipy import stats
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * out["std"] / math.sqrt(n)
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
  return out


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_json(path: pathlib.Path) -> dict | None:
  try:
    value = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def _workdir(out: pathlib.Path, fold: int, slug: str, seed: int) -> pathlib.Path:
  return _fold_dir(out, fold) / "runs" / slug / f"seed{seed}"


def pooled_queries(out, slug: str, k: int, seed: int) -> dict:
  """{'retrieval.<q>_to_<g>.mrr': {mrr, low, high, queries, clusters, cluster_kind, folds}} over the pooled
  queries of the K folds of one row and seed, or {'missing_folds': [...]} when some fold's
  WORKDIR/report/queries.npz is absent."""
  out = pathlib.Path(out)
  loaded, missing = {}, []
  for fold in range(k):
    path = _workdir(out, fold, slug, seed) / "report" / "queries.npz"
    if not path.is_file():
      missing.append(fold)
      continue
    with np.load(path, allow_pickle=False) as f:
      loaded[fold] = {name: f[name] for name in f.files}
  if missing:
    return {"missing_folds": missing}
  keys = sorted({name for q in loaded.values() for name in q if name.endswith(".mrr") and "_to_" in name})
  kinds = sorted({str(q["cluster_kind"]) for q in loaded.values() if "cluster_kind" in q})
  try:
    from mmvae.metrics import bootstrap  # written beside this module; the MRR stands without it
  except ImportError:
    bootstrap = None
  result = {}
  for name in keys:
    values, clusters, per_fold = [], [], []
    for fold, q in loaded.items():
      if name not in q:
        per_fold.append(None)
        continue
      v = np.asarray(q[name], dtype=np.float64)
      c = np.asarray(q["cluster"]).astype(str)
      if len(c) != len(v):
        raise ValueError(f"{_workdir(out, fold, slug, seed) / 'report' / 'queries.npz'}: {name} has {len(v)} "
                         f"values but cluster {len(c)}")
      keep = np.isfinite(v)
      values.append(v[keep])
      clusters.append(np.char.add(f"{fold}/", c[keep]))  # a video is tested in one fold; the prefix is a guard
      per_fold.append(float(np.mean(v[keep])) if keep.any() else None)
    v_n, c_n = np.concatenate(values), np.concatenate(clusters)
    entry = {"mrr": float(np.mean(v_n)) if len(v_n) else None, "low": None, "high": None,
             "queries": int(len(v_n)), "clusters": int(len(np.unique(c_n))),
             "cluster_kind": ",".join(kinds) or None, "folds": per_fold}
    if bootstrap is None:
      entry["note"] = "mmvae.metrics.bootstrap not available: no interval"
    elif len(v_n):
      _, c_index = np.unique(c_n, return_inverse=True)
      low, high = bootstrap.cluster_bootstrap(v_n, c_index, n_boot=N_BOOT, seed=0, level=LEVEL)
      entry["low"], entry["high"] = float(low), float(high)
    result[f"retrieval.{name}"] = entry
  return result


def _selection(sweep: dict, cols: list[dict], validation: list[dict]) -> tuple[dict, dict]:
  """(the sweep's selection {'keys', 'title'}, its score plan over these validation metrics), as mmvae sweep
  selects: mmvae.analysis.sweep_table.selection / score_plan ('-key': lower is better)."""
  from mmvae.analysis import sweep_table
  select = sweep.get("select")
  if not (isinstance(select, dict) and "keys" in select and "title" in select):
    select = sweep_table.selection(select, sweep["columns"])
  return select, sweep_table.score_plan(select, validation)


def aggregate(out, sweep: dict, k: int, seeds, done=None, planned=None, info=None) -> dict:
  """Reads the runs OUT/fold<f>/runs/<row>/seed<s>/ and writes OUT/cv.json and cv.md; returns cv.json's contents.

  sweep: mmvae.sweep.load_sweep's dict. done: the (fold, row slug, seed) that finished; None: every run with a
  report/metrics.json. planned: the (fold, slug, seed) the folds' sweeps list (a row's runs, finished or not):
  a row expects K runs for each of its seeds there; None: for each of `seeds`.
  """
  from mmvae.analysis import sweep_table
  out = pathlib.Path(out)
  seeds = list(seeds)
  runs = {}  # (row slug, fold, seed) -> (test metrics, validation metrics or None)
  for row in sweep["rows"]:
    for fold in range(k):
      for seed in seeds:
        if done is not None and (fold, row["slug"], seed) not in done:
          continue
        workdir = _workdir(out, fold, row["slug"], seed)
        test = _read_json(workdir / "report" / "metrics.json")
        if test is not None:
          runs[(row["slug"], fold, seed)] = (test, _read_json(workdir / "report-validation" / "metrics.json"))
  cols = sweep_table.expand(sweep["columns"], [t for t, _ in runs.values()])
  select, plan = _selection(sweep, cols, [v for _, v in runs.values() if v is not None])
  score_keys = [key for _, key in plan["terms"]]
  out_rows = []
  for row in sweep["rows"]:
    mine = {(f, s): v for (slug, f, s), v in runs.items() if slug == row["slug"]}
    if not mine and done is not None:
      continue  # a row this CV never ran
    metrics, validation = {}, {}
    for col in cols:
      key = col["key"]
      entry = t_interval([t.get(key) for t, _ in mine.values()])
      entry["values"] = [{"fold": f, "seed": s, "value": t.get(key)} for (f, s), (t, _) in sorted(mine.items())
                         if _finite(t.get(key))]
      entry["folds"] = [_mean([t.get(key) for (f2, _), (t, _) in mine.items() if f2 == f]) for f in range(k)]
      entry["chance"] = _mean([t.get(f"{key}_chance") for t, _ in mine.values()])
      metrics[key] = entry
    for key in dict.fromkeys([c["key"] for c in cols] + score_keys):
      vals = [v.get(key) for _, v in mine.values() if v is not None]
      validation[key] = {"mean": _mean(vals), "n": sum(_finite(x) for x in vals)}
    scores = [sweep_table.score(v, plan) for _, v in mine.values()]
    expected = k * (len(seeds) if planned is None else len({p[2] for p in planned if p[1] == row["slug"]}))
    pooled = {}
    for seed in seeds:
      if all((f, seed) in mine for f in range(k)):
        pooled[str(seed)] = pooled_queries(out, row["slug"], k, seed)
    out_rows.append({"name": row["name"], "slug": row["slug"], "config": row["config"],
                     "overrides": row["overrides"], "finished": len(mine), "expected": expected,
                     "metrics": metrics, "validation": validation, "selection_score": _mean(scores),
                     # as mmvae sweep: only a row whose every run has a validation score competes
                     "selectable": bool(expected) and sum(_finite(x) for x in scores) == expected,
                     "selected": False, "pooled": pooled})
  scored = [r for r in out_rows if r["selectable"]]
  best = max(scored, key=lambda r: plan["direction"] * r["selection_score"]) if scored else None
  if best is not None:
    best["selected"] = True
  chance = {}
  for col in cols:
    values = [r["metrics"][col["key"]]["chance"] for r in out_rows if r["metrics"][col["key"]]["chance"] is not None]
    chance[col["key"]] = ({"mean": float(np.mean(values)), "min": min(values), "max": max(values)}
                          if values else None)
  cv = {"written_by": WRITTEN_BY, "sweep": sweep.get("path"), "description": sweep.get("description", ""),
        **(info or {}), "k": k, "seeds": seeds,
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "interval": INTERVAL_NOTE, "pooled_note": POOLED_NOTE, "columns": cols,
        "select": {"keys": select["keys"], "title": select["title"], "terms": score_keys,
                   "lower_is_better": plan["direction"] < 0},
        "selected": best["name"] if best else None,
        "selection_note": "the row with the best mean over folds x seeds of its runs' validation selection score "
                          "(WORKDIR/report-validation/metrics.json; the test folds take no part), among the rows "
                          "whose every run has one (ties: the first row)",
        "chance": chance, "rows": out_rows}
  out.mkdir(parents=True, exist_ok=True)
  files.write_json_atomic(out / "cv.json", cv, indent=1)
  files.write_atomic(out / "cv.md", markdown(cv))
  return cv


def _mean(values) -> float | None:
  vals = [float(v) for v in values if _finite(v)]
  return float(np.mean(vals)) if vals else None


def _num(v, digits: int = 3) -> str:
  return "—" if v is None else f"{v:.{digits}f}"


def _cell(e: dict) -> str:
  if e["mean"] is None:
    return "—"
  return _num(e["mean"]) + (f" [{_num(e['low'])}, {_num(e['high'])}]" if e["low"] is not None else "")


def _esc(text) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(cv: dict) -> str:
  """cv.md: the mean [95% CI] table with a chance line, the per-fold means, and the pooled-query MRR."""
  cols, rows, k = cv["columns"], cv["rows"], cv["k"]
  what = ("identities (test identities unseen in training)" if cv.get("by") == "identity"
          else "videos, stratified by identity (test videos unseen, identities seen)")
  lines = [f"# Cross-validation of sweep `{pathlib.Path(str(cv.get('sweep'))).stem}`", ""]
  if cv.get("description"):
    lines += [cv["description"], ""]
  if cv.get("command"):
    lines += [f"Made by `{cv['command']}`", ""]
  lines += [f"{k} folds of the {what} of `{cv.get('root', '')}` (fold seed {cv.get('fold_seed', 0)}): fold k's "
            f"round tests on fold k, selects checkpoints on fold k+1 mod {k} and trains on the rest "
            f"(`fold<k>/`). Seeds {', '.join(map(str, cv['seeds']))}. Each cell: {cv['interval']}.", ""]
  sel = cv["select"]["title"]
  head = ["row", "runs"] + [c["title"] for c in cols] + [f"val: {sel}", "selected"]
  lines += ["| " + " | ".join(_esc(h) for h in head) + " |", "|---|---:|" + "---:|" * (len(cols) + 1) + "---|"]
  for r in rows:
    cells = [_esc(r["name"]), f"{r['finished']}/{r['expected']}"] + [_cell(r["metrics"][c["key"]]) for c in cols]
    cells += [_num(r["selection_score"]), "**selected**" if r["selected"] else ""]
    lines.append("| " + " | ".join(cells) + " |")
  chance = []
  for c in cols:
    ch = cv["chance"].get(c["key"])
    chance.append("—" if ch is None else _num(ch["mean"]) if ch["max"] - ch["min"] < 5e-4
                  else f"{_num(ch['min'])}–{_num(ch['max'])}")
  lines.append("| " + " | ".join(["*chance*", ""] + chance + ["", ""]) + " |")
  chosen = cv["selected"] or "none (no row has a validation score for every run yet)"
  lines += ["", f"Selected: {chosen}; {cv['selection_note']}.", "",
            "## Per-fold means (over seeds)", "",
            "| row | metric | " + " | ".join(f"fold {f}" for f in range(k)) + " |",
            "|---|---|" + "---:|" * k]
  for r in rows:
    for c in cols:
      lines.append(f"| {_esc(r['name'])} | {_esc(c['title'])} | "
                   + " | ".join(_num(v) for v in r["metrics"][c["key"]]["folds"]) + " |")
  pooled = [(r, seed, key, e) for r in rows for seed, p in r["pooled"].items() for key, e in p.items()
            if isinstance(e, dict)]
  lines += ["", "## Pooled queries", ""]
  if pooled:
    lines += [cv["pooled_note"] + ".", "", "| row | seed | metric | MRR [95% CI] | queries | clusters |",
              "|---|---:|---|---:|---:|---:|"]
    for r, seed, key, e in pooled:
      interval = f" [{_num(e['low'])}, {_num(e['high'])}]" if e["low"] is not None else ""
      lines.append(f"| {_esc(r['name'])} | {seed} | {key} | {_num(e['mrr'])}{interval} | {e['queries']} | "
                   f"{e['clusters']} ({e['cluster_kind'] or 'cluster'}s) |")
  else:
    lines.append("None yet: a seed is pooled when every fold's run wrote report/queries.npz.")
  lines.append("")
  return "\n".join(lines)
