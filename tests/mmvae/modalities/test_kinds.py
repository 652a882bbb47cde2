"""Modalities as data: manifest declarations, the tokens kind, N-modality losses, and a toy kind registered here."""

import itertools
import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_prep import storage
from mmvae import config as config_lib
from mmvae import data, layers, likelihoods, modalities
from mmvae.modalities import tokens
from mmvae.train import checkpoints, entry
from mmvae.zoo import msvae

VOCAB = ["<pad>", "<unk>", "red", "green", "blue", "big", "small"]


def test_a_manifest_reads_as_its_modalities_and_selection_is_checked():
  manifest = {"modalities": [{"name": "audio", "kind": "spectrogram", "shape": [3], "dtype": "float32"},
                             {"name": "face", "kind": "image", "shape": [2, 5, 5, 1], "dtype": "uint8"}]}
  audio, face = modalities.of_manifest(manifest)
  assert (audio.kind, face.kind, face.frames, face.model_shape, audio.model_shape) == (
      "spectrogram", "image", 2, (5, 5, 1), (3,))
  with pytest.raises(ValueError, match=r"does not have.*'audio', 'face'"):
    modalities.selected((audio, face), ("audio", "voice"))
  with pytest.raises(ValueError, match="at least 2 modalities"):
    modalities.selected((audio, face), ("face",))
  with pytest.raises(ValueError, match=r"unknown; did you mean 'tokens'"):
    modalities.from_dict({"name": "t", "kind": "token", "shape": [4], "dtype": "int32"})


def test_categorical_nll_is_a_plain_softmax_loop():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4, 5)).astype(np.float32)
  ids = rng.integers(0, 5, size=(3, 4))
  got = np.asarray(likelihoods.categorical_nll(jnp.asarray(logits), jnp.asarray(ids)))
  for b in range(3):
    want = 0.0
    for pos in range(4):
      row = [float(v) for v in logits[b, pos]]
      want -= row[ids[b, pos]] - math.log(sum(math.exp(v) for v in row))
    assert got[b] == pytest.approx(want, rel=1e-5)


def test_token_encoders_bag_of_words_ignores_order_and_padding_the_sequence_encoder_does_not():
  m = modalities.from_dict({"name": "text", "kind": "tokens", "shape": [4], "dtype": "int32", "vocab": VOCAB})
  cfg = config_lib.load("reference:tiny").model
  ids = jnp.asarray([[2, 5, 0, 0], [5, 2, 0, 0], [2, 5, 3, 0]], jnp.int32)
  bow = tokens.encoder("bow", m, cfg, jnp.float32, nnx.Rngs(0))
  mu, _ = bow(ids)
  np.testing.assert_array_equal(mu[0], mu[1])  # a bag: order does not matter
  assert not np.allclose(mu[0], mu[2])  # another word does
  seq = tokens.encoder("conv", m, cfg, jnp.float32, nnx.Rngs(0))
  mu_s, _ = seq(ids)
  assert not np.allclose(mu_s[0], mu_s[1])  # order matters to a convolution over positions
  head = tokens.head(16, m, "mlp", cfg, jnp.float32, nnx.Rngs(0))
  assert head(jnp.zeros((2, 16))).shape == (2, 4, len(VOCAB))
  np.testing.assert_array_equal(tokens.to_data(np.eye(7)[[[2, 3, 0, 0]]] * 5.0), [[2, 3, 0, 0]])


class _Stub:
  """Three modalities (vector, image, tokens) with known linear encoders and decoders."""

  specs = modalities.specs({
      "v": {"kind": "vector", "shape": [4], "dtype": "float32"},
      "i": {"kind": "image", "shape": [1, 2, 2, 1], "dtype": "uint8"},
      "t": {"kind": "tokens", "shape": [3], "dtype": "int32", "vocab": VOCAB[:5]}})
  scale = {"v": 1.0, "i": 0.5, "t": 0.25}

  def encode(self, m, x):
    flat = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
    return flat[:, :2] * self.scale[m], jnp.full((x.shape[0], 2), -40.0)  # sigma ~ 2e-9: z is the mean

  def decode(self, z):
    return {"v": jnp.tile(z, (1, 2)), "i": jax.nn.sigmoid(jnp.tile(z, (1, 2)).reshape(-1, 2, 2, 1)),
            "t": z[:, :1, None] * jnp.arange(5.0)[None, None, :] + jnp.zeros((1, 3, 1))}


def test_msvae_loss_over_three_modalities_matches_a_numpy_loop():
  rng = np.random.default_rng(1)
  batch = {"v": rng.normal(size=(5, 4)).astype(np.float32), "i": rng.uniform(size=(5, 2, 2, 1)).astype(np.float32),
           "t": rng.integers(0, 5, size=(5, 3)).astype(np.int32)}
  cfg = config_lib.load("reference:tiny").loss
  cfg.likelihood, cfg.learn_sigma, cfg.sigma = "gaussian", False, {"v": 0.5}
  cfg.cross_recon_weight, cfg.wasserstein_weight = 0.5, 2.0
  keys = jax.random.split(jax.random.key(0), 5)
  total, metrics = msvae.loss(_Stub(), batch, keys, jax.random.key(1), 10, cfg)

  mu = {m: np.asarray(batch[m], np.float64).reshape(5, -1)[:, :2] * s for m, s in _Stub.scale.items()}
  sig = {"v": 0.5, "i": 0.1}  # v from the config, i its kind's default; t is categorical

  def nll(n, z):
    out = np.asarray(_Stub().decode(jnp.asarray(z, jnp.float32))[n], np.float64)
    x = np.asarray(batch[n], np.float64)
    if n == "t":
      logp = out - np.log(np.exp(out).sum(-1, keepdims=True))
      return -np.take_along_axis(logp, x.astype(int)[..., None], -1)[..., 0].sum(-1)
    d = x[0].size
    return 0.5 * ((out - x)**2).reshape(5, -1).sum(-1) / sig[n]**2 + d * (math.log(sig[n]) + 0.5 * math.log(2 * math.pi))

  recon = {(n, m): nll(n, mu[m]).mean() for n in mu for m in mu}
  kl = {m: 0.5 * (np.exp(-40.0) * 2 + (mu[m]**2).sum(-1) - 2 + 80.0).mean() for m in mu}
  w2 = [((mu[a] - mu[b])**2).sum(-1).mean() for a, b in itertools.combinations(mu, 2)]
  expected = (sum(recon[(m, m)] for m in mu) + 0.5 * sum(recon[(n, m)] for n in mu for m in mu if n != m)
              + sum(kl.values()) + 2.0 * sum(w2) / 3)
  for (n, m), value in recon.items():
    assert float(metrics[f"recon_{n}_from_{m}"]) == pytest.approx(value, rel=1e-4)
  assert float(metrics["wasserstein"]) == pytest.approx(sum(w2) / 3, rel=1e-4)
  assert float(total) == pytest.approx(expected, rel=1e-4)
  assert set(k for k in metrics if k.startswith("sigma_")) == {"sigma_v", "sigma_i"}


class _BlobEncoder(nnx.Module):
  def __init__(self, d, latent, rngs):
    self.linear = nnx.Linear(d, 2 * latent, rngs=rngs)

  def __call__(self, x):
    return tuple(jnp.split(self.linear(x), 2, axis=-1))


class _Blob:
  """A toy modality kind registered from this file: a float vector with its own encoder and a Laplace likelihood."""

  ENCODERS = ("linear",)
  DEFAULT_SIGMA = 1.0

  model_shape = staticmethod(lambda m: m.shape)
  frames = staticmethod(lambda m: 1)
  inputs = staticmethod(lambda m, stored, frame_N=None: np.asarray(stored, np.float32))
  encoder = staticmethod(lambda choice, m, mc, dtype, rngs: _BlobEncoder(m.shape[0], mc.latent_dim, rngs))
  head = staticmethod(lambda in_dim, m, decoder, mc, dtype, rngs: layers.MLPHead(in_dim, m.shape, dtype, rngs))
  activate = staticmethod(lambda raw: raw)
  nll = staticmethod(lambda out, x, log_sigma: jnp.sum(jnp.abs(out - x), -1) * jnp.exp(-log_sigma) + log_sigma)
  to_data = staticmethod(np.asarray)
  augment = staticmethod(lambda x, flip_B, train_cfg, keys_B=None: x)


def _three_modality_examples(n, offset):
  def generate():
    rng = np.random.default_rng(offset)
    for i in range(n):
      label = (offset + i) % 3
      yield {"audio": (rng.normal(size=3) + label).astype(np.float32),
             "blob": (rng.normal(size=4) * 0.1 - label).astype(np.float32),
             "text": np.array([2 + label, 5 + label % 2, 0], np.int32),
             "label": label, "id": f"ex{offset + i:03d}", "identity": f"id{label}", "video": f"v{i}", "gender": ""}
  return generate


def test_a_toy_modality_kind_registered_here_trains_end_to_end_beside_text(tmp_path):
  if "toyblob" not in modalities.kinds():
    modalities.register("toyblob", _Blob)
  cfg = config_lib.load("reference:tiny", ["train.num_steps=40", "train.eval_every=20", "train.checkpoint_every=20",
                                           "loss.likelihood=gaussian", "model.encoders.blob=linear",
                                           "analysis.split=validation"])
  entries = [{"name": "audio", "kind": "spectrogram", "shape": [3], "dtype": "float32"},
             {"name": "blob", "kind": "toyblob", "shape": [4], "dtype": "float32"},
             {"name": "text", "kind": "tokens", "shape": [3], "dtype": "int32", "vocab": VOCAB}]
  storage.write_dataset(tmp_path / "data", "synthetic",
                        {"train": _three_modality_examples(48, 0), "validation": _three_modality_examples(9, 100)},
                        entries, {"config": "t", "data_config": cfg.data.to_dict(), "audio_normalisation": None,
                                  "identities": [{"identity": f"id{i}"} for i in range(3)], "attributes": [],
                                  "skipped": []})
  ds = data.Dataset(tmp_path / "data")
  assert [(m.name, m.kind) for m in ds.modalities().values()] == [
      ("audio", "spectrogram"), ("blob", "toyblob"), ("text", "tokens")]
  final = entry.train(cfg, tmp_path / "data", tmp_path / "run")
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if r["split"] == "train" and "recon_text_from_blob" in r]
  assert len(train_rows) == 40 and np.mean([r["loss"] for r in train_rows[-5:]]) < train_rows[0]["loss"] - 10
  val = [r for r in rows if r["split"] == "validation"]
  assert val and all(f"mrr_{q}_to_{g}" in val[-1] for q, g in itertools.permutations(("audio", "blob", "text"), 2))
  assert final["step"] == 40
  run = json.loads((tmp_path / "run" / "run.json").read_text())
  assert [m["kind"] for m in run["modalities"]] == ["spectrogram", "toyblob", "tokens"]
  model, _, _ = checkpoints.load_run(tmp_path / "run")  # rebuilt from run.json's declarations
  out = model.decode(jnp.zeros((2, cfg.model.latent_dim)))
  assert out["blob"].shape == (2, 4) and out["text"].shape == (2, 3, len(VOCAB))
  # A run may use a subset of the dataset's modalities (the first named one is the anchor).
  cfg.data.modalities = ("blob", "text")
  entry.train(cfg, tmp_path / "data", tmp_path / "run2")
  assert [m["name"] for m in json.loads((tmp_path / "run2" / "run.json").read_text())["modalities"]] == ["blob", "text"]


