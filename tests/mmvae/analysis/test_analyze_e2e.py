"""`analyze` end to end: synthetic corpus -> prep -> tiny training -> report, checked independently."""

import json
import math
import pathlib

import numpy as np
import pytest

from data_prep import prepare, synthetic
from mmvae import cli, data
from mmvae import config as config_lib
from mmvae.analysis import report
from mmvae.train import checkpoints, entry


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny run on a 4-identity synthetic corpus, analysed once."""
  base = tmp_path_factory.mktemp("e2e")
  root = synthetic.generate_corpus(base / "raw", identities=4, seed=0, videos_per_identity=4,
                                   utterances_per_video=2, frames_per_video=2, progress=False, workers=1)
  prepare.prepare_voxceleb1(root, base / "data", config="synthetic:tiny", workers=1, corpus="synthetic")
  entry.train(config_lib.load("synthetic:tiny"), base / "data", base / "run")
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
  mu, logvar = model.encode("audio", test["audio"])
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

  for direction, (q, g) in {"audio_to_face": ("audio_mu", "face_mu"), "face_to_audio": ("face_mu", "audio_mu")}.items():
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
  for direction in ("audio_to_face", "face_to_audio", "audio_to_audio", "face_to_face"):
    for key in ("mrr", "recall@1", "recall@5", "recall@10", "map", "map@50", "auc", "eer", "matching_1v2"):
      assert f"retrieval.{direction}.{key}_chance" in metrics
  assert not [k for k in metrics if "voice" in k]  # keys name the modalities; "voice" is only a display label
  for key in ("audio_to_face.accuracy", "face_to_audio.accuracy", "audio_to_face.gender_accuracy",
              "real_face.accuracy", "real_audio.accuracy", "joint.accuracy"):
    assert f"coherence.{key}_chance" in metrics
  assert metrics["coherence.real_face.accuracy"] > metrics["coherence.real_face.accuracy_chance"]
  assert metrics["modalities"] == ["audio", "face"]
  for space in ("audio", "face", "joint"):
    assert 0 <= metrics[f"clusters.{space}.noise_fraction"] <= 1


def test_cross_generation_is_the_decoder_on_the_saved_latents(run):
  base, _, metrics = run
  rep = base / "run" / "report"
  lat, gen = np.load(rep / "latents.npz"), np.load(rep / "generated.npz")
  assert {"face_from_audio", "audio_from_face", "face_from_face", "audio_from_audio", "face_from_prior",
          "audio_from_prior"} <= set(gen.files)
  model, _, _ = checkpoints.load_run(base / "run")
  decoded = model.decode(lat["audio_mu"])
  np.testing.assert_allclose(gen["face_from_audio"], np.asarray(decoded["face"]), rtol=1e-4, atol=1e-5)
  assert len(gen["face_from_prior"]) == metrics["coherence.joint.samples"] == 1000
  md = (rep / "report.md").read_text()
  # Retrieval and coherence tables show voice and face (display labels) with chance beside each number.
  assert "| query \\ gallery | voice | face |" in md and "| source \\ target | voice | face |" in md
  assert "![Face generated from voice](face_from_audio.png)" in md
  # The test likelihood: the mean of the saved per-example estimates, K = analysis.likelihood_samples (16).
  lik = np.load(rep / "likelihood.npz")
  assert int(lik["samples"]) == metrics["likelihood.samples"] == 16 and len(lik["iwae"]) == metrics["examples"]
  assert metrics["likelihood.iwae_k16"] == pytest.approx(float(np.mean(lik["iwae"])))
  assert f"log p(x) ~= {metrics['likelihood.iwae_k16']:.4f} nats per example" in md


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


def _three_modalities(seed=0, classes=3, per_class=8):
  """Stored arrays of an audio (spectrogram), image and text modality whose values are noisy class templates."""
  from mmvae import modalities
  rng = np.random.default_rng(seed)
  vocab = ("<pad>", "a") + tuple(f"w{c}" for c in range(classes))
  specs = {"audio": modalities.Modality("audio", "spectrogram", (6, 4), "float32"),
           "image": modalities.Modality("image", "image", (1, 6, 6, 1), "uint8"),
           "text": modalities.Modality("text", "tokens", (2,), "int32", (("vocab", vocab),))}
  t = np.random.default_rng(99)
  templates = {"audio": t.normal(size=(classes, 6, 4)) * 2, "image": (t.random((classes, 6, 6, 1)) < 0.5) * 1.0,
               "text": np.array([[1, 2 + c] for c in range(classes)])}

  def stored(labels):
    n = len(labels)
    return {"audio": (templates["audio"][labels] + 0.3 * rng.normal(size=(n, 6, 4))).astype(np.float32),
            "image": np.clip(templates["image"][labels][:, None] * 200 + rng.integers(0, 56, (n, 1, 6, 6, 1)),
                             0, 255).astype(np.uint8),
            "text": templates["text"][labels].astype(np.int32), "label": labels}

  def decoded(name, classes_n):
    return templates[name][classes_n].astype(np.int32 if name == "text" else np.float32)

  return specs, stored, decoded, vocab


def test_three_modalities_from_saved_arrays(tmp_path):
  specs, stored, decoded, vocab = _three_modalities()
  names = list(specs)
  labels = np.repeat(np.arange(3), 8)
  test, train = stored(labels), stored(np.repeat(np.arange(3), 20))
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(3, 4)) * 2
  latents = {"label": labels, **{f"{m}_mu": centres[labels] + rng.normal(size=(24, 4)) for m in names},
             **{f"{m}_logvar": np.zeros((24, 4)) for m in names}}
  wrong = np.where(np.arange(24) % 2 == 0, (labels + 1) % 3, labels)  # text latents: the wrong class half the time
  generated = {f"{g}_from_{q}": decoded(g, wrong if q == "text" else labels) for q in names for g in names}
  prior = {m: rng.integers(0, 3, 300) for m in names}  # classes of 300 prior samples, independent per modality
  generated.update({f"{m}_from_prior": decoded(m, prior[m]) for m in names})
  lik = {"iwae": np.array([-3.0, -5.0]), "expected_log_lik_audio": np.array([-1.0, -2.0]), "samples": np.array(4)}
  manifest = {"identities": [{"name": w} for w in ("zero", "one", "two")], "relevance": "same digit"}
  metrics = report.analyze_arrays(tmp_path, latents, generated, test, train, specs, manifest, lik=lik)
  assert metrics["modalities"] == names
  for q in names:
    for g in names:
      assert f"retrieval.{q}_to_{g}.mrr_chance" in metrics and f"retrieval_w2.{q}_to_{g}.map@50" in metrics
      if q != g:
        assert metrics[f"coherence.{q}_to_{g}.accuracy"] == (0.5 if q == "text" else 1.0), (q, g)
        assert f"nearest.{q}_to_{g}.own_rank_mean" in metrics
  agree = np.mean((prior["audio"] == prior["image"]) & (prior["image"] == prior["text"]))
  assert metrics["coherence.joint.accuracy"] == pytest.approx(agree)
  assert metrics["likelihood.iwae_k4"] == -4.0 and metrics["likelihood.expected_log_lik.audio"] == -1.5
  for space in names + ["joint"]:
    assert f"clusters.{space}.ari" in metrics
  md = (tmp_path / "report.md").read_text()
  assert "| query \\ gallery | audio | image | text |" in md and "| source \\ target | audio | image | text |" in md
  assert "relevant: same digit" in md and "log p(x) ~= -4.0000 nats" in md
  assert "| identity | real text | from audio | from image |" in md and "| one | a w1 | a w1 | a w1 |" in md
  pngs = {p.name for p in tmp_path.glob("*.png")}
  assert pngs == {"tsne.png", "dbscan.png", "audio_from_image.png", "audio_from_text.png", "image_from_audio.png",
                  "image_from_text.png"}
  assert all(f"]({p})" in md for p in pngs)
  # A model that cannot generate: no coherence, no generated figures left behind from the analysis before.
  again = report.analyze_arrays(tmp_path, latents, None, test, train, specs, manifest)
  assert not [k for k in again if k.startswith(("coherence.", "likelihood."))]
  assert {p.name for p in tmp_path.glob("*.png")} == {"tsne.png", "dbscan.png"}


def test_likelihood_of_a_trained_model_with_a_joint_posterior_matches_a_numpy_loop(run):
  """The real-model path (stored arrays -> model inputs, the run's sigmas, joint posterior, decode) against numpy."""
  from mmvae.analysis import marginal_likelihood
  base, _, _ = run
  joint, config, _ = checkpoints.load_run(base / "run")  # the MS-VAE's joint posterior: a PoE of its encoders
  dataset = data.Dataset(base / "data")
  test, specs = dataset.arrays("test"), dataset.modalities()
  got = marginal_likelihood.for_run(joint, config, test, specs, samples=3, seed=5, latent_dim=config.model.latent_dim)
  sigma = {k: float(np.exp(v)) for k, v in marginal_likelihood.log_sigmas(joint, config.loss).items()}
  x = {"audio": np.asarray(test["audio"], np.float64), "face": test["face"][:, 0].astype(np.float64) / 255.0}
  mu, logvar = (np.asarray(v, np.float64) for v in joint.joint_posterior(
      {"audio": test["audio"], "face": test["face"][:, 0].astype(np.float32) / 255.0}))
  for i in range(len(test["label"])):
    eps = np.random.default_rng((5, i)).standard_normal((3, mu.shape[1]))
    z = mu[i] + np.exp(0.5 * logvar[i]) * eps
    out = joint.decode(z.astype(np.float32))
    log_w = []
    for k in range(3):
      total = 0.0
      for name in ("audio", "face"):
        r = (np.asarray(out[name][k], np.float64) - x[name][i]).ravel()
        total += float(np.sum(-0.5 * (r / sigma[name]) ** 2 - np.log(sigma[name]) - 0.5 * math.log(2 * math.pi)))
      log_prior = float(np.sum(-0.5 * z[k] ** 2 - 0.5 * math.log(2 * math.pi)))
      log_q = float(np.sum(-0.5 * (eps[k] ** 2 + logvar[i] + math.log(2 * math.pi))))
      log_w.append(total + log_prior - log_q)
    want = max(log_w) + math.log(sum(math.exp(w - max(log_w)) for w in log_w) / 3)
    assert got["iwae"][i] == pytest.approx(want, rel=1e-4, abs=1e-2), i
