"""Coherence classifier on rendered faces, its chance level, the WAV -> model-input path, face PNGs."""

import numpy as np
import pytest
import soundfile
from PIL import Image

from data_prep import synthetic_face
from experiments.configs import synthetic
from mmvae.analysis import coherence, generation

PEOPLE = [dict(sex="m", size="large", age="adult", hair_color="black", skin="light", hair_length="short", glasses="no"),
          dict(sex="f", size="small", age="young", hair_color="blond", skin="dark", hair_length="long", glasses="yes"),
          dict(sex="m", size="medium", age="senior", hair_color="brown", skin="medium", hair_length="short", glasses="yes"),
          dict(sex="f", size="medium", age="adult", hair_color="red", skin="light", hair_length="long", glasses="no")]


def _faces(seed, per_identity):
  """[N, 1, 16, 16, 3] uint8 renders (a new scene per frame) and labels."""
  faces, labels = [], []
  for i, attrs in enumerate(PEOPLE):
    face = synthetic_face.make_face(attrs, np.random.default_rng(100 + i))  # identity fixed across splits
    rng = np.random.default_rng((seed, i))
    for _ in range(per_identity):
      faces.append(synthetic_face.render(face, synthetic_face.make_scene(face, rng), rng, size=16)[None])
      labels.append(i)
  return np.stack(faces), np.array(labels)


def test_coherence_classifier_beats_chance_on_real_faces():
  train_f, train_l = _faces(0, 10)
  test_f, test_l = _faces(1, 5)
  identities = [dict(name=f"p{i}", gender=p["sex"], **p) for i, p in enumerate(PEOPLE)]
  # "Generated" faces here are the real test faces with their frames reversed in label order: a decoder
  # that mixes identities up must score near chance, and one that returns the right faces must not.
  metrics, notes = coherence.coherence_scores(train_f, train_l, test_f, test_l, test_f[:, 0], identities,
                                              ("gender", "hair_color"))
  assert metrics["coherence.real_identity_accuracy"] >= 0.8 > metrics["coherence.real_identity_accuracy_chance"] + 0.4
  assert metrics["coherence.real_gender_accuracy"] > metrics["coherence.real_gender_accuracy_chance"] + 0.3
  assert metrics["coherence.identity_accuracy"] == metrics["coherence.real_identity_accuracy"]
  wrong = test_f[np.argsort((test_l + 1) % 4, kind="stable"), 0]  # every face of another identity
  bad, _ = coherence.coherence_scores(train_f, train_l, test_f, test_l, wrong, identities, ("gender",))
  assert bad["coherence.identity_accuracy"] <= 0.2
  assert not metrics["coherence.open_set"] and notes == []


def test_open_set_reports_attributes_only():
  train_f, train_l = _faces(0, 6)
  test_f, test_l = _faces(1, 3)
  identities = [dict(name=f"p{i}", gender=p["sex"]) for i, p in enumerate(PEOPLE)]
  keep_train, keep_test = train_l < 3, test_l >= 2
  metrics, notes = coherence.coherence_scores(train_f[keep_train], train_l[keep_train], test_f[keep_test],
                                              test_l[keep_test], test_f[keep_test][:, 0], identities, ("gender",))
  assert metrics["coherence.open_set"] and "coherence.identity_accuracy" not in metrics
  assert "coherence.gender_accuracy" in metrics and "open-set" in notes[0]


def test_independence_chance_matches_permutation_average():
  rng = np.random.default_rng(0)
  pred, true = rng.integers(0, 3, 40), rng.integers(0, 4, 40)
  total = 0
  for a in pred:  # every (prediction, truth) pairing equally likely: the mean accuracy over all of them
    for b in true:
      total += a == b
  assert coherence.independence_chance(pred, true) == pytest.approx(total / 1600)


def test_voice_features_apply_the_dataset_normalisation(tmp_path):
  cfg = synthetic.get_config().data
  rng = np.random.default_rng(0)
  wav = tmp_path / "v.wav"
  soundfile.write(wav, (0.1 * rng.normal(size=cfg.sample_rate * 3)).astype(np.float32), cfg.sample_rate,
                  subtype="PCM_16")
  from data_prep import audio
  raw = audio.utterance_features(str(wav), cfg, train=False, rng=np.random.default_rng(0))
  mean, std = rng.normal(size=raw.shape), rng.uniform(0.5, 2, raw.shape)
  got = generation.voice_features(wav, cfg, {"audio_normalisation": {"mean": mean.tolist(), "std": std.tolist()}})
  np.testing.assert_allclose(got, (raw - mean) / std, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(generation.voice_features(wav, cfg, {"audio_normalisation": None}), raw, rtol=1e-6)


def test_face_png_and_figures(tmp_path):
  face = np.random.default_rng(0).uniform(size=(8, 8, 3))
  generation.save_face_png(face, tmp_path / "f.png", scale=3)
  img = np.asarray(Image.open(tmp_path / "f.png"))
  assert img.shape == (24, 24, 3)
  np.testing.assert_array_equal(img[::3, ::3], (face * 255 + 0.5).astype(np.uint8))
  real, labels = _faces(2, 2)
  gen = real[:, 0] / 255.0
  generation.plot_face_grid(tmp_path / "g.png", real, gen, gen, labels, {0: "a"})
  audio = np.random.default_rng(1).normal(size=(len(labels), 20))
  generation.plot_spectra(tmp_path / "s.png", audio, audio, audio, labels, {})
  generation.plot_spectra(tmp_path / "s2.png", audio.reshape(-1, 4, 5), audio.reshape(-1, 4, 5),
                          audio.reshape(-1, 4, 5), labels, {})
  assert all((tmp_path / n).stat().st_size > 5000 for n in ("g.png", "s.png", "s2.png"))
