"""Temporal analysis of sequence modalities: synchronisation by offset and frame-level retrieval, each with chance.

Inputs are frame-level embeddings (`inference.encode_frames_split`): per modality and window w,
[N, T, Z] embeddings and an [N, T] mask of the windows wholly inside the clip.

Synchronisation (`sync_metrics`): a query window at position t of clip i ranks the windows of the
other modality of the SAME clip at positions t + d, d = -K..K (K = analysis.sync_offsets); the right
answer is d = 0. Only queries whose 2K + 1 candidates all exist count, so every query has the same
2K + 1 candidates. Scores are cosine similarities; every metric is its expected value under uniformly
random tie-breaking, so constant scores give exactly the chance level:
  top1      the right offset ranks first                       chance 1 / (2K + 1)
  within1   the top-ranked offset is within one step of 0      chance 3 / (2K + 1)
  mrr       1 / rank of the right offset                       chance H(2K + 1) / (2K + 1)

Frame-level retrieval (`frame_retrieval`): a query window searches the windows of the other modality
across ALL clips; the one relevant item is the window at the same position of the same clip
(retrieval.retrieval_metrics with one label per (clip, position)).
"""

import itertools
import re

import numpy as np

from mmvae.metrics import retrieval

MAX_FRAME_QUERIES = 2000  # frame-level retrieval scores this many query windows at most (seeded choice)


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _tie_expectations(scores_C, right: int) -> tuple[float, float, float]:
  """(P(right is ranked first), E[1 / rank of right]) and the top group's members, under random tie-breaking."""
  s = scores_C[right]
  above = int(np.sum(scores_C > s))
  tied = int(np.sum(scores_C == s)) - 1
  mrr = float(np.mean(1.0 / np.arange(above + 1, above + tied + 2)))
  top1 = 1.0 / (tied + 1) if above == 0 else 0.0
  return top1, mrr, above


def sync_metrics(query_NxTxZ, query_valid_NxT, gallery_NxTxZ, gallery_valid_NxT, max_offset: int) -> dict:
  """{top1, within1, mrr} with `_chance` of each, `candidates` and `queries` (see the module docstring)."""
  if max_offset < 1:
    raise ValueError(f"analysis.sync_offsets={max_offset} must be >= 1")
  q, g = _unit(query_NxTxZ), _unit(gallery_NxTxZ)
  qv, gv = np.asarray(query_valid_NxT) > 0, np.asarray(gallery_valid_NxT) > 0
  offsets = np.arange(-max_offset, max_offset + 1)
  n_cand = len(offsets)
  near = np.abs(offsets) <= 1
  top1, within1, mrr = [], [], []
  for i in range(q.shape[0]):
    for t in range(max_offset, q.shape[1] - max_offset):
      pos = t + offsets
      if not qv[i, t] or not gv[i, pos].all():
        continue
      scores = g[i, pos] @ q[i, t]
      t1, rr, _ = _tie_expectations(scores, max_offset)
      best = scores == scores.max()
      top1.append(t1)
      mrr.append(rr)
      within1.append(float(np.mean(near[best])))  # the top offset is one of the tied best, each equally likely
  if not top1:
    raise ValueError(f"no window has all {n_cand} offsets -{max_offset}..{max_offset} inside its clip: the "
                     f"sequences are too short for analysis.sync_offsets={max_offset}; lower it")
  harmonic = float(np.sum(1.0 / np.arange(1, n_cand + 1)))
  return {"top1": float(np.mean(top1)), "top1_chance": 1.0 / n_cand,
          "within1": float(np.mean(within1)), "within1_chance": 3.0 / n_cand,
          "mrr": float(np.mean(mrr)), "mrr_chance": harmonic / n_cand,
          "candidates": n_cand, "queries": len(top1)}


def frame_retrieval(query_NxTxZ, query_valid_NxT, gallery_NxTxZ, gallery_valid_NxT, seed: int = 0,
                    max_queries: int = MAX_FRAME_QUERIES) -> dict:
  """Retrieval metrics (with chance) of query windows among every gallery window; relevant: same clip and position."""
  qv, gv = np.asarray(query_valid_NxT) > 0, np.asarray(gallery_valid_NxT) > 0
  t = min(qv.shape[1], gv.shape[1])
  ids = np.arange(qv.shape[0] * t).reshape(qv.shape[0], t)
  g_idx = np.nonzero(gv[:, :t])
  q_idx = np.nonzero(qv[:, :t] & gv[:, :t])  # queries whose counterpart exists
  chosen = np.arange(len(q_idx[0]))
  if len(chosen) > max_queries:
    chosen = np.sort(np.random.default_rng(seed).choice(len(chosen), max_queries, replace=False))
  q_rows = (q_idx[0][chosen], q_idx[1][chosen])
  return retrieval.summarise(retrieval.rank_queries(
      np.asarray(query_NxTxZ, np.float64)[q_rows], np.asarray(gallery_NxTxZ, np.float64)[g_idx], ids[q_rows],
      ids[g_idx], score="cosine", ks=(1, 10), progress=False))


def contents(frames: dict | None, names) -> tuple[list, list]:
  """(the modalities of `names` that frames.npz holds ('<m>_w<w>' keys), their windows in increasing order)."""
  keys = [re.fullmatch(rf"({'|'.join(map(re.escape, names))})_w(\d+)", k) for k in frames or {}]
  found = {m.group(1) for m in keys if m}
  return [n for n in names if n in found], sorted({int(m.group(2)) for m in keys if m})


def section(frames: dict, names, max_offset: int, seed: int = 0) -> dict:
  """Flat metrics: `sync.<metric>` for the first two frame-level modalities of `names` at the smallest window,
  and per pair and window `sync_by_pair.<q>_to_<g>.w<w>.<metric>` and `frame_retrieval.<q>_to_<g>.w<w>.<metric>`;
  {} when frames holds fewer than two modalities."""
  out = {}
  names, windows = contents(frames, names)
  if len(names) < 2:
    return out
  for q, g in itertools.permutations(names, 2):
    for w in windows:
      args = (frames[f"{q}_w{w}"], frames[f"{q}_w{w}_mask"], frames[f"{g}_w{w}"], frames[f"{g}_w{w}_mask"])
      try:
        s = sync_metrics(*args, max_offset)
      except ValueError:
        continue  # clips too short for this window and offset range
      out.update({f"sync_by_pair.{q}_to_{g}.w{w}.{k}": v for k, v in s.items()})
      if (q, g) == tuple(names[:2]) and "sync.top1" not in out:
        out.update({f"sync.{k}": v for k, v in s.items()})
        out["sync.window"] = w
        out["sync.pair"] = f"{q}_to_{g}"
      r = frame_retrieval(*args, seed=seed)
      out.update({f"frame_retrieval.{q}_to_{g}.w{w}.{k}": v for k, v in r.items()
                  if k.split("_chance")[0] in ("mrr", "recall@1", "recall@10")})
  return out


def lines(metrics: dict, display: dict) -> list[str]:
  """report.md's temporal section (empty without sync metrics)."""
  if "sync.top1" not in metrics:
    return []
  q, g = metrics["sync.pair"].split("_to_")
  k = metrics["sync.candidates"]
  fmt = lambda key: f"{metrics[key]:.3f} ({metrics[key + '_chance']:.3f})"  # noqa: E731
  out = ["## Synchronisation and frame-level retrieval", "",
         f"Each {display.get(q, q)} window ranks the {display.get(g, g)} windows of the same clip at {k} offsets "
         f"(-{(k - 1) // 2}..{(k - 1) // 2} steps); {metrics['sync.queries']} queries, window "
         f"{metrics['sync.window']} step(s). Each cell: value (chance).", "",
         "| top-1 offset | within one step | MRR over offsets |", "|---|---|---|",
         f"| {fmt('sync.top1')} | {fmt('sync.within1')} | {fmt('sync.mrr')} |", ""]
  rows = sorted({key.rsplit(".", 1)[0] for key in metrics if key.startswith("frame_retrieval.")})
  if rows:
    out += ["Frame-level retrieval: a window queries every window of the other modality in the split; the relevant "
            "one is at the same position of the same clip.", "",
            "| query -> gallery, window | MRR | R@1 | R@10 |", "|---|---|---|---|"]
    for row in rows:
      pair, w = row.split(".")[1], row.split(".")[2]
      a, b = pair.split("_to_")
      out.append(f"| {display.get(a, a)} -> {display.get(b, b)}, {w} | {fmt(row + '.mrr')} | "
                 f"{fmt(row + '.recall@1')} | {fmt(row + '.recall@10')} |")
    out.append("")
  return out
