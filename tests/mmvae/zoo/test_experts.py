"""mmvae.zoo.experts against grids, scipy, plain loops, sampling frequencies and finite differences."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from mmvae.zoo import experts

GRID = np.linspace(-15.0, 15.0, 300001)


def grid_moments(mus, variances, prior):
  """Mean and variance of the normalised product of N(mu_i, var_i) (and N(0, 1)) densities on GRID."""
  log_p = np.zeros_like(GRID)
  for mu, var in zip(mus, variances):
    log_p += stats.norm.logpdf(GRID, mu, math.sqrt(var))
  if prior or not mus:  # nothing observed and no prior: documented as N(0, 1)
    log_p += stats.norm.logpdf(GRID)
  p = np.exp(log_p - log_p.max())
  p /= p.sum()
  mean = np.sum(GRID * p)
  return mean, np.sum((GRID - mean)**2 * p)


@pytest.mark.parametrize("prior", [True, False])
def test_product_of_experts_matches_a_grid_product_of_densities(prior):
  mus_MxZ = np.array([[1.0, -0.7], [-2.0, 3.0], [0.5, 0.1]])
  logvars_MxZ = np.array([[0.3, -2.0], [-1.0, 0.8], [1.2, 0.0]])
  masks_BxM = np.array([[1, 1, 1], [1, 0, 0], [1, 0, 1], [0, 1, 1], [0, 0, 0]], bool)
  batch = len(masks_BxM)
  mus_MxBxZ = np.repeat(mus_MxZ[:, None], batch, axis=1).astype(np.float32)
  logvars_MxBxZ = np.repeat(logvars_MxZ[:, None], batch, axis=1).astype(np.float32)
  # An absent expert may hold garbage: it must change neither the result nor make it NaN.
  mus_MxBxZ[~masks_BxM.T] = np.nan
  logvars_MxBxZ[~masks_BxM.T] = -np.inf
  mu_BxZ, logvar_BxZ = jax.jit(experts.product_of_experts, static_argnames="prior")(
      mus_MxBxZ, logvars_MxBxZ, masks_BxM.T, prior=prior)
  for b, z in itertools.product(range(batch), range(2)):
    present = np.flatnonzero(masks_BxM[b])
    mean, var = grid_moments(list(mus_MxZ[present, z]), list(np.exp(logvars_MxZ[present, z])), prior)
    np.testing.assert_allclose(mu_BxZ[b, z], mean, rtol=1e-3, atol=1e-5, err_msg=f"example {b} dim {z}")
    np.testing.assert_allclose(np.exp(logvar_BxZ[b, z]), var, rtol=1e-3, err_msg=f"example {b} dim {z}")
  np.testing.assert_array_equal(mu_BxZ[-1], 0.0)  # nothing observed: exactly N(0, I)
  np.testing.assert_array_equal(logvar_BxZ[-1], 0.0)


def test_product_of_experts_mask_none_is_all_present_and_gradients_skip_absent_experts():
  mus_MxBxZ = jnp.array([[[1.0, 2.0]], [[-1.0, 0.5]]])
  logvars_MxBxZ = jnp.array([[[0.0, -1.0]], [[0.7, 0.2]]])
  poe = jax.jit(experts.product_of_experts)
  full = poe(mus_MxBxZ, logvars_MxBxZ)
  masked = poe(mus_MxBxZ, logvars_MxBxZ, jnp.ones((2, 1), bool))
  np.testing.assert_allclose(full, masked)
  garbage_mus = mus_MxBxZ.at[1].set(jnp.nan)
  garbage_logvars = logvars_MxBxZ.at[1].set(jnp.nan)
  total = lambda m, lv: sum(jnp.sum(x) for x in experts.product_of_experts(m, lv, jnp.array([[True], [False]])))
  grad_mu, grad_logvar = jax.jit(jax.grad(total, argnums=(0, 1)))(garbage_mus, garbage_logvars)
  assert np.all(np.isfinite(grad_mu)) and np.all(np.isfinite(grad_logvar))
  np.testing.assert_array_equal(grad_mu[1], 0.0)
  np.testing.assert_array_equal(grad_logvar[1], 0.0)
  # Only expert 0 and the prior: d mu / d mu_0 = T_0 / (T_0 + 1).
  np.testing.assert_allclose(grad_mu[0, 0], 1.0 / (1.0 + np.exp(logvars_MxBxZ[0, 0])), rtol=1e-6)


def test_product_of_experts_is_finite_for_extreme_logvars():
  mus_MxBxZ = jnp.array([[[1.0, 1.0, 1.0]], [[3.0, 3.0, 3.0]]])
  logvars_MxBxZ = jnp.array([[[-jnp.inf, -1e4, 1e4]], [[0.0, jnp.inf, 0.0]]])
  poe = jax.jit(experts.product_of_experts, static_argnames="prior")
  mu_BxZ, logvar_BxZ = poe(mus_MxBxZ, logvars_MxBxZ, prior=False)
  assert np.all(np.isfinite(mu_BxZ)) and np.all(np.isfinite(logvar_BxZ))
  assert np.all(logvar_BxZ >= experts.LOGVAR_MIN - 1e-3)
  np.testing.assert_allclose(mu_BxZ[0, :2], 1.0, rtol=1e-5)  # the confident expert wins
  np.testing.assert_allclose(mu_BxZ[0, 2], 3.0, rtol=1e-5)  # an uninformative expert barely counts


@pytest.mark.parametrize("num", [1, 2, 3, 4])
def test_subsets_in_order_of_size_then_position(num):
  mods = tuple("abcd"[:num])
  by_bits = [tuple(mods[i] for i in range(num) if bits >> i & 1) for bits in range(1, 2**num)]
  expected = sorted(by_bits, key=lambda s: (len(s), [mods.index(m) for m in s]))
  assert experts.subsets(mods) == expected
  assert len(expected) == 2**num - 1
  assert experts.subsets(mods, include_empty=True) == [()] + expected
  with pytest.raises(ValueError, match="distinct"):
    experts.subsets(mods + mods[:1])


def test_subset_products_equal_a_numpy_product_per_subset():
  mods = ("audio", "face", "text")
  rng = np.random.default_rng(0)
  mus_MxBxZ = rng.normal(size=(3, 4, 2)).astype(np.float32)
  logvars_MxBxZ = rng.normal(size=(3, 4, 2)).astype(np.float32)
  mask_MxB = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]], bool)
  subs = experts.subsets(mods, include_empty=True)
  mus_SxBxZ, logvars_SxBxZ = jax.jit(experts.subset_products)(
      mus_MxBxZ, logvars_MxBxZ, experts.subset_masks(subs, mods), mask_MxB)
  for s, sub in enumerate(subs):
    for b in range(4):
      # Precision-weighted average written out in numpy, the N(0, 1) prior as one more expert.
      idx = [mods.index(m) for m in sub if mask_MxB[mods.index(m), b]]
      precisions_NxZ = np.concatenate([np.exp(-logvars_MxBxZ[idx, b]), np.ones((1, 2))])
      mus_NxZ = np.concatenate([mus_MxBxZ[idx, b], np.zeros((1, 2))])
      mu_Z = np.sum(precisions_NxZ * mus_NxZ, 0) / precisions_NxZ.sum(0)
      np.testing.assert_allclose(mus_SxBxZ[s, b], mu_Z, rtol=1e-5, atol=1e-6, err_msg=f"{sub} {b}")
      np.testing.assert_allclose(logvars_SxBxZ[s, b], -np.log(precisions_NxZ.sum(0)), rtol=1e-5, atol=1e-6)


def test_mixture_sample_frequencies_and_component_moments():
  n, weights = 20000, np.array([0.2, 0.5, 0.3])
  mus_Mx1xZ = np.array([[[-30.0, 5.0]], [[0.0, -1.0]], [[30.0, 2.0]]], np.float32)
  logvars_Mx1xZ = np.log(np.array([[[1.0, 4.0]], [[0.25, 1.0]], [[9.0, 0.5]]], np.float32))
  mus_MxBxZ = np.repeat(mus_Mx1xZ, n, axis=1)
  logvars_MxBxZ = np.repeat(logvars_Mx1xZ, n, axis=1)
  sample = jax.jit(experts.mixture_sample)
  z_BxZ, component_B = sample(jax.random.key(0), mus_MxBxZ, logvars_MxBxZ, weights)
  z_BxZ, component_B = np.asarray(z_BxZ), np.asarray(component_B)
  counts = np.bincount(component_B, minlength=3)
  assert np.all(np.abs(counts - n * weights) < 4.5 * np.sqrt(n * weights * (1 - weights))), counts
  assert stats.chisquare(counts, n * weights).pvalue > 1e-4
  # Components 60 apart on dim 0: the nearest mean names the component that drew the sample.
  np.testing.assert_array_equal(np.argmin(np.abs(z_BxZ[:, :1] - mus_Mx1xZ[:, 0, 0]), axis=1), component_B)
  for m in range(3):
    z_NxZ = z_BxZ[component_B == m]
    std_Z = np.exp(0.5 * logvars_Mx1xZ[m, 0])
    assert np.all(np.abs(z_NxZ.mean(0) - mus_Mx1xZ[m, 0]) < 5 * std_Z / np.sqrt(len(z_NxZ)))
    assert np.all(np.abs(z_NxZ.std(0) - std_Z) < 5 * std_Z / np.sqrt(2 * len(z_NxZ)))
  _, never_B = sample(jax.random.key(1), mus_MxBxZ, logvars_MxBxZ, np.array([0.0, 2.0, 0.0]))
  np.testing.assert_array_equal(never_B, 1)
  _, uniform_B = sample(jax.random.key(2), mus_MxBxZ, logvars_MxBxZ)
  assert np.all(np.abs(np.bincount(uniform_B, minlength=3) - n / 3) < 4.5 * np.sqrt(n * 2 / 9))


def example_keys(positions_B):
  """Keys the way the trainer derives them: root key, fold_in(step), fold_in(global position)."""
  step_key = jax.random.fold_in(jax.random.key(7), 3)
  return jax.vmap(lambda p: jax.random.fold_in(step_key, p))(jnp.asarray(positions_B))


stratified = jax.jit(experts.stratified_samples, static_argnames="k")


def test_stratified_samples_shape_moments_and_batch_split_independence():
  rng = np.random.default_rng(1)
  mus_MxBxZ = rng.normal(size=(2, 3, 2)).astype(np.float32) * 3
  logvars_MxBxZ = rng.normal(size=(2, 3, 2)).astype(np.float32)
  k = 4000
  z_MxKxBxZ = np.asarray(stratified(example_keys([10, 11, 12]), mus_MxBxZ, logvars_MxBxZ, k))
  assert z_MxKxBxZ.shape == (2, k, 3, 2)
  std_MxBxZ = np.exp(0.5 * logvars_MxBxZ)
  assert np.all(np.abs(z_MxKxBxZ.mean(1) - mus_MxBxZ) < 5 * std_MxBxZ / np.sqrt(k))
  assert np.all(np.abs(z_MxKxBxZ.std(1) - std_MxBxZ) < 5 * std_MxBxZ / np.sqrt(2 * k))
  # Example b's draws depend on its own key only: permuting or slicing the batch (as devices do) keeps them.
  perm = [2, 0, 1]
  permuted = stratified(example_keys([12, 10, 11]), mus_MxBxZ[:, perm], logvars_MxBxZ[:, perm], k)
  np.testing.assert_array_equal(permuted, z_MxKxBxZ[:, :, perm])
  sliced = stratified(example_keys([11, 12]), mus_MxBxZ[:, 1:], logvars_MxBxZ[:, 1:], k)
  np.testing.assert_array_equal(sliced, z_MxKxBxZ[:, :, 1:])
  same = stratified(example_keys([5, 5, 6]), np.zeros((2, 3, 2), np.float32), np.zeros((2, 3, 2), np.float32), k)
  np.testing.assert_array_equal(same[:, :, 0], same[:, :, 1])
  assert not np.allclose(same[:, :, 0], same[:, :, 2])


def test_stratified_samples_are_reparameterised():
  rng = np.random.default_rng(2)
  mus_MxBxZ = rng.normal(size=(2, 2, 2)).astype(np.float32)
  logvars_MxBxZ = rng.normal(size=(2, 2, 2)).astype(np.float32)
  keys_B, k = example_keys([0, 1]), 4000
  total = lambda m, lv: jnp.sum(experts.stratified_samples(keys_B, m, lv, k))
  grad_mu, grad_logvar = jax.jit(jax.grad(total, argnums=(0, 1)))(mus_MxBxZ, logvars_MxBxZ)
  np.testing.assert_allclose(grad_mu, k)  # 1 per sample per dim
  z_MxKxBxZ = np.asarray(stratified(keys_B, mus_MxBxZ, logvars_MxBxZ, k))
  # dz/dlogvar = sigma eps / 2 = (z - mu) / 2
  np.testing.assert_allclose(grad_logvar, 0.5 * (z_MxKxBxZ - mus_MxBxZ[:, None]).sum(1), rtol=1e-4, atol=1e-3)


def test_log_normal_and_log_mixture_against_scipy():
  rng = np.random.default_rng(3)
  mus_MxBxZ = rng.normal(size=(3, 4, 2)) * 3
  logvars_MxBxZ = rng.normal(size=(3, 4, 2))
  z_KxBxZ = rng.normal(size=(5, 4, 2)) * 4
  weights = np.array([0.1, 0.6, 0.3])
  std_MxBxZ = np.exp(0.5 * logvars_MxBxZ)
  np.testing.assert_allclose(experts.log_normal(z_KxBxZ, mus_MxBxZ[0], logvars_MxBxZ[0]),
                             stats.norm.logpdf(z_KxBxZ, mus_MxBxZ[0], std_MxBxZ[0]).sum(-1), rtol=1e-5)
  for w, got in [(weights, experts.log_mixture(z_KxBxZ, mus_MxBxZ, logvars_MxBxZ, weights)),
                 (np.ones(3) / 3, experts.log_mixture(z_KxBxZ, mus_MxBxZ, logvars_MxBxZ))]:
    assert got.shape == (5, 4)
    for kk, b in itertools.product(range(5), range(4)):
      terms = [math.log(w[m]) + stats.norm.logpdf(z_KxBxZ[kk, b], mus_MxBxZ[m, b], std_MxBxZ[m, b]).sum()
               for m in range(3)]
      np.testing.assert_allclose(got[kk, b], special.logsumexp(terms), rtol=1e-5)
  z_MxKxBxZ = rng.normal(size=(3, 5, 4, 2))  # MMVAE's stratified z: any leading sample axes
  assert experts.log_mixture(z_MxKxBxZ, mus_MxBxZ, logvars_MxBxZ).shape == (3, 5, 4)


def test_iwae_bound_is_logmeanexp_over_samples():
  log_w_KxB = np.array([[-1000.0, 1.0, 3.0], [-1001.0, 2.0, -50.0], [-999.5, 0.5, 3.0]], np.float32)
  for b in range(3):
    top = log_w_KxB[:, b].max()
    expected = top + math.log(sum(math.exp(x - top) for x in log_w_KxB[:, b]) / 3)
    np.testing.assert_allclose(experts.iwae_bound(log_w_KxB)[b], expected, rtol=1e-6)
  np.testing.assert_allclose(experts.iwae_bound(log_w_KxB[:1]), log_w_KxB[0])


# A 1-D model for the gradient tests: p(z) = N(0, 1), p(x | z) = N(theta z, S2), q(z) = N(mu, exp(lv)).
X, S2 = 1.3, 0.5


def log_w(z, mu, lv, theta=1.0, stop=True):
  """log p(x, z) - log q(z); DReG computes log q with its parameters under stop_gradient (stop=True)."""
  z_1 = z[..., None]
  if stop:
    mu, lv = jax.lax.stop_gradient(mu), jax.lax.stop_gradient(lv)
  log_q = experts.log_normal(z_1, mu, lv)
  log_lik = experts.log_normal(jnp.full_like(z_1, X), theta * z_1, math.log(S2))
  return experts.log_normal(z_1, 0.0, 0.0) + log_lik - log_q


def one_log_w(mu, lv, theta, eps):
  """log w of the single sample z = mu + sigma eps."""
  return log_w(mu + jnp.exp(0.5 * lv) * eps, mu, lv, theta)


one_value = jax.jit(one_log_w)
one_grads = jax.jit(jax.grad(one_log_w, argnums=(0, 2)))  # (d/dmu, d/dtheta) of one sample's log w


def per_sample(mu, lv, theta, eps_K):
  """Normalised weights and per-sample gradients, one sample at a time."""
  lw_K = np.array([float(one_value(mu, lv, theta, e)) for e in eps_K])
  d_mu_K, d_theta_K = np.array([[float(g) for g in one_grads(mu, lv, theta, e)] for e in eps_K]).T
  return np.exp(lw_K - special.logsumexp(lw_K)), d_mu_K, d_theta_K


def test_dreg_gradient_is_the_squared_weight_sum_of_per_sample_gradients():
  mu, lv = 0.2, -0.5
  eps_Kx1 = np.array([[-1.1], [0.3], [0.9], [2.0]])
  surrogate = lambda m: jnp.sum(experts.dreg_surrogate(one_log_w(m, lv, 1.0, eps_Kx1)))
  grad = jax.jit(jax.grad(surrogate))(mu)
  w_tilde_K, d_mu_K, _ = per_sample(mu, lv, 1.0, eps_Kx1[:, 0])
  np.testing.assert_allclose(grad, np.sum(w_tilde_K**2 * d_mu_K), rtol=1e-5)
  assert not np.isclose(grad, np.sum(w_tilde_K * d_mu_K), rtol=1e-2)  # the check tells the weights apart


def test_scale_grad_recipe_gives_iwae_weights_to_the_decoder_and_dreg_weights_to_the_encoder():
  mu, lv, theta = 0.2, -0.5, 0.8
  eps_KxB = np.array([[-1.1], [0.3], [0.9], [2.0]])

  def surrogate(m, t):
    z_KxB = m + math.exp(0.5 * lv) * eps_KxB
    w_tilde_KxB = jax.nn.softmax(jax.lax.stop_gradient(log_w(z_KxB, m, lv, t)), axis=0)
    return jnp.sum(w_tilde_KxB * log_w(experts.scale_grad(z_KxB, w_tilde_KxB), m, lv, t))

  grad_mu, grad_theta = jax.jit(jax.grad(surrogate, argnums=(0, 1)))(mu, theta)
  w_tilde_K, d_mu_K, d_theta_K = per_sample(mu, lv, theta, eps_KxB[:, 0])
  np.testing.assert_allclose(grad_mu, np.sum(w_tilde_K**2 * d_mu_K), rtol=1e-5)
  np.testing.assert_allclose(grad_theta, np.sum(w_tilde_K * d_theta_K), rtol=1e-5)
  np.testing.assert_allclose(experts.scale_grad(jnp.arange(3.0), 2.0), jnp.arange(3.0))


def numpy_iwae(mu, lv, eps_KxN):
  """The IWAE bound of every column of noise, written out in float64."""
  z = mu + np.exp(0.5 * lv) * eps_KxN
  lw = stats.norm.logpdf(z) + stats.norm.logpdf(X, z, math.sqrt(S2)) - stats.norm.logpdf(z, mu, math.exp(0.5 * lv))
  return special.logsumexp(lw, axis=0) - math.log(len(eps_KxN))


@pytest.mark.parametrize("mu,lv", [(0.2, -0.5), (-0.5, 0.5)])
def test_dreg_is_unbiased_for_the_iwae_gradient(mu, lv):
  eps_KxN = np.random.default_rng(4).standard_normal((5, 20000))
  h = 1e-5
  # The reparameterised IWAE gradient of each draw by central differences (common noise), in float64.
  fd_Nx2 = np.stack([(numpy_iwae(mu + h, lv, eps_KxN) - numpy_iwae(mu - h, lv, eps_KxN)) / (2 * h),
                     (numpy_iwae(mu, lv + h, eps_KxN) - numpy_iwae(mu, lv - h, eps_KxN)) / (2 * h)], axis=-1)

  def per_draw_grads(surrogate):
    lw = lambda m, l: log_w(m + jnp.exp(0.5 * l) * eps_KxN, m, l)
    return np.stack(jax.jacfwd(lambda m, l: surrogate(lw(m, l)), argnums=(0, 1))(mu, lv), axis=-1)

  dreg_Nx2 = per_draw_grads(experts.dreg_surrogate)
  # The same with weights w_tilde instead of w_tilde^2 (IWAE-STL) is biased for K > 1: the check must see it.
  stl_Nx2 = per_draw_grads(lambda lw: jnp.sum(jax.nn.softmax(jax.lax.stop_gradient(lw), axis=0) * lw, axis=0))
  n = len(fd_Nx2)
  for est_Nx2, unbiased in [(dreg_Nx2, True), (stl_Nx2, False)]:
    diff_Nx2 = est_Nx2 - fd_Nx2
    close = np.abs(diff_Nx2.mean(0)) < 4 * diff_Nx2.std(0) / math.sqrt(n) + 1e-4
    assert close.all() == unbiased, (est_Nx2.mean(0), fd_Nx2.mean(0))
  assert np.all(np.abs(fd_Nx2.mean(0)) > 5 * fd_Nx2.std(0) / math.sqrt(n))  # a gradient worth checking


def test_dreg_gradient_vanishes_at_the_true_posterior():
  precision = 1.0 + 1.0 / S2
  mu, lv = X / S2 / precision, -math.log(precision)
  eps_KxB = np.random.default_rng(5).standard_normal((4, 8))
  z = lambda m, l: m + jnp.exp(0.5 * l) * eps_KxB
  dreg = jax.jit(jax.grad(lambda m, l: jnp.sum(experts.dreg_surrogate(log_w(z(m, l), m, l))), argnums=(0, 1)))(mu, lv)
  np.testing.assert_allclose(dreg, 0.0, atol=1e-5)
  # The plain IWAE estimator (q's parameters not stopped) is noisy there; DReG removes that noise.
  iwae_bound = lambda m, l: jnp.sum(experts.iwae_bound(log_w(z(m, l), m, l, stop=False)))
  iwae = jax.jit(jax.grad(iwae_bound, argnums=(0, 1)))(mu, lv)
  assert np.max(np.abs(iwae)) > 1e-2
