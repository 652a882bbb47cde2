"""Cross generation and prior samples: decoding latents into every modality, in each kind's data space.

Keys of the result (and of report/generated.npz): `<g>_from_<q>` is modality g decoded from modality
q's posterior mean of each test example (q == g: the reconstruction), `<g>_from_prior` is g decoded from
z ~ N(0, I) (seeded), every modality from the same z. Values are `to_data` of the decoder's output:
an image's pixels in [0, 1], a spectrogram's values, a text's token ids.
"""

import numpy as np

from mmvae import inference

BATCH = inference.BATCH
JOINT_SAMPLES = 1000


def decoder(model):
  """z_BxZ -> {modality: output} of a built model, jitted."""
  from flax import nnx

  @nnx.jit
  def decode(m, z):
    return m.decode(z)

  return lambda z: decode(model, z)


def _to_data(specs: dict, outputs: dict, suffix: str) -> dict:
  return {f"{g}_{suffix}": m.kind_module.to_data(outputs[g]) for g, m in specs.items()}


def cross_generate(model, latents: dict, specs: dict, batch_size: int = BATCH) -> dict:
  """{'<g>_from_<q>': data} for every modality q (its posterior means) and g (the decoded modality)."""
  decode = decoder(model)
  out = {}
  for q in specs:
    decoded = inference.batched(decode, np.asarray(latents[f"{q}_mu"], np.float32), batch_size, f"decode {q}")
    out.update(_to_data(specs, decoded, f"from_{q}"))
  return out


def sample_prior(model, specs: dict, latent_dim: int, n: int = JOINT_SAMPLES, seed: int = 0,
                 batch_size: int = BATCH) -> dict:
  """{'<g>_from_prior': data}: n draws z ~ N(0, I) (np.random.default_rng(seed)), each decoded into every modality."""
  z_NxZ = np.random.default_rng(seed).standard_normal((n, latent_dim)).astype(np.float32)
  return _to_data(specs, inference.batched(decoder(model), z_NxZ, batch_size, "decode prior samples"), "from_prior")
