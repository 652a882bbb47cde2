"""The model registry: a toy kind from this file trains and is analysed; every kind agrees on 1 and 4 devices."""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import mmvae
from mmvae import cli, data, models, modalities, zoo
from mmvae import config as config_lib
from mmvae.analysis import report
from mmvae.train import entry, parallel, trainer
from mmvae.train import step as step_lib
from mmvae.zoo import contrastive

A, V = "audio", "face"


class Toy(nnx.Module):
  """A linear Gaussian encoder per modality and one linear decoder per modality."""

  can_generate = True

  def __init__(self, specs: dict, latent: int, rngs: nnx.Rngs):
    self.shapes = tuple((name, m.model_shape) for name, m in specs.items())  # {name: Modality} from the dataset
    self.enc = nnx.Dict({m: nnx.Linear(math.prod(s), 2 * latent, rngs=rngs) for m, s in self.shapes})
    self.dec = nnx.Dict({m: nnx.Linear(latent, math.prod(s), rngs=rngs) for m, s in self.shapes})

  def encode(self, modality, x):
    return tuple(jnp.split(self.enc[modality](x.reshape(len(x), -1)), 2, axis=-1))

  def decode(self, z_BxZ):
    return {m: self.dec[m](z_BxZ).reshape((len(z_BxZ),) + s) for m, s in self.shapes}


class ToyKind:
  """The toy's build / loss / check_config: self and cross squared error of a sample, plus a small KL."""

  def build(self, config, specs, seed, num_classes):
    return models.init_module(lambda rngs: Toy(specs, config.model.latent_dim, rngs), seed)

  def loss(self, model, batch, example_keys_B, step_key, step, loss_cfg, axis_name=None):
    recon, kl = 0.0, 0.0
    for i, m in enumerate(("audio", "face")):
      mu_BxZ, logvar_BxZ = model.encode(m, batch[m])
      eps_BxZ = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), mu_BxZ.shape[1:]))(example_keys_B)
      out = model.decode(mu_BxZ + jnp.exp(0.5 * logvar_BxZ) * eps_BxZ)
      recon += sum(jnp.mean(jnp.sum((out[n] - batch[n]).reshape(len(mu_BxZ), -1)**2, -1)) for n in out)
      kl += jnp.mean(0.5 * jnp.sum(jnp.exp(logvar_BxZ) + mu_BxZ**2 - 1.0 - logvar_BxZ, -1))
    total = recon + 0.01 * kl
    return total, {"loss": total, "recon": recon, "kl": kl}

  def check_config(self, config):
    pass


zoo.register("toy", ToyKind())
KINDS = zoo.kinds()  # the built-in kinds and the toy


def _config(kind, extra=()):
  return config_lib.load("synthetic:tiny", [f"model.kind={kind}", *extra])


def _analysed_run(dataset_dir, workdir, kind, steps):
  cfg = _config(kind, [f"train.num_steps={steps}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
                       "train.learning_rate=0.01"])
  entry.train(cfg, dataset_dir, workdir)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows if r["split"] == "train"], report.analyze(workdir, which="last")


def test_a_toy_kind_registered_here_trains_and_is_analysed(synthetic_dataset, tmp_path):
  train_losses, metrics = _analysed_run(synthetic_dataset, tmp_path / "toy", "toy", 20)
  assert len(train_losses) == 20 and np.mean(train_losses[-4:]) < 0.7 * np.mean(train_losses[:4]), train_losses
  assert metrics["model.kind"] == "toy" and metrics["model.can_generate"] is True
  assert "retrieval.audio_to_face.mrr" in metrics and "coherence.audio_to_face.accuracy" in metrics
  assert (tmp_path / "toy" / "report" / "face_from_audio.png").is_file()
  # The faces the report scored are the toy's decoder applied to its voice means, computed here by hand.
  model, _, _ = mmvae.load_run(tmp_path / "toy", checkpoint="last")
  lat = np.load(tmp_path / "toy" / "report" / "latents.npz")
  gen = np.load(tmp_path / "toy" / "report" / "generated.npz")
  w, b = np.asarray(model.dec[V].kernel[...]), np.asarray(model.dec[V].bias[...])
  np.testing.assert_allclose(gen["face_from_audio"].reshape(len(lat["audio_mu"]), -1), lat["audio_mu"] @ w + b,
                             rtol=1e-4, atol=1e-4)


# Kinds with nothing to train under the tiny config's loss weights get their objective switched on.
KIND_OPTIONS = {"mcvs": ("loss.triplet_weight=1.0", "loss.identity_weight=0.3")}


def _cases():
  cases = [(k, KIND_OPTIONS.get(k, ())) for k in KINDS]
  # Identity CE and per-pair positives on top of the contrastive objective.
  return cases + [("contrastive", ("loss.identity_weight=0.3", "loss.infonce_positives=pair"))]


@pytest.mark.parametrize("kind,extra", _cases(), ids=lambda c: c if isinstance(c, str) else "+".join(c) or "tiny")
def test_every_kind_agrees_on_one_and_four_devices_and_learns(kind, extra, synthetic_dataset):
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4, set in conftest.py)")
  cfg = _config(kind, [*extra, "train.lr_schedule=constant", "train.warmup_steps=0", "train.learning_rate=0.01"])
  trainer.check_config(cfg)
  dataset = data.Dataset(synthetic_dataset)
  kind_obj = zoo.of(cfg)
  model = kind_obj.build(cfg, dataset.modalities(), seed=0, num_classes=len(dataset.manifest["identities"]))
  tx = step_lib.make_optimizer(cfg.train)
  graphdef, state = step_lib.init_state(model, tx)
  state = jax.tree.map(np.asarray, state)
  batches = [data.batch_at(dataset, "train", 8, seed=0, step=s) for s in range(24)]
  metrics = {}
  for n in (1, 4):
    runner = parallel.Runner(graphdef, tx, cfg, "pmap", devices=jax.devices()[:n])
    _, m = runner.step(runner.put_state(state), batches[0])
    metrics[n] = {k: float(v) for k, v in m.items()}
  assert set(metrics[1]) == set(metrics[4]) and "loss" in metrics[1]
  for k in metrics[1]:
    assert metrics[4][k] == pytest.approx(metrics[1][k], rel=1e-5, abs=1e-6), k
  assert metrics[1]["grad_norm"] > 1e-3  # the step is not a no-op
  dev_state, history = runner.put_state(state), []
  for batch in batches:
    dev_state, m = runner.step(dev_state, batch)
    history.append(float(m["loss"]))
  first, last = np.mean(history[:4]), np.mean(history[-4:])
  assert last < first - 0.2 * abs(first), history  # a Gaussian NLL may fall below zero


def _np_info_nce(u, v, temperature, labels):
  """Symmetric InfoNCE by a plain loop: -log(sum over positives / sum over all) of exp(cosine / t), per row."""
  def one_way(q, g):
    out = []
    for i in range(len(q)):
      s = [float(np.dot(q[i], g[j]) / (np.linalg.norm(q[i]) * np.linalg.norm(g[j]))) / temperature
           for j in range(len(g))]
      pos = [j for j in range(len(g)) if (labels[i] == labels[j] if labels is not None else i == j)]
      out.append(-math.log(sum(math.exp(s[j]) for j in pos) / sum(math.exp(x) for x in s)))
    return sum(out) / len(out)
  return 0.5 * (one_way(u, v) + one_way(v, u))


class _Fixed:
  """Three modalities whose posterior means are the inputs themselves, and a fixed identity head."""

  specs = dict.fromkeys(("audio", "face", "text"))  # contrastive.loss reads only the names

  def __init__(self, w_ZxC):
    self.w_ZxC = w_ZxC

  def encode(self, modality, x):
    return x, jnp.zeros_like(x)

  def identity_logits(self, mu_BxZ):
    return mu_BxZ @ self.w_ZxC


@pytest.mark.parametrize("positives", ["pair", "identity"])
def test_contrastive_loss_is_the_mean_over_pairs_of_a_plain_infonce_loop(positives):
  rng = np.random.default_rng(0)
  batch = {m: rng.normal(size=(6, 4)).astype(np.float32) for m in _Fixed.specs}
  batch["label"] = np.array([0, 1, 0, 2, 1, 2], np.int32)
  w = rng.normal(size=(4, 3)).astype(np.float32)
  cfg = ml_collections.ConfigDict({"temperature": 0.3, "infonce_positives": positives, "identity_weight": 0.5})
  total, metrics = contrastive.loss(_Fixed(w), batch, None, None, 0, cfg)
  labels = batch["label"] if positives == "identity" else None
  pairs = list(itertools.combinations(_Fixed.specs, 2))
  expected = sum(_np_info_nce(batch[m], batch[n], 0.3, labels) for m, n in pairs) / len(pairs)
  assert float(metrics["infonce"]) == pytest.approx(expected, rel=1e-5)
  ce = []
  for m in _Fixed.specs:
    logits = batch[m] @ w
    ce += [math.log(sum(math.exp(x) for x in row)) - row[y] for row, y in zip(logits.tolist(), batch["label"])]
  assert float(metrics["identity_ce"]) == pytest.approx(sum(ce) / len(ce), rel=1e-5)
  assert float(total) == float(metrics["loss"]) == pytest.approx(expected + 0.5 * sum(ce) / len(ce), rel=1e-5)


def test_an_unknown_kind_is_a_one_line_error_with_a_suggestion(synthetic_dataset, tmp_path, capsys):
  with pytest.raises(ValueError, match=r"'contrastiv' is unknown; did you mean 'contrastive'\? known model kinds: .*msvae"):
    zoo.get("contrastiv")
  with pytest.raises(ValueError, match="did you mean 'msvae'"):
    trainer.check_config(_config("msvea"))
  with pytest.raises(ValueError, match="lacks loss, check_config"):
    zoo.register("half", type("Half", (), {"build": staticmethod(lambda *a: None)})())
  with pytest.raises(ValueError, match="already registered"):
    zoo.register("toy", ToyKind())
  code = cli.main(["train", "--config", "synthetic:tiny", "--config.model.kind=msvea", "--data",
                   str(synthetic_dataset), "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "\n" not in err and "did you mean 'msvae'" in err, err


def test_a_contrastive_run_is_analysed_without_generation(synthetic_dataset, tmp_path, capsys):
  workdir = tmp_path / "clip"
  train_losses, metrics = _analysed_run(synthetic_dataset, workdir, "contrastive", 12)
  assert np.isfinite(train_losses).all()
  saved = json.loads((workdir / "report" / "metrics.json").read_text())
  assert saved == metrics and metrics["model.kind"] == "contrastive" and metrics["model.can_generate"] is False
  for key in ("retrieval.audio_to_face.mrr", "retrieval.face_to_audio.mrr_chance", "clusters.joint.ari"):
    assert key in saved, key
  assert not [k for k in saved if k.startswith("coherence.")]
  md = (workdir / "report" / "report.md").read_text()
  assert "Skipped: the model (kind `contrastive`) cannot generate" in md
  names = {p.name for p in (workdir / "report").iterdir()}
  assert {"tsne.png", "dbscan.png", "latents.npz"} <= names and not names & set(report.GENERATED_FILES)
  # The saved latents are the encoders' outputs, independently recomputed from the checkpoint.
  model, _, _ = mmvae.load_run(workdir, checkpoint="last")
  lat = np.load(workdir / "report" / "latents.npz")
  test = data.Dataset(synthetic_dataset).arrays("test")
  np.testing.assert_allclose(lat["audio_mu"], np.asarray(model.encoders[A](test[A].astype(np.float32))[0]),
                             rtol=1e-4, atol=1e-5)
  assert report.rebuild(workdir) == metrics  # the report recomputes from the saved arrays alone
  wav = next((synthetic_dataset / "raw").rglob("*.wav"))
  capsys.readouterr()  # only the command's own output below
  code = cli.main(["generate", "face", "--workdir", str(workdir), "--wav", str(wav), "--out",
                   str(tmp_path / "face.png")])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "\n" not in err and "cannot generate" in err, err
  assert not (tmp_path / "face.png").exists()
