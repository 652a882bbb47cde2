"""benchmarks/vs_pytorch.py's PyTorch step computes mmvae's msvae_public step: the same loss, gradients and Adam update."""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch comparison needs torch: pip install -e '.[bench]'")

from flax import nnx  # noqa: E402

from mmvae.train import step as step_lib  # noqa: E402

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "vs_pytorch.py"
B = 6


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("vs_pytorch", _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def setup(bench):
  """(config, model, numpy batch, torch batch, torch eps): mmvae's noise of step 0 for examples 0..B-1."""
  cfg, model = bench.build(B)
  rng = np.random.default_rng(1)
  batch = {m: rng.standard_normal((B,) + s, dtype=np.float32) for m, s in bench.SHAPES.items()}
  names = list(model.specs)
  keys_B = step_lib.example_keys(cfg.train.seed, 0, jnp.arange(B, dtype=jnp.int32))
  eps_keys = jax.vmap(lambda k: jax.random.split(k, len(names)))(keys_B)
  normal = jax.vmap(lambda k: jax.random.normal(k, (cfg.model.latent_dim,)))
  eps = {m: torch.from_numpy(np.array(normal(eps_keys[:, i]))) for i, m in enumerate(names)}
  return cfg, model, batch, {m: torch.from_numpy(x) for m, x in batch.items()}, eps


def _mmvae_loss(cfg, graphdef, params, batch):
  """mmvae's (loss, metrics) at step 0 for examples 0..B-1."""
  return step_lib.loss_and_metrics(graphdef, params, {m: jnp.asarray(x) for m, x in batch.items()},
                                   jnp.arange(B, dtype=jnp.int32), jnp.int32(0), cfg)


def test_loss_and_terms_match(bench, setup):
  cfg, model, batch, tbatch, eps = setup
  total, metrics = _mmvae_loss(cfg, *nnx.split(model, nnx.Param), batch)
  with torch.no_grad():
    ttotal, tterms = bench.torch_loss(bench.torch_model_from_mmvae(model), tbatch, eps)
  assert set(tterms) == {k for k in metrics if k.startswith(("recon_", "kl_", "wasserstein")) and k != "kl_scale"}
  np.testing.assert_allclose(float(ttotal), float(total), rtol=1e-4)
  for name, value in tterms.items():
    np.testing.assert_allclose(float(value), float(metrics[name]), rtol=1e-4, err_msg=name)


def test_gradients_match(bench, setup):
  cfg, model, batch, tbatch, eps = setup
  graphdef, params = nnx.split(model, nnx.Param)
  grads = jax.grad(lambda p: _mmvae_loss(cfg, graphdef, p, batch)[0])(params)
  tmodel = bench.torch_model_from_mmvae(model)
  bench.torch_loss(tmodel, tbatch, eps)[0].backward()
  gmodel = nnx.merge(graphdef, grads)
  for name, glayer, tlayer in bench.linear_pairs(gmodel, tmodel):
    for g, t in ((glayer.kernel[...].T, tlayer.weight.grad), (glayer.bias[...], tlayer.bias.grad)):
      g, t = np.asarray(g), t.numpy()
      np.testing.assert_allclose(t, g, rtol=1e-3, atol=1e-4 * np.abs(g).max(), err_msg=name)


def test_one_adam_step_matches(bench, setup):
  cfg, model, batch, tbatch, eps = setup
  tx = step_lib.make_optimizer(cfg.train)
  graphdef, state = step_lib.init_state(model, tx)
  step = jax.jit(functools.partial(step_lib.train_step, graphdef, tx, cfg))
  new_state, _ = step(state, {m: jnp.asarray(x) for m, x in batch.items()}, jnp.arange(B, dtype=jnp.int32))
  tmodel = bench.torch_model_from_mmvae(model)
  bench.torch_step(tmodel, bench.torch_optimizer(tmodel, cfg), tbatch, eps)
  new_model, old_model = nnx.merge(graphdef, new_state["params"]), nnx.merge(graphdef, state["params"])
  lr = cfg.train.learning_rate
  for (name, layer, tlayer), (_, old, _) in zip(bench.linear_pairs(new_model, tmodel),
                                                bench.linear_pairs(old_model, tmodel)):
    for j, t, j0 in ((layer.kernel[...].T, tlayer.weight, old.kernel[...].T),
                     (layer.bias[...], tlayer.bias, old.bias[...])):
      j, j0, g, t = np.asarray(j), np.asarray(j0), t.grad.numpy(), t.detach().numpy()
      # Adam's first update is lr * g / (|g| + 1e-8): where |g| is near 1e-8 it hangs on the gradient's
      # last bits, so those few entries may differ by up to 2 lr; everywhere else the updates agree.
      well = np.abs(g) > 1e-6
      np.testing.assert_allclose(t[well], j[well], rtol=0, atol=1e-6, err_msg=name)
      np.testing.assert_allclose(t, j, rtol=0, atol=2.001 * lr, err_msg=name)
      # The step moved the parameters (by up to the learning rate), so this compares two updates.
      assert np.abs(j - j0).max() > 0.5 * lr, name
