"""AV-digits: FSDD spoken digits, MNIST images (28x28 gray) and text descriptions of the same digit: three modalities."""

from experiments.configs import common
from mmvae import config_schema


def get_config(variant: str = ""):
  c = config_schema.base_config()
  c.name = "avdigits"
  c.data.segment_samples = 16000  # FSDD clips are ~0.5 s: 1 s segments, zero-padded
  c.data.face_size = 28
  c.data.grayscale = True
  # Each training recording carries 3 MNIST images of its digit (training draws one per step): 7,200 distinct
  # training images instead of 2,400; validation and test keep their one image each.
  c.data.frames_per_utterance = 3
  # Relevance is the digit, so any image and text of a recording's digit is its pair: the decoders learn
  # what every example of a digit shares (measured on msvae: audio->image coherence 0.84 -> 0.97).
  c.data.pairing = "identity"
  c.model.latent_dim = 16
  c.model.hidden = (256, 128)
  c.train.batch_size = 64
  c.train.num_steps = 3000
  c.loss.kl_weight = 0.1
  if variant == "tiny":
    c.name = "avdigits_tiny"
    c.model.hidden = (32, 16)
    c.model.latent_dim = 4
    common.tiny_training(c, batch_size=8, num_steps=4, every=2)
  elif variant:
    raise common.unknown_variant("avdigits.py", variant)
  return c
