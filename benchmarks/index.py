"""`mmvae index` at scale: exact and HNSW FAISS indexes of fabricated class-structured unit vectors.

  .venv/bin/python benchmarks/index.py --sizes 100000,1000000 [--dim 100] [--kinds exact,hnsw,ivf] [--json rows.json]

For each size and kind (mmvae/index.py: 'exact' = IndexFlatIP, 'hnsw' = IndexHNSWFlat M=32 with efSearch tuned to
recall@10 >= 0.95, 'ivf' = IndexIVFFlat with nprobe tuned the same way, on sums of pairs of entries) one child process builds the index and measures: build time
(including the efSearch tuning), peak RSS of the process, single-query latency p50/p95 through
`mmvae.Index.query(vector=...)` (what `mmvae query` runs once the query is encoded), the latency of a batch of 100
queries through FAISS, and recall@10 of new queries (drawn from the same classes, never indexed) against an exact
NumPy ranking. Each (size, kind) runs in its own process, so peak RSS is that index's.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

QUERIES = 300
BATCH = 100


def fabricate(n: int, dim: int, classes: int = 1251, seed: int = 0, queries: int = QUERIES):
  """(entries [n, dim], queries [queries, dim]) around shared class centres, unit length."""
  from mmvae import index
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim)).astype(np.float32)
  rows = []
  for lo in range(0, n + queries, 200_000):  # in blocks: the float64 noise of 1M x 100 would be 800 MB
    m = min(200_000, n + queries - lo)
    rows.append(index.normalise(centres[rng.integers(0, classes, m)] + 1.5 * rng.normal(size=(m, dim)).astype(
        np.float32)))
  both = np.concatenate(rows)
  return both[:n], both[n:]


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one(n: int, kind: str, dim: int, seed: int) -> dict:
  """Builds one index and measures it (run in a child process)."""
  import faiss
  from mmvae import index
  x, q = fabricate(n, dim, seed=seed)
  data_mb = peak_rss_mb()
  start = time.perf_counter()
  built, info = index.build_faiss(x, kind)
  build_s = time.perf_counter() - start
  ids = np.char.add("e", np.arange(n).astype(str))
  record = {"entries": n, "modalities": {"x": dict(info, offset=0, file="x.faiss")}}
  table = {"id": ids, "modality": np.full(n, "x"), "label": np.zeros(n, np.int64), "identity": np.full(n, ""),
           "split": np.full(n, ""), "text": np.full(n, "")}
  idx = index.Index("<memory>", record, table, {"x": built}, None)
  idx.query(vector=q[0], modality="x", k=10)  # warm
  single = []
  for row in q:
    t = time.perf_counter()
    idx.query(vector=row, modality="x", k=10)
    single.append(time.perf_counter() - t)
  batches = []
  for lo in range(0, len(q) - BATCH + 1, BATCH):
    t = time.perf_counter()
    built.search(q[lo:lo + BATCH], 10)
    batches.append(time.perf_counter() - t)
  _, found = built.search(q, 10)
  _, truth = index.exact_top_k(x, q, 10)
  return {"entries": n, "dim": dim, "kind": kind, "ef_search": info.get("ef_search"), "nprobe": info.get("nprobe"),
          "nlist": info.get("nlist"),
          "build_s": round(build_s, 2), "peak_rss_mb": round(peak_rss_mb(), 1), "data_rss_mb": round(data_mb, 1),
          "query_p50_ms": round(1e3 * float(np.percentile(single, 50)), 3),
          "query_p95_ms": round(1e3 * float(np.percentile(single, 95)), 3),
          "batch100_ms": round(1e3 * float(np.median(batches)), 2),
          "recall_at_10": round(index.recall_at_k(found, truth), 4), "threads": faiss.omp_get_max_threads()}


def table(rows: list[dict]) -> str:
  head = ("| entries | kind | efSearch / nprobe | build s | peak RSS MB | 1 query p50 ms | p95 ms | 100 queries ms | "
          "recall@10 |")
  lines = [head, "|" + "---|" * 9]
  for r in rows:
    knob = r.get("ef_search") or (f"{r['nprobe']} of {r['nlist']}" if r.get("nprobe") else "-")
    lines.append(f"| {r['entries']:,} | {r['kind']} | {knob} | {r['build_s']} | {r['peak_rss_mb']} | "
                 f"{r['query_p50_ms']} | {r['query_p95_ms']} | {r['batch100_ms']} | {r['recall_at_10']} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="100000,1000000", help="comma-separated entry counts")
  parser.add_argument("--dim", type=int, default=100, help="vector dimension (a run's latent_dim)")
  parser.add_argument("--kinds", default="exact,hnsw", help="comma-separated: exact, hnsw, ivf")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON ('-': stdout)")
  parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # SIZE:KIND, in a child process
  args = parser.parse_args(argv)
  if args.one:
    size, kind = args.one.split(":")
    print(json.dumps(one(int(size), kind, args.dim, args.seed)), flush=True)
    return 0
  rows = []
  here = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
  for size in (int(s) for s in args.sizes.split(",")):
    for kind in args.kinds.split(","):
      out = subprocess.run([sys.executable, __file__, "--one", f"{size}:{kind}", "--dim", str(args.dim),
                            "--seed", str(args.seed)], capture_output=True, text=True, env=env, check=False)
      if out.returncode:
        print(out.stderr, file=sys.stderr)
        return out.returncode
      rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
  print(table(rows))
  if args.json == "-":
    print(json.dumps(rows, indent=1))
  elif args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
