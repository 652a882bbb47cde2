"""Encoding a whole split into posteriors: the one scoring path shared by validation and analysis.

A multi-frame modality's posterior (an image's K stored frames) averages the frames' posteriors
(mean of means, log of the mean variance): training draws one frame per step, so no frame is privileged.
Frames that are augmented views (Modality.frames_are_views) are not alternatives: frame 0 alone is encoded.
The trainer's validation MRR and `mmvae analyze` both encode through `encode_split`, so the checkpoint chosen
as best is chosen by the measurement the report shows.
"""

from typing import Callable

import numpy as np

from mmvae import progress

BATCH = 256
Encoder = Callable[[str], Callable[[np.ndarray], tuple]]  # modality -> (x -> (mu, logvar))


def batched(fn, x, batch_size: int, desc: str, pad: bool | None = None):
  """fn over fixed-size batches (the last padded, so a jitted fn compiles once), concatenated.

  pad: pad a last short batch (default: only when x holds more than one batch); True for a chunk of a longer split,
  so a split encoded chunk by chunk meets the same batch shapes, and gives the same numbers, as encoded whole.
  """
  import jax
  n = len(x)
  pad_last = n > batch_size if pad is None else pad
  outs = []
  for lo in progress.bar(range(0, n, batch_size), desc=desc, disable=n <= 4 * batch_size):
    chunk = x[lo:lo + batch_size]
    pad = batch_size - len(chunk) if pad_last else 0
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


def params_decoder(graphdef, params):
  """z_BxZ -> {modality: decoder output} for a (graphdef, params) pair of a model that can generate, jitted."""
  fn = _params_decode(graphdef)
  return lambda z: fn(params, z)


_CACHE: dict = {}


def _params_encode(graphdef):
  import jax
  from flax import nnx
  if ("encode", graphdef) not in _CACHE:
    _CACHE["encode", graphdef] = jax.jit(lambda p, modality, x: nnx.merge(graphdef, p).encode(modality, x),
                                         static_argnums=1)
  return _CACHE["encode", graphdef]


def _params_decode(graphdef):
  import jax
  from flax import nnx
  if ("decode", graphdef) not in _CACHE:
    _CACHE["decode", graphdef] = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))
  return _CACHE["decode", graphdef]


def encode_split(encode: Encoder, arrays: dict, specs: dict, batch_size: int = BATCH,
                 pad: bool | None = None) -> dict:
  """{'<m>_mu', '<m>_logvar'} of every example for each modality m of `specs` (multi-frame ones averaged over frames)."""
  out = {}
  for name, m in specs.items():
    stored = np.asarray(arrays[name])
    k = m.frames if stored.ndim == len(m.shape) + 1 else 1  # arrays may hold one frame per example already
    mus, variances = [], []
    for frame in range(1 if m.frames_are_views else k):
      x = m.kind_module.inputs(m, stored, np.full(len(stored), frame) if k > 1 else None)
      desc = f"encode {name}" + (f" frame {frame}" if k > 1 else "")
      mu, lv = batched(encode(name), x, batch_size, desc, pad)
      mus.append(mu)
      variances.append(np.exp(lv))
    # One frame: the posterior as it is (bitwise); several: mean of means, log of the mean variance.
    out[f"{name}_mu"] = mus[0] if len(mus) == 1 else np.mean(mus, 0)
    out[f"{name}_logvar"] = lv if len(mus) == 1 else np.log(np.mean(variances, 0))
  return out


def encode_frames_split(model, arrays: dict, names, batch_size: int = BATCH, pad: bool | None = None) -> dict:
  """{'<m>_w<w>': frame embeddings [N, T - w + 1, Z], '<m>_w<w>_mask': [N, T - w + 1]} of sequence modalities."""
  from flax import nnx

  @nnx.jit(static_argnums=1)
  def frames(m, modality, x):
    return m.encode_frames(modality, x)

  out = {}
  for name in names:
    by_window = batched(lambda x, n=name: frames(model, n, x), np.asarray(arrays[name], np.float32), batch_size,
                        f"frames {name}", pad)
    for w, (emb, mask) in by_window.items():
      out[f"{name}_w{w}"], out[f"{name}_w{w}_mask"] = emb, mask
  return out


def over_chunks(dataset, split: str, fns: dict, chunk: int | None = None) -> dict:
  """{name: fn(arrays, first) over the split's chunks read from disk, concatenated}: the split is never whole in memory.

  Each fn maps one chunk's arrays (`Dataset.read`) and its first position to a dict of per-example arrays (0-d
  values, e.g. a sample count, are kept from the first chunk) or None. Chunks of BATCH or more are a multiple of it
  (`Dataset.chunk_size`), so `encode_split(..., pad=True)` meets the batches the whole split would.
  """
  size = chunk or dataset.chunk_size()
  parts = {name: [] for name in fns}
  n = dataset.num_examples(split)
  for lo, arrays in progress.bar(dataset.chunks(split, size), desc=f"{split} by chunks", total=-(-n // size),
                                 disable=n <= size):
    for name, fn in fns.items():
      parts[name].append(fn(arrays, lo))
  out = {}
  for name, got in parts.items():
    if not got or got[0] is None:
      out[name] = None
      continue
    out[name] = {k: np.asarray(got[0][k]) if np.ndim(got[0][k]) == 0 else np.concatenate([p[k] for p in got])
                 for k in got[0]}
  return out
