"""Encoding a whole split into posteriors: the one scoring path shared by validation and analysis.

An example's face posterior averages its K stored frames' posteriors (mean of means, log of the
mean variance): training draws one frame per step, so no frame is privileged. The trainer's
validation MRR and `mmvae analyze` both encode through `encode_split`, so the checkpoint chosen
as best is chosen by the measurement the report shows.
"""

from typing import Callable

import numpy as np

from mmvae import modalities, progress

BATCH = 256
Encoder = Callable[[str], Callable[[np.ndarray], tuple]]  # modality -> (x -> (mu, logvar))


def batched(fn, x, batch_size: int, desc: str):
  """fn over fixed-size batches (the last padded, so a jitted fn compiles once), concatenated."""
  import jax
  n = len(x)
  outs = []
  for lo in progress.bar(range(0, n, batch_size), desc=desc, disable=n <= 4 * batch_size):
    chunk = x[lo:lo + batch_size]
    pad = batch_size - len(chunk) if n > batch_size else 0
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out = jax.tree.map(lambda a: np.asarray(a)[:len(chunk) - pad], fn(chunk))
    outs.append(out)
  return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def model_encoder(model) -> Encoder:
  """modality -> jitted x -> (mu, logvar) of a built model."""
  from flax import nnx

  @nnx.jit(static_argnums=1)
  def encode(m, modality, x):
    return m.encode(modality, x)

  return lambda modality: lambda x: encode(model, modality, x)


def params_encoder(graphdef, params) -> Encoder:
  """modality -> jitted x -> (mu, logvar) for a (graphdef, params) pair, as the trainer holds them."""
  fn = _params_encode(graphdef)
  return lambda modality: lambda x: fn(params, modality, x)


_CACHE: dict = {}


def _params_encode(graphdef):
  import jax
  from flax import nnx
  if graphdef not in _CACHE:
    _CACHE[graphdef] = jax.jit(lambda p, modality, x: nnx.merge(graphdef, p).encode(modality, x), static_argnums=1)
  return _CACHE[graphdef]


def encode_split(encode: Encoder, arrays: dict, batch_size: int = BATCH) -> dict:
  """{'audio_mu', 'audio_logvar', 'face_mu', 'face_logvar'} of every example (faces averaged over K frames)."""
  from mmvae import data
  a_mu, a_lv = batched(encode(modalities.AUDIO), np.asarray(arrays[modalities.AUDIO], np.float32),
                       batch_size, "encode voices")
  faces = np.asarray(arrays[modalities.FACE])
  if faces.ndim == 4:  # one frame per example: [N, S, S, C]
    faces = faces[:, None]
  mus, variances = [], []
  for k in range(faces.shape[1]):
    frame = faces[:, k]
    frame = data.face_to_float(frame) if frame.dtype == np.uint8 else np.asarray(frame, np.float32)
    mu, lv = batched(encode(modalities.FACE), frame, batch_size, f"encode faces {k}")
    mus.append(mu)
    variances.append(np.exp(lv))
  return {"audio_mu": a_mu, "audio_logvar": a_lv, "face_mu": np.mean(mus, 0),
          "face_logvar": np.log(np.mean(variances, 0))}
