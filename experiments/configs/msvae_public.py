"""The public MS-VAE architecture (Zhu et al., ICASSP 2021) on precomputed feature vectors, as for AVE.

Two `vector` modalities: `visual` (512-d, e.g. VGG-19 pool features) and `audio` (128-d, e.g.
VGGish). Encoders visual 512-512-512-128-128 and audio 128-128-128, each to a 100-d Gaussian; one
shared decoder 100-512-512-512-640-640 with a linear head to each modality. The objective of the
public code: summed squared reconstruction error (self and cross), KL to N(0, I) and the squared
distance between the two posterior samples, optimised with plain Adam (no clipping) at batch 10.
benchmarks/vs_pytorch.py times this step against the same step written in PyTorch.

`msvae_public.py:tiny` has the same layers and a few steps, for tests.
"""

import ml_collections

from experiments.configs import common
from mmvae import config_schema


def get_config(variant: str = ""):
  c = config_schema.base_config()
  c.name = "msvae_public"
  c.data.modalities = ("visual", "audio")
  c.model.kind = "msvae"
  c.model.latent_dim = 100
  # The first width of each list in the notation is the input (512 visual, 128 audio).
  c.model.encoder_hidden = ml_collections.ConfigDict({"visual": (512, 512, 128, 128), "audio": (128, 128)})
  c.model.hidden = (128, 128)  # the audio encoder's widths, for any other modality a dataset adds
  c.model.decoder_hidden = (512, 512, 512, 640, 640)
  c.model.encoders = ml_collections.ConfigDict({"visual": "mlp", "audio": "mlp"})
  c.loss.likelihood = "sse"
  c.loss.learn_sigma = False
  c.loss.sigma = ml_collections.ConfigDict({"visual": 1.0, "audio": 1.0})
  c.loss.wasserstein = "sample_l2"
  c.loss.wasserstein_weight = 1.0
  c.train.batch_size = 10
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 0
  c.train.lr_schedule = "constant"
  c.train.grad_clip = 0.0  # plain Adam, as the public code
  c.train.steps_per_dispatch = 10  # a step at batch 10 is short: 10 per dispatch (the same numbers)
  c.train.num_steps = 20_000
  c.train.log_every = 200
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  if variant == "tiny":
    c.name = "msvae_public_tiny"
    common.tiny_training(c, batch_size=8, num_steps=4, every=2)
  elif variant:
    raise common.unknown_variant("msvae_public.py", variant)
  return c
