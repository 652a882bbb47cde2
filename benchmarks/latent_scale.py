"""The latent-space and coherence sections at scale: fabricated clustered latents, time and peak memory per stage.

  .venv/bin/python benchmarks/latent_scale.py --sizes 10000,50000,150000 [--json rows.json]
  .venv/bin/python benchmarks/latent_scale.py --sizes 150000 --coherence-dim 1587 --coherence-only  # face pixels

Two modalities of N examples (1,251 identities, 100-d) around shared identity centres, as
report.latent_section sees them: a stratified sample of at most --max-points per space (the joint space:
max_points // 2 examples of each modality), t-SNE and DBSCAN (with its k-distance curve) of each space,
the nearest identities, the two figures; then one coherence classifier fitted on N training rows and
predicting 2N test rows (real and "generated"). Peak RSS is per stage (Linux: VmHWM, reset before each).
"""

import argparse
import json
import pathlib
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mmvae import modalities  # noqa: E402
from mmvae.analysis import coherence, latent_space, neighbours  # noqa: E402


def fabricate(n, classes=1251, dim=100, seed=0):
  """(labels [N], {modality: [N, dim]}): identity centres (the same for every seed) plus noise, the face noisier."""
  centres = np.random.default_rng(1234).normal(size=(classes, dim)).astype(np.float32)
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  return labels, {m: centres[labels] + (0.6 + 0.2 * k) * rng.normal(size=(n, dim)).astype(np.float32)
                  for k, m in enumerate(("audio", "face"))}


def _reset_peak():
  try:  # writing 5 resets the kernel's high-water mark of this process's resident memory
    pathlib.Path("/proc/self/clear_refs").write_text("5")
  except OSError:
    pass


def _peak_mb() -> float:
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _stage(rows, n, name, fn):
  _reset_peak()
  t = time.perf_counter()
  out = fn()
  rows.append({"n": n, "stage": name, "seconds": round(time.perf_counter() - t, 2), "peak_rss_mb": round(_peak_mb())})
  print(f"{n:>8,}  {name:<22} {rows[-1]['seconds']:>8.1f} s  {rows[-1]['peak_rss_mb']:>7,} MB", flush=True)
  return out


def run(n, max_points, coherence_dim, seed=0, latent=True) -> list[dict]:
  """Every stage at size n (latent=False: coherence only); returns the table rows."""
  rows = []
  if latent:
    _latent_stages(rows, n, max_points, seed)
  # Coherence: training rows and test rows of one modality, features as wide as asked.
  train_y, train = fabricate(n, dim=coherence_dim, seed=seed + 1)
  test_y, test = fabricate(n, dim=coherence_dim, seed=seed + 2)
  m = modalities.Modality("face", "vector", (coherence_dim,), "float32")
  clf = _stage(rows, n, "coherence fit", lambda: coherence.train_classifier(m, train["face"], train_y, seed))
  pred = _stage(rows, n, "coherence predict 2N", lambda: np.concatenate(
      [coherence.predict(clf, m, test["face"]), coherence.predict(clf, m, test["audio"])]))
  rows.append({"n": n, "stage": "total", "seconds": round(sum(r["seconds"] for r in rows), 1),
               "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
               "coherence_accuracy": float(np.mean(pred[:n] == test_y))})
  print(f"{n:>8,}  {'total':<22} {rows[-1]['seconds']:>8.1f} s  {rows[-1]['peak_rss_mb']:>7,} MB   "
        f"(coherence accuracy on real rows {rows[-1]['coherence_accuracy']:.3f})", flush=True)
  return rows


def _latent_stages(rows, n, max_points, seed):
  """What report.latent_section does, a stage at a time."""
  labels, spaces = fabricate(n, seed=seed)
  keep = _stage(rows, n, "sample", lambda: (latent_space.stratified_sample(labels, max_points, seed),
                                            latent_space.stratified_sample(labels, max_points // 2, seed)))
  shown = {m: spaces[m][keep[0]] for m in spaces}
  shown["joint"] = np.vstack([spaces[m][keep[1]] for m in spaces])
  shown_labels = {"audio": labels[keep[0]], "face": labels[keep[0]], "joint": np.tile(labels[keep[1]], 2)}
  emb, clusters, kdist = {}, {}, {}
  for space in shown:
    emb[space] = _stage(rows, n, f"t-SNE {space}", lambda s=space: latent_space.tsne(shown[s], seed=seed))
  for space in shown:
    clusters[space] = _stage(rows, n, f"DBSCAN {space}", lambda s=space: latent_space.dbscan(
        shown[s], shown_labels[s], min_samples=3, seed=seed))
    kdist[space] = clusters[space]["k_distances"]
  _stage(rows, n, "nearest identities", lambda: [latent_space.nearest_identities(spaces[q], spaces[g], labels)
                                                 for q, g in (("audio", "face"), ("face", "audio"))])
  out = pathlib.Path(tempfile.mkdtemp())
  totals = {"audio": n, "face": n, "joint": 2 * n}
  _stage(rows, n, "figures", lambda: (
      latent_space.plot_embedding(out / "tsne.png", emb, {**shown_labels, "joint": labels[keep[1]]}, {}, "t-SNE",
                                  joint={"joint": ["audio", "face"]}, totals=totals),
      latent_space.plot_dbscan(out / "dbscan.png", emb, clusters, kdist, totals=totals)))
  rows[-1]["figures"] = str(out)
  rows[-1]["clusters"] = {s: {k: v for k, v in c.items() if k not in ("assignment", "k_distances")}
                          for s, c in clusters.items()}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", default="10000,50000,150000")
  ap.add_argument("--max-points", type=int, default=latent_space.MAX_POINTS)
  ap.add_argument("--coherence-dim", type=int, default=100)
  ap.add_argument("--coherence-only", action="store_true", help="skip the latent-space stages")
  ap.add_argument("--json", help="also write the rows here")
  args = ap.parse_args(argv)
  print(f"cores: {neighbours.cores()}; max points per space: {args.max_points:,}; coherence features: "
        f"{args.coherence_dim}-d, 1,251 classes")
  print(f"{'N':>8}  {'stage':<22} {'time':>10}  {'peak RSS':>10}")
  rows = []
  for n in (int(s) for s in args.sizes.split(",")):
    rows += run(n, args.max_points, args.coherence_dim, latent=not args.coherence_only)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
  main()
