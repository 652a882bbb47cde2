"""`analyze` end to end: synthetic corpus -> prep -> tiny training -> report, checked independently."""

import json
import math
import pathlib

import numpy as np
import pytest

from data_prep import prepare, synthetic
from mmvae import cli, data, modalities
from mmvae import config as config_lib
from mmvae.analysis import report
from mmvae.train import checkpoints, trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny run on a 4-identity synthetic corpus, analysed once."""
  base = tmp_path_factory.mktemp("e2e")
  root = synthetic.generate_corpus(base / "raw", identities=4, seed=0, videos_per_identity=4,
                                   utterances_per_video=2, frames_per_video=2, progress=False, workers=1)
  prepare.prepare_voxceleb1(root, base / "data", config="synthetic:tiny", workers=1, corpus="synthetic")
  trainer.train(config_lib.load("synthetic:tiny"), base / "data", base / "run")
  metrics = report.analyze(base / "run")
  return base, root, metrics


def test_report_files_and_latents_follow_the_dataset(run):
  base, _, metrics = run
  rep = base / "run" / "report"
  lat = np.load(rep / "latents.npz")
  test = data.Dataset(base / "data").arrays("test")
  for key in ("audio_mu", "audio_logvar", "face_mu", "face_logvar", "label", "id"):
    assert key in lat.files and len(lat[key]) == len(test["label"])
  np.testing.assert_array_equal(lat["label"], test["label"])
  np.testing.assert_array_equal(lat["id"], test["id"])
  # The saved voice latents are the model's posterior means of the same examples.
  model, _, _ = checkpoints.load_run(base / "run")
  mu, logvar = model.encode(modalities.AUDIO, test["audio"])
  np.testing.assert_allclose(lat["audio_mu"], np.asarray(mu), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(lat["audio_logvar"], np.asarray(logvar), rtol=1e-4, atol=1e-5)
  assert json.loads((rep / "metrics.json").read_text()) == metrics
  md = (rep / "report.md").read_text()
  pngs = sorted(p.name for p in rep.glob("*.png"))
  assert len(pngs) >= 4 and all(f"]({p})" in md for p in pngs)
  assert "chance" in md and "Tie policy" in md and "## Config" in md and "## Dataset" in md


def test_metrics_match_a_plain_loop_on_the_saved_latents(run):
  base, _, metrics = run
  lat = np.load(base / "run" / "report" / "latents.npz")
  labels = lat["label"].tolist()

  def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

  for direction, (q, g) in {"voice_to_face": ("audio_mu", "face_mu"), "face_to_voice": ("face_mu", "audio_mu")}.items():
    rr = []
    for i, qv in enumerate(lat[q].tolist()):
      scores = [cos(qv, gv) for gv in lat[g].tolist()]
      best = max(s for s, lab in zip(scores, labels) if lab == labels[i])
      above = sum(1 for s in scores if s > best)
      tied = [lab == labels[i] for s, lab in zip(scores, labels) if s == best]
      # Utterances of one video share their face frames, so tied faces are of the same identity and
      # the first relevant rank is plain; a tie with another identity would need the tie policy.
      assert all(tied)
      rr.append(1.0 / (above + 1))
    assert metrics[f"retrieval.{direction}.mrr"] == pytest.approx(sum(rr) / len(rr))
    n, r = len(labels), labels.count(labels[0])
    assert metrics[f"retrieval.{direction}.recall@1_chance"] == pytest.approx(r / n)
  for key in ("mrr", "recall@1", "recall@5", "recall@10", "map", "map@50", "auc", "eer", "matching_1v2"):
    assert f"retrieval.voice_to_face.{key}_chance" in metrics
  for key in ("identity_accuracy", "gender_accuracy", "real_identity_accuracy"):
    assert f"coherence.{key}_chance" in metrics
  assert metrics["coherence.real_identity_accuracy"] > metrics["coherence.real_identity_accuracy_chance"]
  for space in ("audio", "face", "joint"):
    assert 0 <= metrics[f"clusters.{space}.noise_fraction"] <= 1


def test_rebuild_without_model_and_generate_face_cli(run, tmp_path):
  base, root, metrics = run
  assert report.rebuild(base / "run") == metrics
  wav = sorted(pathlib.Path(root, "wav").rglob("*.wav"))[0]
  out = tmp_path / "face.png"
  assert cli.main(["generate", "face", "--workdir", str(base / "run"), "--wav", str(wav), "--out", str(out)]) == 0
  from PIL import Image
  assert Image.open(out).size == (4 * 32, 4 * 32)
  assert cli.main(["generate", "face", "--workdir", str(base / "run"), "--wav", str(tmp_path / "no.wav"),
                   "--out", str(out)]) == 2
