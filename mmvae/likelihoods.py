"""Per-example negative log-likelihoods of the decoders' outputs, in nats (and the seed recipe's squared error)."""

import math

import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)  # not jnp: a JAX op at import would start the backend before jax.distributed


def reconstruction(pred, target):
  """Summed squared error per example."""
  diff = (pred - target).reshape(pred.shape[0], -1)
  return jnp.sum(diff**2, axis=-1)


def gaussian_nll(pred, target, log_sigma):
  """-log N(target | pred, sigma^2 I) per example, summed over its dimensions (nats)."""
  sse_B = reconstruction(pred, target)
  dims = pred[0].size
  return 0.5 * sse_B * jnp.exp(-2.0 * log_sigma) + dims * (log_sigma + 0.5 * _LOG_2PI)


def categorical_nll(logits_BxLxV, ids_BxL):
  """-sum over positions of log softmax(logits)[id] per example (nats); padding is a token like any other."""
  log_p = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_p, ids_BxL[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return -jnp.sum(picked, axis=-1)
