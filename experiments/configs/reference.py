"""The seed report's MS-VAE recipe on VoxCeleb1: averaged [297, 512] magnitude spectrograms, 23x23 gray faces.

Kept to reproduce the seed report: its time-averaged magnitude encodes loudness more than the
speaker, its reconstruction is a summed squared error and its pairs stay within a video. The
`voxceleb1` config carries the settings that work on real data.

`reference.py:tiny` is the same pipeline with a tiny model and a few steps, for tests.
"""

from experiments.configs import common
from mmvae import config_schema


def get_config(variant: str = ""):
  c = config_schema.base_config()
  c.name = "reference"
  c.data.pooling = "magnitude_mean"
  c.loss.likelihood = "sse"
  c.loss.learn_sigma = False
  c.loss.sigma.face = 1.0
  c.train.batch_size = 64
  # 8 epochs of VoxCeleb1's ~138k training utterances at batch 64.
  c.train.num_steps = 17_300
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.train.log_every = 100
  if variant == "tiny":
    c.name = "reference_tiny"
    c.model.hidden = (32, 16)
    c.model.latent_dim = 8
    common.tiny_training(c, batch_size=8, num_steps=4, every=2)
  elif variant:
    raise common.unknown_variant("reference.py", variant)
  return c
