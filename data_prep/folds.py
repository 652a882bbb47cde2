"""K-fold cross-validation of a VoxCeleb1-layout corpus: fold assignments and one corpus folder per fold.

The videos of every split of iden_split.txt are pooled and dealt into K folds, stratified by identity (video_folds),
or, for an open-set CV, whole identities are (identity_folds). Fold k's corpus (write_fold_root) has test = fold k,
validation = fold (k + 1) mod K (checkpoint and row selection), train = the other K - 2 folds; its wav/, faces/,
vox1_meta.csv, ... are symlinks to the corpus's own, only iden_split.txt is rewritten. A video is keyed by its
YouTube id: a video listed under two identities is one video and stays in one fold.
"""

import os
import pathlib

import numpy as np

from data_prep import voxceleb1

BY = ("video", "identity")  # fold whole videos (closed set: test = unseen videos) or whole identities (open set)
ROLE_CODES = {"train": "1", "validation": "2", "test": "3"}
MIN_FOLDS = 3  # test, validation and at least one training fold


def _rel(line) -> str:
  """'id/ytid/utt.wav' from such a path, an iden_split.txt line '1 id/ytid/utt.wav', or a (split, path) pair."""
  if isinstance(line, (tuple, list)):
    line = line[-1]
  rel = str(line).split()[-1]
  if rel.count("/") != 2:
    raise ValueError(f"expected '<id>/<youtube id>/<utterance>.wav', got {line!r}")
  return rel


def videos_by_identity(lines) -> dict[str, list[str]]:
  """{identity: sorted YouTube ids}; a video listed under several identities goes to the one with most of its
  utterances (ties: the first identity in sorted order)."""
  counts: dict[str, dict[str, int]] = {}
  for line in lines:
    identity, video, _ = _rel(line).split("/")
    counts.setdefault(video, {}).setdefault(identity, 0)
    counts[video][identity] += 1
  out: dict[str, list[str]] = {}
  for video, by_id in sorted(counts.items()):
    owner = min(by_id, key=lambda i: (-by_id[i], i))
    out.setdefault(owner, []).append(video)
  return {i: sorted(v) for i, v in sorted(out.items())}


def identities(lines) -> list[str]:
  """The sorted identities of the lines."""
  return sorted({_rel(line).split("/")[0] for line in lines})


def check_k(lines, k: int, by: str = "video") -> None:
  """ValueError (one line) when K folds cannot be made: K < 3, an identity with fewer than K videos (by video), or
  fewer than 2 identities per test fold (by identity)."""
  if by not in BY:
    raise ValueError(f"fold by must be one of {BY}, got {by!r}")
  if not isinstance(k, int) or k < MIN_FOLDS:
    raise ValueError(f"--cv {k}: use K >= {MIN_FOLDS}; fold k is test, fold k+1 validation and the other K - 2 "
                     "folds train, so K = 2 leaves no training data")
  groups = videos_by_identity(lines)
  if not groups:
    raise ValueError("no utterances to fold: iden_split.txt lists none")
  if by == "video":
    fewest = min(groups, key=lambda i: (len(groups[i]), i))
    if len(groups[fewest]) < k:
      raise ValueError(f"--cv {k}: identity {fewest} has only {len(groups[fewest])} videos; every identity needs "
                       f">= K videos (one per fold, so it is in every test fold and every training split): use "
                       f"--cv <= {len(groups[fewest])}")
  else:
    need, n = voxceleb1.MIN_RETRIEVAL_IDENTITIES, len(identities(lines))
    if n < need * k:
      fix = (f"use --cv <= {n // need}" if n // need >= MIN_FOLDS
             else f"an open-set CV needs >= {need * MIN_FOLDS} identities")
      raise ValueError(f"--cv {k} with --split open: {n} identities give some test fold fewer than "
                       f"{need} identities (retrieval needs {need}): {fix}")


def _deal(keys_per_group: list[list[str]], k: int, rng: np.random.Generator) -> dict[str, int]:
  """Deals the keys, group after group, round robin into K folds from a random start, each group shuffled: every
  group spreads over the folds as evenly as possible (counts differ by at most 1), and so do the fold sizes."""
  fold, pointer = {}, int(rng.integers(k))
  for keys in keys_per_group:
    for i in rng.permutation(len(keys)):
      fold[keys[i]] = pointer % k
      pointer += 1
  return fold


def video_folds(lines, k: int, seed: int = 0) -> dict[str, int]:
  """{YouTube id: fold in 0..K-1}, each identity's videos spread over the folds as evenly as possible; a function of
  (the set of videos per identity, K, seed). lines: iden_split.txt lines, 'id/ytid/utt.wav' paths or pairs."""
  check_k(lines, k, "video")
  groups = videos_by_identity(lines)
  rng = np.random.default_rng([int(seed), 0x5F0D])
  order = [sorted(groups)[i] for i in rng.permutation(len(groups))]
  return _deal([groups[i] for i in order], k, rng)


def identity_folds(lines, k: int, seed: int = 0) -> dict[str, int]:
  """{identity: fold in 0..K-1} for an open-set CV: whole identities per fold, fold sizes differing by at most 1."""
  check_k(lines, k, "identity")
  rng = np.random.default_rng([int(seed), 0x1D])
  return _deal([identities(lines)], k, rng)


def role(fold: int, n_folds: int, test_fold: int) -> str:
  """train | validation | test of a unit in `fold` for the CV round whose test fold is `test_fold`."""
  if fold == test_fold:
    return "test"
  return "validation" if fold == (test_fold + 1) % n_folds else "train"


def fold_lines(lines, assignment: dict[str, int], n_folds: int, test_fold: int, by: str = "video") -> list[str]:
  """The iden_split.txt lines of round `test_fold` ('1|2|3 id/ytid/utt.wav'); KeyError for a unit not assigned."""
  if by not in BY:
    raise ValueError(f"fold by must be one of {BY}, got {by!r}")
  if not 0 <= test_fold < n_folds:
    raise ValueError(f"fold {test_fold} is not in 0..{n_folds - 1}")
  out = []
  for line in lines:
    rel = _rel(line)
    identity, video, _ = rel.split("/")
    unit = video if by == "video" else identity
    if unit not in assignment:
      raise KeyError(f"{rel}: its {by} {unit} has no fold in the assignment")
    out.append(f"{ROLE_CODES[role(assignment[unit], n_folds, test_fold)]} {rel}")
  return out


def write_fold_root(root, out_dir, assignment: dict[str, int], k: int, by: str = "video") -> pathlib.Path:
  """Makes OUT_DIR the VoxCeleb1 root of CV round k (test = fold k, validation = fold k+1 mod K, K = the number of
  folds in `assignment`): every entry of ROOT but iden_split.txt as a symlink to it, and iden_split.txt rewritten
  (1 train, 2 validation, 3 test). A rerun updates it in place. Returns OUT_DIR."""
  root = voxceleb1.check_root(pathlib.Path(root).absolute())
  out_dir = pathlib.Path(out_dir)
  n_folds = max(assignment.values()) + 1 if assignment else 0
  lines = [f"{ROLE_CODES[s]} {rel}" for s, rel in voxceleb1.read_split(root / "iden_split.txt")]
  text = "\n".join(fold_lines(lines, assignment, n_folds, k, by)) + "\n"
  out_dir.mkdir(parents=True, exist_ok=True)
  for entry in sorted(root.iterdir()):
    if entry.name == "iden_split.txt":
      continue
    link = out_dir / entry.name
    if link.is_symlink() and os.readlink(link) == str(entry):
      continue
    if link.is_symlink() or link.is_file():
      link.unlink()
    elif link.exists():
      raise ValueError(f"{link} is a folder, not the link to {entry} a fold corpus holds; remove it")
    link.symlink_to(entry, target_is_directory=entry.is_dir())
  target = out_dir / "iden_split.txt"
  if not target.is_file() or target.read_text() != text:
    tmp = out_dir / "iden_split.txt.tmp"
    tmp.write_text(text)
    os.replace(tmp, target)
  return out_dir
