"""The importance-weighted test likelihood against the closed-form marginal of a linear-Gaussian model."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from mmvae import modalities
from mmvae.analysis import marginal_likelihood

Z, S_A, S_B = 3, 0.5, 0.8  # latent size and the two modalities' noise scales


def _loadings(seed, rows, scales):
  """W = Q diag(scales) with orthonormal columns Q, so W^T W is diagonal (and so is the exact posterior)."""
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(rows, Z)))
  return q * np.asarray(scales)


class LinearGaussian(nnx.Module):
  """p(z) = N(0, I); x_a = W_a z + b_a + S_A eps, x_b = W_b z + b_b + S_B eps; joint_posterior is exact."""

  can_generate = True

  def __init__(self, posterior_shift=0.0):
    self.w_a, self.w_b = nnx.Variable(jnp.asarray(_loadings(0, 4, [1.5, 0.7, 2.0]))), \
        nnx.Variable(jnp.asarray(_loadings(1, 5, [0.4, 1.1, 0.9])))
    self.b_a, self.b_b = nnx.Variable(jnp.linspace(-1, 1, 4)), nnx.Variable(jnp.linspace(0.5, -0.5, 5))
    self.shift = posterior_shift  # a wrong posterior mean: then the estimate is only a bound

  def decode(self, z):
    return {"a": z @ self.w_a[...].T + self.b_a[...], "b": z @ self.w_b[...].T + self.b_b[...]}

  def joint_posterior(self, x):
    w_a, w_b = self.w_a[...], self.w_b[...]
    precision = 1.0 + jnp.sum(w_a**2, 0) / S_A**2 + jnp.sum(w_b**2, 0) / S_B**2  # diagonal of I + W^T W / s^2
    mu = ((x["a"] - self.b_a[...]) @ w_a / S_A**2 + (x["b"] - self.b_b[...]) @ w_b / S_B**2) / precision
    return mu + self.shift, jnp.broadcast_to(-jnp.log(precision), mu.shape)


SPECS = {"a": modalities.Modality("a", "vector", (4,), "float32"),
         "b": modalities.Modality("b", "vector", (5,), "float32")}
LOG_SIGMA = {"a": math.log(S_A), "b": math.log(S_B)}


def _data(n=7, seed=2):
  model = LinearGaussian()
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, Z))
  out = model.decode(jnp.asarray(z))
  x = {"a": np.asarray(out["a"]) + S_A * rng.normal(size=(n, 4)),
       "b": np.asarray(out["b"]) + S_B * rng.normal(size=(n, 5))}
  return model, {k: v.astype(np.float32) for k, v in x.items()}


def _exact_log_marginal(model, x):
  """log N([x_a; x_b]; [b_a; b_b], W W^T + diag(s^2)) per example."""
  w = np.vstack([np.asarray(model.w_a[...]), np.asarray(model.w_b[...])])
  mean = np.r_[np.asarray(model.b_a[...]), np.asarray(model.b_b[...])]
  cov = w @ w.T + np.diag([S_A**2] * 4 + [S_B**2] * 5)
  return stats.multivariate_normal(mean, cov).logpdf(np.hstack([x["a"], x["b"]]).astype(np.float64))


@pytest.mark.parametrize("k", [1, 5])
def test_exact_posterior_gives_the_exact_marginal_for_any_k(k):
  model, x = _data()
  got = marginal_likelihood.estimate(model, x, SPECS, LOG_SIGMA, samples=k, seed=0, batch_size=3)
  np.testing.assert_allclose(got["iwae"], _exact_log_marginal(model, x), rtol=0, atol=2e-3)
  assert int(got["samples"]) == k
  metrics = marginal_likelihood.summary(got)
  assert metrics[f"likelihood.iwae_k{k}"] == pytest.approx(_exact_log_marginal(model, x).mean(), abs=2e-3)


def test_expected_log_likelihood_of_each_modality_matches_its_closed_form():
  model, x = _data(n=200, seed=5)
  metrics = marginal_likelihood.summary(marginal_likelihood.estimate(model, x, SPECS, LOG_SIGMA, samples=8, seed=1))
  mu, logvar = (np.asarray(v, np.float64) for v in model.joint_posterior({n: jnp.asarray(v) for n, v in x.items()}))
  for name, s, w, b in (("a", S_A, model.w_a, model.b_a), ("b", S_B, model.w_b, model.b_b)):
    w, b = np.asarray(w[...], np.float64), np.asarray(b[...], np.float64)
    # E_q[log N(x; W z + b, s^2 I)] = log N(x; W mu + b, s^2 I) - tr(W diag(var) W^T) / (2 s^2)
    want = stats.norm(0, s).logpdf(x[name] - (mu @ w.T + b)).sum(1) - (np.exp(logvar) @ (w**2).sum(0)) / (2 * s**2)
    assert metrics[f"likelihood.expected_log_lik.{name}"] == pytest.approx(want.mean(), abs=0.1)


def test_a_wrong_posterior_gives_a_lower_bound_that_tightens_with_k():
  _, x = _data(n=20)
  model = LinearGaussian(posterior_shift=0.6)
  exact = _exact_log_marginal(model, x).mean()
  one = marginal_likelihood.summary(marginal_likelihood.estimate(model, x, SPECS, LOG_SIGMA, samples=1, seed=0))["likelihood.iwae_k1"]
  many = marginal_likelihood.summary(marginal_likelihood.estimate(model, x, SPECS, LOG_SIGMA, samples=64, seed=0))["likelihood.iwae_k64"]
  assert one < many < exact + 1e-3
  # Noise is drawn per example: the batch size changes nothing.
  a = marginal_likelihood.estimate(model, x, SPECS, LOG_SIGMA, samples=4, seed=3, batch_size=7)
  b = marginal_likelihood.estimate(model, x, SPECS, LOG_SIGMA, samples=4, seed=3, batch_size=20)
  np.testing.assert_allclose(a["iwae"], b["iwae"], rtol=1e-6)


def test_models_without_a_joint_posterior_are_skipped_with_a_reason():
  class NoJoint:
    can_generate = True

  import ml_collections
  config = ml_collections.ConfigDict({"model": {"kind": "msvae"}, "loss": {}})
  out = marginal_likelihood.for_run(NoJoint(), config, {}, SPECS, 4, 0, Z)
  assert "joint_posterior" in str(out["skipped"]) and marginal_likelihood.summary(out) == {}
