"""Sequence modalities and temporal encoders: padding, the sync loss and metrics against plain loops, devices, frozen targets."""

import itertools
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmvae import config as config_lib
from mmvae import data, losses, modalities, temporal, zoo
from mmvae.analysis import sync
from mmvae.modalities import sequence
from mmvae.train import checkpoints, entry, parallel, trainer
from mmvae.train import step as step_lib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import sequence_corpus  # noqa: E402

CHOICES = temporal.CHOICES


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("seq") / "toy"
  sequence_corpus.write(out)
  return out


def _config(extra=()):
  return config_lib.load("temporal:tiny", ["model.hidden=(12,)", *extra])


def test_pack_and_unpack_keep_the_steps_and_mark_the_padding():
  steps = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
  stored = sequence.pack(steps, 5)
  assert stored.shape == (5, 5)
  np.testing.assert_array_equal(stored[:3, :4], steps.reshape(3, 4))
  np.testing.assert_array_equal(stored[:, -1], [1, 1, 1, 0, 0])
  assert not stored[3:].any()
  np.testing.assert_array_equal(sequence.unpack(stored, (2, 2)), steps)
  assert sequence.lengths(np.stack([stored, sequence.pack(steps[:1], 5)])).tolist() == [3, 1]
  assert sequence.pack(np.ones((9, 2)), 4)[:, -1].tolist() == [1, 1, 1, 1]  # truncated to T
  with pytest.raises(ValueError, match="at least one step"):
    sequence.pack(np.zeros((0, 3)), 4)


@pytest.mark.parametrize("choice", CHOICES)
def test_a_padded_and_an_unpadded_batch_give_the_same_embeddings(choice):
  rng = np.random.default_rng(0)
  lengths = [9, 6, 4]
  seqs = [rng.normal(size=(n, 5)) for n in lengths]
  enc = temporal.TemporalEncoder(choice, 5, (16,), 4, jnp.float32, nnx.Rngs(params=0), temporal_layers=2, heads=2)
  # Unpadded: each clip alone in an array of exactly its length; padded: all in one batch of T = 14.
  padded = jnp.asarray(np.stack([sequence.pack(s, 14) for s in seqs]))
  mu_p, lv_p = enc(padded)
  frames_p = enc.frames(padded)
  for i, s in enumerate(seqs):
    alone = jnp.asarray(sequence.pack(s, len(s))[None])
    mu, lv = enc(alone)
    np.testing.assert_allclose(mu_p[i], mu[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lv_p[i], lv[0], rtol=1e-5, atol=1e-5)
    for w, (emb, valid) in enc.frames(alone).items():
      n = emb.shape[1]
      assert valid[0].tolist() == [1.0] * n
      np.testing.assert_array_equal(frames_p[w][1][i, :n], 1.0)
      assert not np.asarray(frames_p[w][1][i, n:]).any()  # windows reaching into padding are masked
      np.testing.assert_allclose(frames_p[w][0][i, :n], emb[0], rtol=1e-5, atol=1e-5)
  # And the steps matter: changing a real step changes the clip embedding.
  changed = np.asarray(padded).copy()
  changed[0, 2, :-1] += 1.0
  assert not np.allclose(enc(jnp.asarray(changed))[0][0], mu_p[0], atol=1e-4)


def test_frame_windows_are_means_of_consecutive_steps():
  rng = np.random.default_rng(1)
  h = rng.normal(size=(2, 7, 3))
  mask = np.array([[1] * 7, [1] * 5 + [0] * 2], np.float32)
  mean, valid = temporal.windows(jnp.asarray(h), jnp.asarray(mask), 3)
  for b in range(2):
    for t in range(5):
      np.testing.assert_allclose(mean[b, t], h[b, t:t + 3].mean(0), rtol=1e-6)
      assert valid[b, t] == float(all(mask[b, t:t + 3]))


def _sync_nce_loop(u, v, valid, temperature):
  per_clip = []
  for b in range(u.shape[0]):
    steps = [t for t in range(u.shape[1]) if valid[b, t]]
    if not steps:
      continue
    cos = lambda a, c: float(np.dot(a, c) / (np.linalg.norm(a) * np.linalg.norm(c))) / temperature  # noqa: E731
    ce = []
    for t in steps:
      fwd = -cos(u[b, t], v[b, t]) + math.log(sum(math.exp(cos(u[b, t], v[b, s])) for s in steps))
      bwd = -cos(v[b, t], u[b, t]) + math.log(sum(math.exp(cos(v[b, t], u[b, s])) for s in steps))
      ce.append(0.5 * (fwd + bwd))
    per_clip.append(sum(ce) / len(ce))
  return sum(per_clip) / len(per_clip)


def test_sync_loss_is_a_plain_within_clip_infonce_loop():
  rng = np.random.default_rng(2)
  u, v = rng.normal(size=(3, 6, 4)), rng.normal(size=(3, 6, 4))
  valid = np.array([[1] * 6, [1] * 4 + [0] * 2, [0] * 6], np.float32)  # the last clip has no real window
  got = float(losses.sync_nce(jnp.asarray(u), jnp.asarray(v), jnp.asarray(valid), 0.3))
  assert got == pytest.approx(_sync_nce_loop(u, v, valid, 0.3), rel=1e-5)


def _expected_by_enumeration(scores, right, near):
  """(top1, within1, 1/rank) averaged over every order of the tied scores (plain enumeration)."""
  top1 = within = rr = 0.0
  orders = list(itertools.permutations(range(len(scores))))
  valid_orders = [o for o in orders if all(scores[o[i]] >= scores[o[i + 1]] for i in range(len(o) - 1))]
  for o in valid_orders:
    top1 += o[0] == right
    within += near[o[0]]
    rr += 1.0 / (o.index(right) + 1)
  n = len(valid_orders)
  return top1 / n, within / n, rr / n


def test_sync_metrics_match_a_plain_loop_with_ties_enumerated():
  rng = np.random.default_rng(3)
  k = 2  # 5 candidates, few enough to enumerate every order
  n, t = 3, 9
  # Coarse embeddings give tied scores.
  q = rng.integers(-1, 2, size=(n, t, 2)).astype(float)
  g = rng.integers(-1, 2, size=(n, t, 2)).astype(float)
  q[q.sum(-1) == 0] = 1.0  # no zero vectors (their cosine is undefined)
  g[np.abs(g).sum(-1) == 0] = 1.0
  qv = np.ones((n, t))
  gv = np.ones((n, t))
  gv[2, 7:] = 0  # the last clip's tail is padding: queries whose offsets reach it do not count
  got = sync.sync_metrics(q, qv, g, gv, k)
  offsets = np.arange(-k, k + 1)
  near = np.abs(offsets) <= 1
  want = []
  for i in range(n):
    for pos in range(t):
      cand = pos + offsets
      if cand.min() < 0 or cand.max() >= t or not gv[i, cand].all():
        continue
      unit = lambda x: x / np.linalg.norm(x)  # noqa: E731
      scores = [round(float(unit(g[i, c]) @ unit(q[i, pos])), 12) for c in cand]
      want.append(_expected_by_enumeration(scores, k, near))
  want = np.array(want)
  assert got["queries"] == len(want) and got["candidates"] == 5
  assert got["top1"] == pytest.approx(want[:, 0].mean(), abs=1e-9)
  assert got["within1"] == pytest.approx(want[:, 1].mean(), abs=1e-9)
  assert got["mrr"] == pytest.approx(want[:, 2].mean(), abs=1e-9)
  assert got["top1_chance"] == pytest.approx(1 / 5) and got["within1_chance"] == pytest.approx(3 / 5)
  assert got["mrr_chance"] == pytest.approx(sum(1 / r for r in range(1, 6)) / 5)
  # Constant embeddings: every metric is exactly its chance level.
  flat = sync.sync_metrics(np.ones((n, t, 2)), qv, np.ones((n, t, 2)), gv, k)
  for key in ("top1", "within1", "mrr"):
    assert flat[key] == pytest.approx(flat[f"{key}_chance"], abs=1e-12)


def test_frame_retrieval_matches_a_plain_loop():
  rng = np.random.default_rng(4)
  q, g = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 4))
  qv = np.ones((3, 5))
  gv = np.ones((3, 5))
  gv[1, 3:] = 0
  got = sync.frame_retrieval(q, qv, g, gv)
  unit = lambda x: x / np.linalg.norm(x)  # noqa: E731
  gallery = [(i, t) for i in range(3) for t in range(5) if gv[i, t]]
  rr, hit1 = [], []
  for i in range(3):
    for t in range(5):
      if not (qv[i, t] and gv[i, t]):
        continue
      scores = {c: float(unit(q[i, t]) @ unit(g[c])) for c in gallery}
      rank = 1 + sum(s > scores[(i, t)] for s in scores.values())
      rr.append(1 / rank)
      hit1.append(rank == 1)
  assert got["mrr"] == pytest.approx(np.mean(rr), rel=1e-9)
  assert got["recall@1"] == pytest.approx(np.mean(hit1), rel=1e-9)
  assert got["mrr_chance"] == pytest.approx(sum(1 / r for r in range(1, len(gallery) + 1)) / len(gallery))


# Every encoder with the contrastive kind; the msvae decoder side is the same for every encoder, so two cover it.
@pytest.mark.parametrize("kind,choice",
                         [("contrastive", c) for c in CHOICES] + [("msvae", "gru"), ("msvae", "transformer")])
def test_every_sequence_encoder_steps_alike_on_one_and_four_devices(kind, choice, toy):
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4, set in conftest.py)")
  cfg = _config([f"model.kind={kind}", f"model.encoders.audio_frames={choice}",
                 f"model.encoders.face_frames={choice}", "model.temporal_heads=2"])
  trainer.check_config(cfg)
  dataset = data.Dataset(toy)
  specs = dataset.modalities(cfg.data.modalities)
  model = zoo.of(cfg).build(cfg, specs, seed=0, num_classes=4)
  tx = step_lib.make_optimizer(cfg.train, model)
  graphdef, state = step_lib.init_state(model, tx)
  state = jax.tree.map(np.asarray, state)
  batch = data.batch_at(dataset, "train", 8, seed=0, step=0, modality_names=cfg.data.modalities)
  metrics = {}
  for n in (1, 4):
    runner = parallel.Runner(graphdef, tx, cfg, "pmap", devices=jax.devices()[:n])
    _, m = runner.step(runner.put_state(state), batch)
    metrics[n] = {k: float(v) for k, v in m.items()}
  assert "sync" in metrics[1] and metrics[1]["sync"] > 0
  for k in metrics[1]:
    assert metrics[4][k] == pytest.approx(metrics[1][k], rel=1e-4, abs=1e-5), k
  assert metrics[1]["grad_norm"] > 1e-4


def test_a_frozen_target_defines_the_space_and_never_changes(toy, tmp_path):
  cfg = _config(["model.frozen_target=face_frames", "model.latent_dim=10", "train.num_steps=8",
                 "train.learning_rate=0.01"])
  workdir = tmp_path / "run"
  entry.train(cfg, toy, workdir)
  model, _ = checkpoints.load_run(workdir)[:2]
  names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert not any("face_frames" in n for n in names) and any("audio_frames" in n for n in names)
  arrays = data.Dataset(toy).arrays("test")
  x = arrays["face_frames"]
  mu, logvar = model.encode("face_frames", jnp.asarray(x))
  # The target's embedding is the mean of its real steps, computed here with plain NumPy.
  want = np.stack([sequence.unpack(s).mean(0) for s in x])
  np.testing.assert_allclose(mu, want, rtol=1e-5, atol=1e-6)
  assert not np.asarray(logvar).any()
  # The adapter did train: its embedding moved from the untrained model's.
  fresh = zoo.of(cfg).build(cfg, data.Dataset(toy).modalities(cfg.data.modalities), seed=0, num_classes=4)
  a = jnp.asarray(arrays["audio_frames"])
  assert not np.allclose(model.encode("audio_frames", a)[0], fresh.encode("audio_frames", a)[0], atol=1e-4)


def test_frozen_target_errors_name_the_key_to_change(toy):
  dataset = data.Dataset(toy)
  specs = dataset.modalities(("audio_frames", "face_frames"))
  with pytest.raises(ValueError, match="latent_dim=10"):
    cfg = _config(["model.frozen_target=face_frames"])
    zoo.of(cfg).build(cfg, specs, seed=0)
  with pytest.raises(ValueError, match="not a modality of this run"):
    cfg = _config(["model.frozen_target=pixels"])
    zoo.of(cfg).build(cfg, specs, seed=0)
  image = modalities.from_dict({"name": "face", "kind": "image", "shape": [1, 4, 4, 1], "dtype": "uint8"})
  with pytest.raises(ValueError, match="a frozen target must be"):
    modalities.encoder_choice(_config(["model.frozen_target=face"]).model, image)


def test_the_tiny_temporal_run_reports_sync_and_frame_retrieval(toy, tmp_path):
  from mmvae.analysis import report
  workdir = tmp_path / "run"
  entry.train(_config(), toy, workdir)
  metrics = report.analyze(workdir)
  for key in ("sync.top1", "sync.top1_chance", "sync.within1", "sync.within1_chance", "sync.mrr", "sync.mrr_chance"):
    assert 0.0 <= metrics[key] <= 1.0, key
  assert metrics["sync.top1_chance"] == pytest.approx(1 / 13)
  assert "retrieval.audio_frames_to_face_frames.mrr" in metrics
  assert "frame_retrieval.audio_frames_to_face_frames.w2.mrr" in metrics
  saved = json.loads((workdir / "report" / "metrics.json").read_text())
  assert saved["sync.mrr"] == metrics["sync.mrr"]
  assert "## Synchronisation" in (workdir / "report" / "report.md").read_text()
  # rebuild recomputes the same numbers from frames.npz without the model.
  again = report.rebuild(workdir)
  assert again["sync.top1"] == metrics["sync.top1"]
