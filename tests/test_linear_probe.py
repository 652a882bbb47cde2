"""experiments/linear_probe.py: the folds are `mmvae sweep --cv`'s, retrieval agrees with a loop, the probe reads test once."""

import numpy as np
import pytest

from data_prep import voxceleb1
from experiments import linear_probe
from mmvae import cv

ROLES = {"1": "train", "2": "validation", "3": "test"}


def test_rounds_are_the_fold_corpora_sweep_cv_writes(shared_data, tmp_path):
  root = shared_data / "voxceleb1-mini"
  ids = [rel for _, rel in voxceleb1.read_split(root / "iden_split.txt")]
  cv.make_folds(root, tmp_path, 5)
  rounds = linear_probe.rounds(ids, 5)
  assert len(rounds) == 5
  for k, masks in enumerate(rounds):
    written = dict(line.split()[::-1] for line in (tmp_path / "folds" / f"fold{k}" / "iden_split.txt")
                   .read_text().splitlines())
    for i, rel in enumerate(ids):
      assert masks[ROLES[written[rel]]][i], (k, rel)
    assert sum(int(m.sum()) for m in masks.values()) == len(ids)  # each utterance in exactly one role


def _brute_mrr(q, g, labels):
  out = []
  for i in range(len(q)):
    s = [float(np.dot(q[i], g[j]) / np.linalg.norm(q[i]) / np.linalg.norm(g[j])) for j in range(len(g))]
    order = sorted(range(len(g)), key=lambda j: -s[j])
    out.append(1.0 / (1 + next(r for r, j in enumerate(order) if labels[j] == labels[i])))
  return float(np.mean(out))


def test_retrieval_is_the_mrr_of_class_probability_cosines():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 40)
  prob = {m: rng.dirichlet(np.ones(4), 40) for m in ("voice", "face")}
  got = linear_probe.retrieval(prob, labels)
  assert got["voice_to_face"]["mrr"] == pytest.approx(_brute_mrr(prob["voice"], prob["face"], labels), abs=1e-9)
  assert got["face_to_voice"]["mrr"] == pytest.approx(_brute_mrr(prob["face"], prob["voice"], labels), abs=1e-9)


def _arrays(signal: float, seed: int = 0):
  """Four identities x four videos x three utterances; voice and face carry the identity with weight `signal`."""
  rng = np.random.default_rng(seed)
  ids, labels = [], []
  for p in range(4):
    for v in range(4):
      for u in range(3):
        ids.append(f"id0000{p}/vid{p}{v}/{u:05d}.wav")
        labels.append(p)
  labels = np.array(labels)
  onehot = np.eye(4)[labels]
  audio = signal * onehot @ rng.normal(size=(4, 12)) + rng.normal(size=(len(ids), 12))
  face = signal * (onehot @ rng.normal(size=(4, 2 * 4 * 4 * 3))).reshape(-1, 2, 4, 4, 3)
  face = np.clip(128 + 20 * (face + rng.normal(size=face.shape)), 0, 255).astype(np.uint8)
  return {"audio": audio.astype(np.float32), "face": face, "label": labels, "id": np.array(ids)}


def test_probe_separates_clean_identities_and_falls_to_chance_on_noise():
  clean = linear_probe.probe(_arrays(signal=6.0), k=4)
  for r in clean["rounds"]:
    assert r["voice_identity_accuracy"] == 1.0 and r["face_identity_accuracy"] == 1.0
    assert r["voice_to_face.mrr"] == pytest.approx(1.0) and r["face_to_voice.mrr"] == pytest.approx(1.0)
  noise = [linear_probe.probe(_arrays(signal=0.0, seed=s), k=4)["rounds"] for s in range(3)]
  mrr = np.mean([r["voice_to_face.mrr"] for rounds in noise for r in rounds])
  chance = np.mean([r["voice_to_face.mrr_chance"] for rounds in noise for r in rounds])
  assert abs(mrr - chance) < 0.12, (mrr, chance)  # 12 test queries a round: chance within sampling noise
  assert "| voice->face MRR |" in linear_probe.markdown(clean)


def test_each_round_trains_validates_and_tests_on_disjoint_videos():
  arrays = _arrays(signal=1.0)
  videos = np.array([i.split("/")[1] for i in arrays["id"]])
  for masks in linear_probe.rounds(arrays["id"], 4):
    sets = {r: set(videos[m]) for r, m in masks.items()}
    assert not (sets["train"] & sets["validation"]) and not (sets["train"] & sets["test"])
    assert not (sets["validation"] & sets["test"]) and sets["test"]
  tested = [set(videos[m["test"]]) for m in linear_probe.rounds(arrays["id"], 4)]
  assert set.union(*tested) == set(videos) and sum(map(len, tested)) == len(set(videos))
