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


def test_coherence_scores_faces_the_classifier_never_saw():
  train_f, train_l = _faces(0, 10)
  test_f, test_l = _faces(1, 5)
  held_out, held_l = _faces(2, 5)  # new renders (new scenes) of the test identities, in the test order
  np.testing.assert_array_equal(held_l, test_l)
  assert not any(np.array_equal(h, t) for h in held_out[:, 0] for t in np.concatenate([train_f, test_f])[:, 0])
  # "Generated" faces are float images in [0, 1], as a decoder returns them.
  generated = held_out[:, 0].astype(np.float32) / 255.0
  identities = [dict(name=f"p{i}", gender=p["sex"], **p) for i, p in enumerate(PEOPLE)]

  def score(gen, labels=test_l, attributes=("gender",), train_labels=train_l):
    return coherence.coherence_scores(train_f, train_labels, test_f, labels, gen, identities, attributes)

  metrics, notes = score(generated, attributes=("gender", "hair_color"))
  assert not metrics["coherence.open_set"] and notes == []
  # Balanced labels (5 per identity) make chance 1/4 whatever the predictions: sum_c P(pred=c) * 1/4.
  assert metrics["coherence.identity_accuracy_chance"] == pytest.approx(0.25)
  assert metrics["coherence.identity_accuracy"] >= 0.8 and metrics["coherence.real_identity_accuracy"] >= 0.8
  assert metrics["coherence.real_identity_accuracy_chance"] == pytest.approx(0.25)
  assert metrics["coherence.gender_accuracy"] >= 0.8 and metrics["coherence.gender_accuracy_chance"] == 0.5
  assert metrics["coherence.hair_color_accuracy"] >= 0.8
  # Faces of the wrong person score near 0, a collapsed decoder (one face for all) exactly 1/4 = chance,
  # a shuffled order about chance.
  wrong, _ = score(generated[np.argsort((test_l + 1) % 4, kind="stable")])
  assert wrong["coherence.identity_accuracy"] <= 0.2
  collapsed, _ = score(np.repeat(generated[:1], len(generated), axis=0))
  assert collapsed["coherence.identity_accuracy"] == collapsed["coherence.identity_accuracy_chance"] == 0.25
  assert collapsed["coherence.gender_accuracy"] == collapsed["coherence.gender_accuracy_chance"] == 0.5
  shuffled, _ = score(generated[np.random.default_rng(0).permutation(len(generated))])
  assert abs(shuffled["coherence.identity_accuracy"] - 0.25) <= 0.2
  # Real test faces under the wrong labels: the real-face accuracy comes from the classifier, not the labels.
  mislabelled, _ = score(generated, labels=(test_l + 1) % 4)
  assert mislabelled["coherence.real_identity_accuracy"] <= 0.2 and mislabelled["coherence.identity_accuracy"] <= 0.2
  # A classifier trained on shuffled training labels has nothing to learn: about chance on every face.
  untrained, _ = score(generated, train_labels=np.random.default_rng(0).permutation(train_l))
  assert abs(untrained["coherence.identity_accuracy"] - 0.25) <= 0.2
  assert abs(untrained["coherence.real_identity_accuracy"] - 0.25) <= 0.2


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
