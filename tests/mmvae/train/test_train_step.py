"""Data parallelism: a pmap step on 4 devices equals one device on the same global batch; sharded == pmap."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from mmvae import config as config_lib
from mmvae import losses, modalities
from mmvae.train import parallel
from mmvae.train import step as step_lib
from mmvae.zoo import msvae


def _voice_face(audio: tuple, face: tuple) -> dict:
  """{audio: a spectrogram, face: one image frame} of the given model shapes, as a dataset declares them."""
  return {"audio": modalities.Modality("audio", "spectrogram", audio, "float32"),
          "face": modalities.Modality("face", "image", (1, *face), "uint8")}


SHAPES = _voice_face((512,), (23, 23, 1))


@pytest.fixture(scope="module")
def setup():
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4, set in conftest.py)")
  # Sliced W2 is the hardest case: a batch-level term gathered across devices.
  cfg = config_lib.load("reference:tiny", ["loss.wasserstein=sliced", "train.lr_schedule=constant",
                                           "train.warmup_steps=0"])
  model = msvae.build(cfg, SHAPES, seed=0)
  tx = step_lib.make_optimizer(cfg.train)
  graphdef, state = step_lib.init_state(model, tx)
  rng = np.random.default_rng(0)
  batch = {"audio": rng.normal(size=(8, 512)).astype(np.float32),
           "face": rng.uniform(size=(8, 23, 23, 1)).astype(np.float32)}
  return cfg, tx, graphdef, jax.tree.map(np.asarray, state), batch


def test_pmap_gradients_equal_single_device(setup):
  cfg, _, graphdef, state, batch = setup
  step = np.int32(3)
  positions = np.arange(8, dtype=np.int32)
  single = jax.jit(functools.partial(step_lib.grads_and_metrics, graphdef, cfg))
  g1, m1 = single(state["params"], batch, positions, step)
  pm = jax.pmap(functools.partial(step_lib.grads_and_metrics, graphdef, cfg, axis_name="d"), axis_name="d",
                in_axes=(None, 0, 0, None), devices=jax.devices()[:4])
  shard = lambda x: x.reshape((4, 2) + x.shape[1:])
  g4, m4 = pm(state["params"], {k: shard(v) for k, v in batch.items()}, shard(positions), step)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
    np.testing.assert_allclose(np.asarray(b)[0], np.asarray(b)[3], atol=1e-6)
    np.testing.assert_allclose(np.asarray(b)[0], np.asarray(a), atol=1e-5, rtol=1e-5)
  for k in m1:
    assert float(m4[k][0]) == pytest.approx(float(m1[k]), rel=1e-5), k
  # The noise is per example, not per device: swapping two examples' positions changes the result.
  g_swapped, _ = single(state["params"], batch, positions[::-1].copy(), step)
  assert not np.allclose(np.asarray(jax.tree.leaves(g_swapped)[0]), np.asarray(jax.tree.leaves(g1)[0]))


def test_pmap_and_sharded_runners_agree_over_steps(setup):
  cfg, tx, graphdef, state, batch = setup
  results = {}
  for mode in parallel.MODES:
    runner = parallel.Runner(graphdef, tx, cfg, mode, devices=jax.devices()[:4])
    dev_state = runner.put_state(state)
    losses = []
    for _ in range(3):
      dev_state, metrics = runner.step(dev_state, batch)
      losses.append(float(metrics["loss"]))
    results[mode] = (losses, runner.host_state(dev_state))
  np.testing.assert_allclose(results["pmap"][0], results["sharded"][0], rtol=1e-5)
  assert results["pmap"][0][2] != results["pmap"][0][0]  # the parameters did move
  assert int(results["pmap"][1]["step"]) == int(results["sharded"][1]["step"]) == 3
  for a, b in zip(jax.tree.leaves(results["pmap"][1]["params"]), jax.tree.leaves(results["sharded"][1]["params"])):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("mode", parallel.MODES)
def test_several_steps_per_dispatch_equal_single_steps(setup, mode):
  """runner.steps (a lax.scan over K batches) against K runner.step calls on the same batches."""
  cfg, tx, graphdef, state, batch = setup
  rng = np.random.default_rng(1)
  batches = [{k: (v + 0.1 * rng.normal(size=v.shape)).astype(np.float32) for k, v in batch.items()} for _ in range(3)]
  runner = parallel.Runner(graphdef, tx, cfg, mode, devices=jax.devices()[:4])
  single, single_losses = runner.put_state(state), []
  for b in batches:
    single, metrics = runner.step(single, b)
    single_losses.append(float(metrics["loss"]))
  blocked, block_metrics = runner.steps(runner.put_state(state), batches)
  assert {k: np.shape(v) for k, v in block_metrics.items()} == {k: (3,) for k in block_metrics}
  np.testing.assert_allclose(np.asarray(block_metrics["loss"]), single_losses, rtol=1e-6)
  assert single_losses[0] != single_losses[2]  # each step saw its own batch and moved the parameters
  single, blocked = runner.host_state(single), runner.host_state(blocked)
  assert int(blocked["step"]) == int(single["step"]) == 3
  for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(blocked)):  # bitwise on CPU today; XLA may fuse otherwise
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_batch_size_not_divisible_by_devices_is_a_clear_error(setup):
  cfg, tx, graphdef, _, _ = setup
  bad = config_lib.load("reference:tiny", ["train.batch_size=6"])
  with pytest.raises(ValueError, match="batch_size=6 must be a positive multiple"):
    parallel.Runner(graphdef, tx, bad, "pmap", devices=jax.devices()[:4])
  with pytest.raises(ValueError, match="parallel"):
    parallel.Runner(graphdef, tx, cfg, "ddp", devices=jax.devices()[:4])


# Labels with repeats that straddle the 4 shards of 2: most positives of an example live on another device.
LABELS = np.array([0, 1, 2, 0, 1, 3, 3, 2], np.int32)
_ONLY = ["loss.self_recon_weight=0.0", "loss.cross_recon_weight=0.0", "loss.kl_weight=0.0",
         "loss.wasserstein_weight=0.0"]
_TERMS = {
    # One batch-level term alone, so its gradient is not hidden by the others.
    "infonce": _ONLY + ["loss.infonce_weight=1.0", "loss.infonce_positives=identity"],
    "triplet": _ONLY + ["loss.triplet_weight=1.0", "loss.triplet_margins=(0.5, 0.5, 0.8)"],
    # Everything at once: Gaussian likelihood with learned scales, sliced W2, InfoNCE, triplet, identity CE.
    "all": ["loss.likelihood=gaussian", "loss.learn_sigma=True", "loss.wasserstein=sliced", "loss.infonce_weight=0.5",
            "loss.infonce_positives=pair", "loss.triplet_weight=0.7", "loss.identity_weight=0.3"],
}


@pytest.mark.parametrize("term", list(_TERMS))
def test_pmap_batch_level_terms_equal_single_device(term):
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4, set in conftest.py)")
  cfg = config_lib.load("reference:tiny", _TERMS[term])
  shapes = _voice_face((16,), (5, 5, 1))
  model = msvae.build(cfg, shapes, seed=1, num_classes=4)
  rng = np.random.default_rng(1)
  batch = {"audio": rng.normal(size=(8, 16)).astype(np.float32),
           "face": rng.uniform(size=(8, 5, 5, 1)).astype(np.float32), "label": LABELS}
  graphdef, params = nnx.split(model, nnx.Param)
  params = jax.tree.map(np.asarray, params)
  positions, step = np.arange(8, dtype=np.int32), np.int32(2)
  g1, m1 = jax.jit(functools.partial(step_lib.grads_and_metrics, graphdef, cfg))(params, batch, positions, step)
  pm = jax.pmap(functools.partial(step_lib.grads_and_metrics, graphdef, cfg, axis_name="d"), axis_name="d",
                in_axes=(None, 0, 0, None), devices=jax.devices()[:4])
  shard = lambda x: x.reshape((4, 2) + x.shape[1:])
  g4, m4 = pm(params, {k: shard(v) for k, v in batch.items()}, shard(positions), step)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
    np.testing.assert_allclose(np.asarray(b)[0], np.asarray(b)[3], atol=1e-6)
    np.testing.assert_allclose(np.asarray(b)[0], np.asarray(a), atol=1e-5, rtol=1e-4)
  for k in m1:
    assert float(m4[k][0]) == pytest.approx(float(m1[k]), rel=1e-5, abs=1e-6), k
  assert float(m1["grad_norm"]) > 1e-3  # the compared gradients are not all zero
  # The comparison can fail: the same term on each device's 2 rows alone differs from the global one.
  mu = {m: np.asarray(model.encode(m, batch[m])[0]) for m in ("audio", "face")}
  if term == "infonce":
    local = np.mean([float(losses.info_nce(shard(mu["audio"])[d], shard(mu["face"])[d], cfg.loss.temperature,
                                           shard(LABELS)[d])) for d in range(4)])
    assert abs(local - float(m1["infonce"])) > 1e-2
  if term == "triplet":
    local = np.mean([float(losses.triplet(shard(mu["audio"])[d], shard(mu["audio"])[d], shard(LABELS)[d], 0.5, True))
                     for d in range(4)])
    assert abs(local - float(losses.triplet(mu["audio"], mu["audio"], LABELS, 0.5, True))) > 1e-2


def test_runner_with_labels_matches_one_device_over_steps():
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4, set in conftest.py)")
  cfg = config_lib.load("reference:tiny", _TERMS["all"] + ["train.lr_schedule=constant", "train.warmup_steps=0"])
  shapes = _voice_face((16,), (5, 5, 1))
  tx = step_lib.make_optimizer(cfg.train)
  graphdef, state = step_lib.init_state(msvae.build(cfg, shapes, seed=2, num_classes=4), tx)
  state = jax.tree.map(np.asarray, state)
  rng = np.random.default_rng(2)
  batch = {"audio": rng.normal(size=(8, 16)).astype(np.float32),
           "face": rng.uniform(size=(8, 5, 5, 1)).astype(np.float32), "label": LABELS}
  results = {}
  for n in (1, 4):
    runner = parallel.Runner(graphdef, tx, cfg, "pmap", devices=jax.devices()[:n])
    dev_state = runner.put_state(state)
    history = []
    for _ in range(2):
      dev_state, metrics = runner.step(dev_state, batch)
      history.append({k: float(metrics[k]) for k in ("loss", "infonce", "triplet", "identity_ce")})
    results[n] = (history, runner.host_state(dev_state))
  for h1, h4 in zip(results[1][0], results[4][0]):
    for k in h1:
      assert h4[k] == pytest.approx(h1[k], rel=1e-5), k
  assert results[1][0][1]["loss"] != results[1][0][0]["loss"]
  for a, b in zip(jax.tree.leaves(results[1][1]["params"]), jax.tree.leaves(results[4][1]["params"])):
    np.testing.assert_allclose(a, b, atol=1e-5)


_FACE_AUGMENT = ["train.face_flip=True", "train.face_color_jitter=0.4", "train.face_crop_scale=0.6",
                 "train.face_blur=1.5"]


def test_runner_with_face_augmentations_matches_one_device_over_steps():
  """Every face augmentation on (RGB faces): 1 and 4 devices train the same parameters; and the augmentation acts."""
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4, set in conftest.py)")
  shapes = _voice_face((16,), (8, 8, 3))
  rng = np.random.default_rng(3)
  batch = {"audio": rng.normal(size=(8, 16)).astype(np.float32),
           "face": rng.uniform(size=(8, 8, 8, 3)).astype(np.float32)}
  results = {}
  for name, n, extra in (("aug1", 1, _FACE_AUGMENT), ("aug4", 4, _FACE_AUGMENT), ("plain1", 1, [])):
    cfg = config_lib.load("reference:tiny", extra + ["train.lr_schedule=constant", "train.warmup_steps=0"])
    tx = step_lib.make_optimizer(cfg.train)
    graphdef, state = step_lib.init_state(msvae.build(cfg, shapes, seed=3), tx)
    runner = parallel.Runner(graphdef, tx, cfg, "pmap", devices=jax.devices()[:n])
    dev_state = runner.put_state(jax.tree.map(np.asarray, state))
    for _ in range(2):
      dev_state, _ = runner.step(dev_state, batch)
    results[name] = jax.tree.leaves(runner.host_state(dev_state)["params"])
  for a, b in zip(results["aug1"], results["aug4"]):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert any(not np.allclose(a, b, atol=1e-4) for a, b in zip(results["aug1"], results["plain1"]))


def test_face_flip_mirrors_about_half_by_example_key():
  import ml_collections
  rng = np.random.default_rng(0)
  face = rng.uniform(size=(64, 4, 5, 3)).astype(np.float32)
  batch = {"face": face, "audio": np.zeros((64, 2), np.float32)}
  cfg = ml_collections.ConfigDict({"face_flip": True})
  pos = np.arange(64, dtype=np.int32)
  specs = _voice_face((2,), (4, 5, 3))
  out = np.asarray(step_lib.augment(batch, 0, 3, pos, cfg, specs)["face"])
  mirrored = np.array([np.array_equal(o, f[:, ::-1]) for o, f in zip(out, face)])
  kept = np.array([np.array_equal(o, f) for o, f in zip(out, face)])
  assert np.all(mirrored ^ kept) and 20 <= mirrored.sum() <= 44  # Binomial(64, 1/2): 4 sd either side
  # The draw belongs to the example's global position, not to where it sits in a device's shard.
  half = np.asarray(step_lib.augment({"face": face[32:]}, 0, 3, pos[32:], cfg, specs)["face"])
  np.testing.assert_array_equal(half, out[32:])
  assert not np.array_equal(np.asarray(step_lib.augment(batch, 0, 4, pos, cfg, specs)["face"]), out)
  off = ml_collections.ConfigDict({"face_flip": False})
  assert step_lib.augment(batch, 0, 3, pos, off, specs) is batch
