"""Retrieval metrics at scale: fabricated clustered latents, the blocked path (and optionally today's) per stage.

  .venv/bin/python benchmarks/retrieval_scale.py --sizes 10000,50000,150000 [--old-max 10000] [--json rows.json]
  .venv/bin/python benchmarks/retrieval_scale.py --sizes 100000,200000 --stage mrr   # one-direction MRR + R@K

Stages: `section` is report.retrieval_section (2 modalities, 3 scores, 4 ordered pairs: 12 directions);
`mrr` one direction, cosine MRR and Recall@K only (query rows limited by --mrr-queries, then extrapolated
linearly in queries, which the cost is: each query scans the whole gallery). Peak RSS is the process's
maximum so far (resource.getrusage), so run one size per process for clean memory figures.
"""

import argparse
import json
import resource
import sys
import time

import numpy as np


def fabricate(n, classes=1251, dim=100, seed=0):
  """Two modalities around shared class centres (so retrieval is better than chance but far from perfect)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  centres = rng.normal(size=(classes, dim)).astype(np.float32)
  out = {"label": labels, "gender": np.where(labels % 2, "m", "f")}
  for k, m in enumerate(("audio", "face")):
    out[f"{m}_mu"] = centres[labels] + (1.5 + 0.5 * k) * rng.normal(size=(n, dim)).astype(np.float32)
    out[f"{m}_logvar"] = rng.normal(-1.0, 0.3, size=(n, dim)).astype(np.float32)
  return out


def peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_section(lat, old=False):
  from mmvae.analysis import report
  from mmvae.metrics import retrieval
  if not old:
    return report.retrieval_section(lat, ["audio", "face"])
  out = {}  # today's path: 12 independent calls of the float64 full-sort implementation
  old_module = _old_module()
  for score in retrieval.SCORES:
    for q in ("audio", "face"):
      for g in ("audio", "face"):
        out[(score, q, g)] = old_module.retrieval_metrics(
            lat[f"{q}_mu"], lat[f"{g}_mu"], lat["label"], lat["label"], score=score,
            query_logvar=lat[f"{q}_logvar"], gallery_logvar=lat[f"{g}_logvar"], exclude_self=q == g, progress=False)
  return out


def _old_module():
  """Today's implementation, read from the last commit (git show), for the comparison."""
  import importlib.util
  import pathlib
  import subprocess
  import tempfile
  src = subprocess.run(["git", "show", "HEAD:mmvae/metrics/retrieval.py"], check=True, capture_output=True,
                       text=True, cwd=pathlib.Path(__file__).resolve().parents[1]).stdout
  path = pathlib.Path(tempfile.mkdtemp()) / "retrieval_old.py"
  path.write_text(src)
  spec = importlib.util.spec_from_file_location("retrieval_old", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def run_mrr(lat, queries):
  """Cosine MRR and Recall@K of `queries` audio queries against the whole face gallery."""
  from mmvae.metrics import retrieval
  per, _ = retrieval.rank_many(lat["audio_mu"][:queries], None, lat["face_mu"], None, lat["label"][:queries],
                               lat["label"], ("cosine",), use_jax=True, progress=False, metrics="first_hit")
  return float(np.nanmean(per["cosine"]["mrr"]))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="10000,50000,150000")
  p.add_argument("--stage", choices=("section", "mrr"), default="section")
  p.add_argument("--old-max", type=int, default=0, help="also time today's path up to this size (slow)")
  p.add_argument("--mrr-queries", type=int, default=2048)

  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  rows = []
  print(f"{'N':>9} {'stage':>8} {'path':>4} {'seconds':>10} {'extrapolated_s':>14} {'peak_rss_MB':>11}")
  for n in (int(x) for x in args.sizes.split(",")):
    lat = fabricate(n)
    paths = ["new"] + (["old"] if n <= args.old_max and args.stage == "section" else [])
    for path in paths:
      t0 = time.perf_counter()
      extra = None
      if args.stage == "section":
        res = run_section(lat, old=path == "old")
        value = res.get("retrieval.audio_to_face.mrr") if path == "new" else res[("cosine", "audio", "face")]["mrr"]
      else:
        queries = min(n, args.mrr_queries)
        value = run_mrr(lat, queries)
      secs = time.perf_counter() - t0
      if args.stage == "mrr":
        extra = secs * n / queries  # every query scans the whole gallery: linear in the query count
      row = {"n": n, "stage": args.stage, "path": path, "seconds": secs, "extrapolated_seconds": extra,
             "peak_rss_mb": peak_rss_mb(), "audio_to_face_mrr": value}
      rows.append(row)
      ext = f"{extra:14.1f}" if extra is not None else f"{'':>14}"
      print(f"{n:>9} {args.stage:>8} {path:>4} {secs:10.2f} {ext} {row['peak_rss_mb']:11.0f}  mrr={value:.4f}",
            flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
