"""report.md and the figures say what was done: the classifier fitted, where attributes belong, what a figure shows."""

import re

import numpy as np
import pytest
from sklearn import svm

from mmvae import data, modalities
from mmvae.analysis import coherence, generation_figures, latent_space, markdown
from mmvae.analysis import report  # noqa: F401  (registers the built-in sections that report.md is made of)

VEC = modalities.Modality("vec", "vector", (8,), "float32")
IMG = modalities.Modality("img", "image", (1, 6, 6, 3), "uint8")


def _blobs(n_classes, per_class, seed, dim=8):
  """Well separated Gaussian blobs (fixed centres) and their labels."""
  centres = np.random.default_rng(7).normal(size=(n_classes, dim)) * 4
  labels = np.repeat(np.arange(n_classes), per_class)
  noise = 0.2 * np.random.default_rng(seed).normal(size=(len(labels), dim))
  return (centres[labels] + noise).astype(np.float32), labels


def _report(tmp_path, metrics, specs, manifest=None, **kw) -> str:
  metrics = {"examples": 10, "identities": 2, **metrics}
  markdown.write_report(tmp_path / "report.md", metrics, specs, manifest or {}, near={}, id_names={}, **kw)
  return (tmp_path / "report.md").read_text()


def _section(md: str, head: str) -> str:
  return md.split(head, 1)[1].split("\n#", 1)[0]


SVM_WORDS, SOFTMAX_WORDS = "support-vector machine", "softmax"


def test_few_classes_the_report_names_the_svm_it_fitted(tmp_path):
  x, y = _blobs(3, 6, 0)
  assert isinstance(coherence.train_classifier(VEC, x, y), svm.SVC)  # what coherence fits for 3 classes
  metrics, _ = coherence.coherence_scores({"vec": x, "label": y}, {"vec": _blobs(3, 6, 1)[0], "label": y}, {},
                                          {"vec": VEC})
  assert metrics["coherence.vec.classifier"] == "rbf_svm"
  text = _section(_report(tmp_path, metrics, {"vec": VEC}), "### Coherence")
  assert SVM_WORDS in text and SOFTMAX_WORDS not in text and "logistic" not in text


def test_above_100_classes_the_report_names_the_softmax_regression(tmp_path):
  n = coherence.SVM_MAX_CLASSES + 1  # the trigger: the class count, not a flag
  x, y = _blobs(n, 2, 0)
  assert isinstance(coherence.train_classifier(VEC, x, y), coherence.SoftmaxClassifier)
  assert not isinstance(coherence.train_classifier(VEC, x, y), svm.SVC)
  metrics, _ = coherence.coherence_scores({"vec": x, "label": y}, {"vec": _blobs(n, 2, 1)[0], "label": y}, {},
                                          {"vec": VEC})
  assert metrics["coherence.vec.classes"] == n and metrics["coherence.vec.classifier"] == "softmax"
  text = _section(_report(tmp_path, metrics, {"vec": VEC}), "### Coherence")
  assert "softmax (multinomial logistic) regression" in text and "Adam" in text and SVM_WORDS not in text
  # Metrics written before the classifier was recorded: the same rule, from the class count alone.
  old = {"coherence.vec.classes": n}
  assert SOFTMAX_WORDS in markdown.classifier_text(old, ["vec"], {"vec": "vec"})
  assert SVM_WORDS in markdown.classifier_text({"coherence.vec.classes": 3}, ["vec"], {"vec": "vec"})


def test_mixed_classifiers_each_named_with_what_it_classified():
  metrics = {"coherence.face.classes": 1251, "coherence.face.classifier": "softmax",
             "coherence.face.gender_classes": 2, "coherence.face.gender_classifier": "rbf_svm",
             "coherence.audio.classes": 1251, "coherence.audio.classifier": "softmax"}
  text = markdown.classifier_text(metrics, ["audio", "face"], {"audio": "voice", "face": "face"})
  svm_part, softmax_part = (re.search(f"{w}[^;]*", text).group(0) for w in ("an RBF " + SVM_WORDS, "a softmax"))
  assert "the face gender (2 classes)" in svm_part and "label" not in svm_part
  assert "the voice label (1251 classes)" in softmax_part and "the face label (1251 classes)" in softmax_part
  assert "gender" not in softmax_part


def test_diagonal_is_a_reference_not_a_ceiling(tmp_path):
  metrics = {"coherence.vec.classes": 3, "coherence.vec.classifier": "rbf_svm"}
  for q, g in (("vec", "img"), ("img", "vec")):
    metrics.update({f"coherence.{q}_to_{g}.accuracy": 0.577, f"coherence.{q}_to_{g}.accuracy_chance": 0.1,
                    f"coherence.real_{g}.accuracy": 0.543, f"coherence.real_{g}.accuracy_chance": 0.1})
  text = _section(_report(tmp_path, metrics, {"vec": VEC, "img": IMG}), "### Coherence")
  assert "0.5770" in text and "0.5430" in text  # generated above real: the diagonal cannot be called a ceiling
  assert "its ceiling" not in text and "not a ceiling" in text and "reference" in text


def test_synthetic_attributes_belong_to_the_identity_and_the_dataset_section_lists_them(synthetic_dataset, tmp_path):
  ds = data.Dataset(synthetic_dataset)
  specs, manifest = ds.modalities(), ds.manifest
  train, test = ds.arrays("train"), ds.arrays("test")
  attrs = ["gender"] + list(manifest["attributes"])
  assert {"pitch_hz", "vtl"} <= set(attrs)  # the voice's attributes, recorded per identity
  # Real faces stand in for generated ones: only where the report puts each attribute matters here.
  generated = {"face_from_audio": np.asarray(test["face"])[:, 0], "audio_from_face": test["audio"]}
  metrics, _ = coherence.coherence_scores(train, test, generated, specs, manifest["identities"], attrs)
  scored = [a for a in attrs if f"coherence.real_face.{a}_accuracy" in metrics]
  assert {"pitch_hz", "vtl", "gender"} <= set(scored)
  md = _report(tmp_path, metrics, specs, manifest)
  lines = md.splitlines()
  table_heads = [lines[k - 2] for k, line in enumerate(lines) if line.startswith("| attribute |")]  # above a table
  assert table_heads and not any(re.search(r"attributes of (face|voice|audio)", h) for h in table_heads)
  assert all("Identity attributes" in h for h in table_heads)
  rows = {line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")}
  assert {"pitch_hz", "vtl"} <= rows
  # The Dataset section names every attribute the identity records carry, gender included; never 'none' here.
  line = next(x for x in _section(md, "## Dataset").splitlines() if "identity attributes" in x)
  listed = line.split(":", 1)[1].strip().split(", ")
  assert set(scored) <= set(listed) and "none" not in listed


def test_voxceleb_style_dataset_lists_gender_not_none(tmp_path):
  manifest = {"identities": [{"identity": "id10001", "name": "A.J._Buckley", "gender": "m", "nationality": "Ireland"},
                             {"identity": "id10002", "name": "Aaron_Tveit", "gender": "m", "nationality": "USA"}],
              "attributes": []}
  line = next(x for x in _section(_report(tmp_path, {}, {"vec": VEC}, manifest), "## Dataset").splitlines()
              if "identity attributes" in x)
  assert line.endswith(": gender, nationality")
  bare = {"identities": [{"identity": "1", "name": "one", "gender": "", "nationality": ""}], "attributes": []}
  assert _section(_report(tmp_path, {}, {"vec": VEC}, bare), "## Dataset").count("identity records): none") == 1


@pytest.mark.parametrize("n, want", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"),
                                     (13, "13th"), (21, "21st"), (22, "22nd"), (23, "23rd"), (101, "101st"),
                                     (111, "111th"), (112, "112th")])
def test_ordinals(n, want):
  assert latent_space.ordinal(n) == want


def test_dbscan_axis_says_3rd_not_3_th(tmp_path):
  x, labels = _blobs(3, 6, 0, dim=4)
  res = {"s": latent_space.dbscan(x, labels, min_samples=3)}
  fig = latent_space.plot_dbscan(tmp_path / "d.png", {"s": x[:, :2]}, res, {"s": res["s"]["k_distances"]})
  texts = [t for ax in fig.axes for t in (ax.get_ylabel(), ax.get_xlabel(), ax.get_title())]
  assert any("3rd nearest point" in t for t in texts)
  assert not any(re.search(r"\d-th", t) for t in texts)
  assert (tmp_path / "d.png").stat().st_size > 5000


def _grid_inputs(names_n, per_identity):
  """Faces [N, 1, 6, 6, 3], labels with per_identity[i] rows of identity i."""
  labels = np.repeat(np.arange(names_n), per_identity)
  faces = np.random.default_rng(0).integers(0, 255, size=(len(labels), 1, 6, 6, 3), dtype=np.uint8)
  return faces, faces[:, 0].astype(np.float32) / 255.0, labels


def test_image_grid_states_identities_shown_explains_empty_cells_and_keeps_whole_names(tmp_path):
  names = {0: "Synth_001_Adalbert_Maximilian", 1: "Mary-Kate Olsen-Smith de la Vega", 2: "Bo", 3: "x" * 40,
           4: "Synth_005_Ernesto"}
  faces, gen, labels = _grid_inputs(5, [4, 1, 4, 2, 4])
  fig = generation_figures.plot_image_grid(tmp_path / "g.png", IMG, faces, gen, gen, labels, names, "Faces",
                                           max_identities=4)
  assert (tmp_path / "g.png").stat().st_size > 5000
  title = fig.get_suptitle()
  assert "4 of 5 identities shown" in title
  row_labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
  assert [r.replace("\n", "") for r in row_labels] == [names[i] for i in range(4)]  # nothing cut
  assert all(len(line) <= generation_figures.ROW_LABEL_WIDTH for r in row_labels for line in r.split("\n"))
  notes = [t.get_text() for ax in fig.axes for t in ax.texts]
  # Identity 1 has one test example (3 empty cells), identity 3 two (2 empty): one note per such row.
  assert sorted(n.replace("\n", " ") for n in notes) == ["only 1 test example of this identity",
                                                          "only 2 test examples of this identity"]
  # Every identity shown: no note in the title.
  fig = generation_figures.plot_image_grid(tmp_path / "h.png", IMG, faces, gen, gen, labels, names, "Faces")
  assert fig.get_suptitle() == "Faces"


def test_spectra_state_identities_shown_and_name_their_axes(tmp_path):
  labels = np.repeat(np.arange(8), 2)
  x = np.random.default_rng(0).normal(size=(len(labels), 10)).astype(np.float32)
  spec = modalities.Modality("audio", "spectrogram", (10,), "float32")
  fig = generation_figures.plot_spectra(tmp_path / "s.png", spec, x, x, x, labels, {}, "Voices", target="voice")
  assert "6 of 8 identities shown" in fig.get_suptitle()
  labels_ = {t for ax in fig.axes for t in (ax.get_xlabel(), ax.get_ylabel()) if t}
  assert not labels_ & {"feature", "value"}  # never a bare word
  axis_text = " ".join(labels_)
  assert "dimension of the stored voice feature vector" in axis_text and "10 values per example" in axis_text


def test_many_identities_are_numbered_on_the_map_and_coloured_apart(tmp_path):
  n = 24
  x, labels = _blobs(n, 3, 0, dim=2)
  names = {i: f"Synth_{i + 1:03d}" for i in range(n)}
  fig = latent_space.plot_embedding(tmp_path / "t.png", {"voice": x, "joint": np.vstack([x, x + 0.1])},
                                    {"voice": labels, "joint": labels}, names, "t-SNE",
                                    joint={"joint": ["voice", "face"]})
  voice, joint = fig.axes[:2]
  assert sorted(int(t.get_text()) for t in voice.texts) == list(range(1, n + 1))
  assert sorted(int(t.get_text()) for t in joint.texts) == sorted(2 * list(range(1, n + 1)))  # per modality
  colours = {tuple(np.round(c, 4)) for c in voice.collections[0].get_facecolors()}
  assert len(colours) == n
  legend = [t.get_text() for t in joint.get_legend().get_texts()]
  assert "1: Synth_001" in legend and "24: Synth_024" in legend
  assert (tmp_path / "t.png").stat().st_size > 5000
