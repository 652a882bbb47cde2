"""Larger variant: full [297, 512] spectrograms and 64x64 RGB faces with conv encoders/decoder."""

from experiments.configs import common
from mmvae import config_schema


def get_config(variant: str = ""):
  c = config_schema.base_config()
  c.name = "conv"
  c.data.time_average = False
  c.data.magnitude = "log"
  c.data.face_size = 64
  c.data.grayscale = False
  c.model.encoders.audio = "conv"
  c.model.encoders.face = "conv"
  c.model.decoder = "conv"
  c.model.latent_dim = 128
  c.train.batch_size = 128
  c.train.num_steps = 20_000
  c.train.learning_rate = 3e-4
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.train.log_every = 100
  if variant == "tiny":
    c.name = "conv_tiny"
    c.model.conv_channels = (4, 8)
    c.model.latent_dim = 8
    common.tiny_training(c, batch_size=4, num_steps=2, every=2)
  elif variant:
    raise common.unknown_variant("conv.py", variant)
  return c
