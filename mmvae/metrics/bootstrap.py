"""Confidence intervals of per-query means from a bootstrap over clusters of queries (videos, identities).

Queries of one video (or one person) are not independent: a clustered bootstrap resamples whole clusters, so the
interval holds the between-cluster spread a plain per-query bootstrap would miss.

Draw order (a plain loop reproduces `cluster_bootstrap` exactly):
  1. drop the NaN values (queries with nothing relevant); number the clusters of the rest 0..C-1 in the sorted
     order of their ids (np.unique); without clusters, each remaining query is its own cluster, in index order;
  2. rng = np.random.default_rng(seed); for each of n_boot resamples in turn, idx = rng.integers(0, C, size=C)
     (C cluster indices with replacement);
  3. the resample's statistic: the sum of the values of every query in the clusters idx (a cluster drawn twice
     counts twice) over the number of those queries;
  4. the interval: np.quantile(statistics, [(1 - level) / 2, (1 + level) / 2]) (linear interpolation).
"""

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
BLOCK_DRAWS = 1 << 22  # cluster indices drawn at once (resamples x C), so memory stays bounded at any C
CLUSTER_KINDS = ("video", "identity", "example")


def cluster_bootstrap(values_N, clusters_N=None, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> tuple[float, float]:
  """(low, high): the percentile interval of the mean of values_N over resampled clusters (module docstring).

  clusters_N: any labels, one per value (None: every query its own cluster); NaN values are left out; (nan, nan)
  when no value is finite.
  """
  return intervals({"v": values_N}, clusters_N, n_boot, seed, level)["v"]


def intervals(values: dict, clusters_N=None, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
  """{name: cluster_bootstrap(values[name], clusters_N, ...)}, each exactly as alone; metrics whose NaNs fall on
  the same queries share one set of draws (the draws depend only on the cluster count and the seed)."""
  if n_boot < 1:
    raise ValueError(f"the bootstrap needs at least one resample, got n_boot={n_boot}")
  if not 0.0 < level < 1.0:
    raise ValueError(f"a confidence level is in (0, 1), got {level}")
  arrays = {k: np.asarray(v, np.float64).ravel() for k, v in values.items()}
  if clusters_N is not None:
    clusters_N = np.asarray(clusters_N)
    bad = [k for k, v in arrays.items() if len(v) != len(clusters_N)]
    if bad:
      raise ValueError(f"{len(clusters_N)} cluster labels for {len(arrays[bad[0]])} values of {bad[0]!r}")
  groups = {}
  for k, v in arrays.items():
    groups.setdefault(np.isnan(v).tobytes(), []).append(k)
  out, q = {}, [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
  for keys in groups.values():
    keep = ~np.isnan(arrays[keys[0]])
    if not keep.any():
      out.update({k: (float("nan"), float("nan")) for k in keys})
      continue
    stats_KxB = resample_means(np.stack([arrays[k][keep] for k in keys], 1),
                               None if clusters_N is None else clusters_N[keep], n_boot, seed)
    for k, stats in zip(keys, stats_KxB):
      low, high = np.quantile(stats, q)
      out[k] = (float(low), float(high))
  return out


def resample_means(values_NxK, clusters_N=None, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
  """[K, n_boot]: the resampled means of each column of finite values_NxK (steps 1-3 of the module docstring)."""
  values = np.asarray(values_NxK, np.float64).reshape(len(values_NxK), -1)
  if clusters_N is None:
    codes = np.arange(len(values))
  else:
    _, codes = np.unique(np.asarray(clusters_N), return_inverse=True)
    codes = codes.ravel()
  c = int(codes.max()) + 1
  sums_KxC = np.stack([np.bincount(codes, weights=v, minlength=c) for v in values.T])
  counts_C = np.bincount(codes, minlength=c).astype(np.float64)
  rng = np.random.default_rng(seed)
  stats = np.empty((values.shape[1], n_boot), np.float64)
  step = max(1, BLOCK_DRAWS // c)
  for lo in range(0, n_boot, step):  # one (k, C) draw is the same stream as k draws of C, in order
    idx = rng.integers(0, c, size=(min(step, n_boot - lo), c))
    n = counts_C[idx].sum(1)
    for k, sums_C in enumerate(sums_KxC):
      stats[k, lo:lo + len(idx)] = sums_C[idx].sum(1) / n
  return stats


def is_open_set(manifest: dict, test_labels=None, train_labels=None) -> bool:
  """Whether the analysed split's identities are unseen in training: the manifest's split_policy 'open', or test
  labels outside the training labels when those are known (coherence's rule)."""
  if (manifest or {}).get("split_policy") == "open":
    return True
  if test_labels is None or train_labels is None or not len(train_labels):
    return False
  return not set(np.asarray(test_labels).tolist()) <= set(np.asarray(train_labels).tolist())


def choose_clusters(fields: dict, manifest: dict, train_labels=None) -> tuple[np.ndarray, str]:
  """(cluster id per example as str, kind): the bootstrap's unit for an analysed split.

  fields: latents.npz's arrays ('label', text fields such as 'video', 'identity'). Open-set: the identity
  ('identity' text field, else the label); closed-set with a `video` text field: the video; else each example.
  """
  labels = np.asarray(fields["label"])
  if is_open_set(manifest, labels, train_labels):
    ident = fields.get("identity")
    return (np.asarray(ident).astype(str) if ident is not None else labels.astype(str)), "identity"
  if "video" in fields and "video_mu" not in fields:  # a modality named video is no text field
    return np.asarray(fields["video"]).astype(str), "video"
  return np.arange(len(labels)).astype(str), "example"


def ci_keys(values: dict, clusters_N, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
  """{'<key>_ci_low': low, '<key>_ci_high': high} of `cluster_bootstrap` for each {key: per-query values}."""
  out = {}
  for key, (low, high) in intervals(values, clusters_N, n_boot, seed, level).items():
    out.update({f"{key}_ci_low": low, f"{key}_ci_high": high})
  return out
