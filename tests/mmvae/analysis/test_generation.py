"""Cross generation, coherence (cross and joint) with known answers, the WAV -> model-input path, figures."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from flax import nnx
from PIL import Image

from data_prep import synthetic_face
from experiments.configs import synthetic
from mmvae import modalities
from mmvae.analysis import coherence, from_wav, generation, generation_figures

PEOPLE = [dict(sex="m", size="large", age="adult", hair_color="black", skin="light", hair_length="short", glasses="no"),
          dict(sex="f", size="small", age="young", hair_color="blond", skin="dark", hair_length="long", glasses="yes"),
          dict(sex="m", size="medium", age="senior", hair_color="brown", skin="medium", hair_length="short", glasses="yes"),
          dict(sex="f", size="medium", age="adult", hair_color="red", skin="light", hair_length="long", glasses="no")]
FACE_SPECS = {"audio": modalities.Modality("audio", "vector", (6,), "float32"),
              "face": modalities.Modality("face", "image", (1, 16, 16, 3), "uint8")}


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


def _voices(labels, seed):
  """Vectors around a fixed centre per identity."""
  centres = np.random.default_rng(50).normal(size=(len(PEOPLE), 6)) * 3
  return (centres[labels] + 0.3 * np.random.default_rng(seed).normal(size=(len(labels), 6))).astype(np.float32)


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
    train = {"face": train_f, "audio": _voices(train_l, 0), "label": train_labels}
    test = {"face": test_f, "audio": _voices(test_l, 1), "label": labels}
    return coherence.coherence_scores(train, test, {"face_from_audio": gen}, FACE_SPECS, identities, attributes)

  metrics, notes = score(generated, attributes=("gender", "hair_color"))
  assert not metrics["coherence.open_set"] and notes == []
  # Balanced labels (5 per identity) make chance 1/4 whatever the predictions: sum_c P(pred=c) * 1/4.
  assert metrics["coherence.audio_to_face.accuracy_chance"] == pytest.approx(0.25)
  assert metrics["coherence.audio_to_face.accuracy"] >= 0.8 and metrics["coherence.real_face.accuracy"] >= 0.8
  assert metrics["coherence.real_face.accuracy_chance"] == pytest.approx(0.25)
  assert metrics["coherence.audio_to_face.gender_accuracy"] >= 0.8
  assert metrics["coherence.audio_to_face.gender_accuracy_chance"] == 0.5
  assert metrics["coherence.audio_to_face.hair_color_accuracy"] >= 0.8
  assert metrics["coherence.face.classes"] == 4 and metrics["coherence.face.gender_classes"] == 2
  assert "coherence.face_to_audio.accuracy" not in metrics  # nothing generated for that pair
  assert not [k for k in metrics if "gender" in k and "audio." in k]  # attributes are scored on images only
  # Faces of the wrong person score near 0, a collapsed decoder (one face for all) exactly 1/4 = chance,
  # a shuffled order about chance.
  wrong, _ = score(generated[np.argsort((test_l + 1) % 4, kind="stable")])
  assert wrong["coherence.audio_to_face.accuracy"] <= 0.2
  collapsed, _ = score(np.repeat(generated[:1], len(generated), axis=0))
  assert collapsed["coherence.audio_to_face.accuracy"] == collapsed["coherence.audio_to_face.accuracy_chance"] == 0.25
  assert collapsed["coherence.audio_to_face.gender_accuracy"] == 0.5
  assert collapsed["coherence.audio_to_face.gender_accuracy_chance"] == 0.5
  shuffled, _ = score(generated[np.random.default_rng(0).permutation(len(generated))])
  assert abs(shuffled["coherence.audio_to_face.accuracy"] - 0.25) <= 0.2
  # Real test faces under the wrong labels: the real-face accuracy comes from the classifier, not the labels.
  mislabelled, _ = score(generated, labels=(test_l + 1) % 4)
  assert mislabelled["coherence.real_face.accuracy"] <= 0.2 and mislabelled["coherence.audio_to_face.accuracy"] <= 0.2
  # A classifier trained on shuffled training labels has nothing to learn: about chance on every face.
  untrained, _ = score(generated, train_labels=np.random.default_rng(0).permutation(train_l))
  assert abs(untrained["coherence.audio_to_face.accuracy"] - 0.25) <= 0.2
  assert abs(untrained["coherence.real_face.accuracy"] - 0.25) <= 0.2


def test_open_set_reports_attributes_only():
  train_f, train_l = _faces(0, 6)
  test_f, test_l = _faces(1, 3)
  identities = [dict(name=f"p{i}", gender=p["sex"]) for i, p in enumerate(PEOPLE)]
  keep_train, keep_test = train_l < 3, test_l >= 2
  train = {"face": train_f[keep_train], "audio": _voices(train_l[keep_train], 0), "label": train_l[keep_train]}
  test = {"face": test_f[keep_test], "audio": _voices(test_l[keep_test], 1), "label": test_l[keep_test]}
  metrics, notes = coherence.coherence_scores(train, test, {"face_from_audio": test_f[keep_test][:, 0]}, FACE_SPECS,
                                              identities, ("gender",))
  assert metrics["coherence.open_set"] and "coherence.audio_to_face.accuracy" not in metrics
  assert "coherence.audio_to_face.gender_accuracy" in metrics and "open-set" in notes[0]


def test_independence_and_agreement_chance_match_averages_over_all_pairings():
  rng = np.random.default_rng(0)
  pred, true = rng.integers(0, 3, 40), rng.integers(0, 4, 40)
  total = 0
  for a in pred:  # every (prediction, truth) pairing equally likely: the mean accuracy over all of them
    for b in true:
      total += a == b
  assert coherence.independence_chance(pred, true) == pytest.approx(total / 1600)
  p1, p2, p3 = rng.integers(0, 3, 12), rng.integers(0, 3, 10), rng.integers(1, 4, 8)
  agree = sum(a == b == c for a, b, c in itertools.product(p1, p2, p3))  # independent draws, one from each
  assert coherence.agreement_chance([p1, p2, p3]) == pytest.approx(agree / (12 * 10 * 8))


C = 4  # classes of the template model
TEMPLATE_VOCAB = ("<pad>", "the", "zero", "one", "two", "three")
TEMPLATE_SPECS = {"img": modalities.Modality("img", "image", (2, 6, 6, 1), "uint8"),
                  "vec": modalities.Modality("vec", "vector", (5,), "float32"),
                  "txt": modalities.Modality("txt", "tokens", (3,), "int32", (("vocab", TEMPLATE_VOCAB),))}


def _templates():
  rng = np.random.default_rng(11)
  ids = np.array([[1, 2 + c, 0] for c in range(C)])
  return {"img": (rng.random((C, 6, 6, 1)) < 0.5).astype(np.float32), "vec": rng.normal(size=(C, 5)) * 3,
          "txt": 10.0 * np.eye(len(TEMPLATE_VOCAB))[ids]}


class TemplateDecoder(nnx.Module):
  """Decodes z to class templates: img and vec of class argmax(z[:C]), txt of class argmax(z[C:])."""

  can_generate = True

  def __init__(self):
    self.templates = nnx.Dict({k: nnx.Variable(jnp.asarray(v, jnp.float32)) for k, v in _templates().items()})

  def decode(self, z):
    first, second = jnp.argmax(z[:, :C], axis=1), jnp.argmax(z[:, C:], axis=1)
    return {"img": self.templates["img"][...][first], "vec": self.templates["vec"][...][first],
            "txt": self.templates["txt"][...][second]}


def _real(labels, seed):
  """Stored data of each modality: noisy templates (two frames per image), texts in two surface forms."""
  rng = np.random.default_rng(seed)
  t = _templates()
  img = np.clip(t["img"][labels][:, None] * 200 + rng.integers(0, 56, (len(labels), 2, 6, 6, 1)), 0, 255)
  txt = np.array([[2 + c, 0, 0] if rng.random() < 0.5 else [1, 2 + c, 0] for c in labels], np.int32)
  return {"img": img.astype(np.uint8), "vec": (t["vec"][labels] + 0.3 * rng.normal(size=(len(labels), 5))),
          "txt": txt, "label": labels}


def _template_class(name, data):
  """Which template each decoded example is (nearest template), independently of any classifier."""
  t = _templates()
  if name == "txt":
    return np.array([int(row[1]) - 2 for row in data])
  flat = np.asarray(data).reshape(len(data), -1)
  return np.argmin(((flat[:, None] - t[name].reshape(C, -1)[None]) ** 2).sum(-1), axis=1)


def test_cross_and_joint_coherence_of_a_template_decoder_are_known_by_construction():
  labels = np.repeat(np.arange(C), 10)
  n = len(labels)
  one_hot = np.eye(C)
  latents = {f"{m}_mu": np.hstack([one_hot[labels], one_hot[labels]]) for m in ("img", "vec")}
  wrong = np.where(np.arange(n) % 2 == 0, (labels + 1) % C, labels)  # every other text points at the next class
  latents["txt_mu"] = np.hstack([one_hot[wrong], one_hot[labels]])
  model = TemplateDecoder()
  generated = generation.cross_generate(model, latents, TEMPLATE_SPECS, batch_size=16)
  assert set(generated) == {f"{g}_from_{q}" for q in TEMPLATE_SPECS for g in TEMPLATE_SPECS}
  assert generated["txt_from_img"].shape == (n, 3) and generated["img_from_vec"].shape == (n, 6, 6, 1)
  np.testing.assert_array_equal(_template_class("img", generated["img_from_txt"]), wrong)
  np.testing.assert_array_equal(generated["txt_from_vec"], np.array([[1, 2 + c, 0] for c in labels]))
  prior = generation.sample_prior(model, TEMPLATE_SPECS, 2 * C, n=400, seed=3, batch_size=64)
  generated.update(prior)
  metrics, notes = coherence.coherence_scores(_real(np.repeat(np.arange(C), 30), 0), _real(labels, 1), generated,
                                              TEMPLATE_SPECS)
  assert notes == []
  for q, g in itertools.permutations(TEMPLATE_SPECS, 2):
    want = 0.5 if q == "txt" and g != "txt" else 1.0  # text latents name the wrong class for img and vec half the time
    assert metrics[f"coherence.{q}_to_{g}.accuracy"] == want, (q, g)
    assert metrics[f"coherence.{q}_to_{g}.accuracy_chance"] == pytest.approx(1 / C)  # balanced labels
    assert metrics[f"coherence.real_{g}.accuracy"] == 1.0
  # Joint: img and vec follow z[:C], txt follows z[C:]; they agree when both argmaxes are one class.
  classes = {m: _template_class(m, prior[f"{m}_from_prior"]) for m in TEMPLATE_SPECS}
  agree = np.mean((classes["img"] == classes["vec"]) & (classes["vec"] == classes["txt"]))
  assert 0.1 < agree < 0.45 and metrics["coherence.joint.accuracy"] == pytest.approx(agree)
  freq = {m: [np.mean(classes[m] == c) for c in range(C)] for m in classes}
  chance = sum(freq["img"][c] * freq["vec"][c] * freq["txt"][c] for c in range(C))
  assert metrics["coherence.joint.accuracy_chance"] == pytest.approx(chance)
  assert metrics["coherence.joint.samples"] == 400
  # A decoder whose every modality follows one slot is jointly coherent on every sample.
  same = {k: v for k, v in prior.items()}
  same["txt_from_prior"] = np.array([[1, 2 + c, 0] for c in classes["img"]])
  joint, _ = coherence.coherence_scores(_real(np.repeat(np.arange(C), 30), 0), _real(labels, 1),
                                        {**generated, **same}, TEMPLATE_SPECS)
  assert joint["coherence.joint.accuracy"] == 1.0


def test_figures_and_decoded_text_tables(tmp_path):
  labels = np.repeat(np.arange(C), 3)
  t = _templates()
  test = _real(labels, 2)
  generated = {f"{g}_from_{q}": (t["img"][labels] if g == "img" else t["vec"][labels] if g == "vec"
                                 else np.array([[1, 2 + c, 0] for c in (labels + (q == "img")) % C]))
               for q in TEMPLATE_SPECS for g in TEMPLATE_SPECS}
  display = {"img": "image", "vec": "vector", "txt": "text"}
  written = generation_figures.plot_pairs(tmp_path, TEMPLATE_SPECS, test, generated, labels, {0: "a"}, display)
  assert [p for p, _ in written] == ["img_from_vec.png", "img_from_txt.png", "vec_from_img.png", "vec_from_txt.png"]
  assert dict(written)["img_from_vec.png"] == "Image generated from vector"
  assert all((tmp_path / p).stat().st_size > 5000 for p, _ in written)
  texts = generation_figures.text_examples(TEMPLATE_SPECS, test, generated, labels, {0: "zero"})
  assert list(texts) == ["txt"] and texts["txt"]["sources"] == ["img", "vec"]
  words = ["zero", "one", "two", "three"]
  assert [r[0] for r in texts["txt"]["rows"]] == ["zero", "1", "2", "3"]
  for c, (_, truth, (from_img, from_vec)) in enumerate(texts["txt"]["rows"]):
    row = test["txt"][3 * c]
    assert truth == " ".join(TEMPLATE_VOCAB[i] for i in row if i)
    assert from_img == f"the {words[(c + 1) % C]}" and from_vec == f"the {words[c]}"
  from mmvae.modalities import tokens
  assert tokens.to_text(TEMPLATE_SPECS["txt"], [3, 0, 9]) == "one <9>"
  spec = modalities.Modality("s", "spectrogram", (7, 5), "float32")
  audio = np.random.default_rng(1).normal(size=(len(labels), 7, 5))
  generation_figures.plot_spectra(tmp_path / "s.png", spec, audio, audio, audio, labels, {}, "spectra")
  assert (tmp_path / "s.png").stat().st_size > 5000


def test_face_png():
  import tempfile
  face = np.random.default_rng(0).uniform(size=(8, 8, 3))
  with tempfile.TemporaryDirectory() as tmp:
    generation_figures.save_image_png(face, f"{tmp}/f.png", scale=3)
    img = np.asarray(Image.open(f"{tmp}/f.png"))
  assert img.shape == (24, 24, 3)
  np.testing.assert_array_equal(img[::3, ::3], (face * 255 + 0.5).astype(np.uint8))


def test_voice_features_apply_the_dataset_normalisation(tmp_path):
  cfg = synthetic.get_config().data
  rng = np.random.default_rng(0)
  wav = tmp_path / "v.wav"
  soundfile.write(wav, (0.1 * rng.normal(size=cfg.sample_rate * 3)).astype(np.float32), cfg.sample_rate,
                  subtype="PCM_16")
  from data_prep import audio
  raw = audio.utterance_features(str(wav), cfg, train=False, rng=np.random.default_rng(0))
  mean, std = rng.normal(size=raw.shape), rng.uniform(0.5, 2, raw.shape)
  got = from_wav.voice_features(wav, cfg, {"audio_normalisation": {"mean": mean.tolist(), "std": std.tolist()}})
  np.testing.assert_allclose(got, (raw - mean) / std, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(from_wav.voice_features(wav, cfg, {"audio_normalisation": None}), raw, rtol=1e-6)


def test_generate_face_needs_a_spectrogram_and_an_image_modality():
  specs = {"voice": modalities.Modality("voice", "spectrogram", (4,), "float32"), **TEMPLATE_SPECS}
  assert from_wav.source_and_target(specs, "run") == ("voice", "img")
  for drop in ("voice", "img"):
    with pytest.raises(ValueError) as e:
      from_wav.source_and_target({k: v for k, v in specs.items() if k != drop}, "run")
    kind = "spectrogram" if drop == "voice" else "image"
    assert f"run has no {kind} modality" in str(e.value) and "\n" not in str(e.value)
