"""MS-VAE on real VoxCeleb1 voices and faces: the settings that make cross-modal retrieval work.

Against the seed recipe (`reference`): gain-invariant statistics-pooled log spectra, four face
frames per utterance with each voice paired to a face of any training video of its identity, a
Gaussian likelihood with learned scales (a true ELBO), and contrastive + identity alignment beside
the exact W2. The decoder is still shared, so faces are generated from voices as before.
`voxceleb1.py:tiny` is the same pipeline with a tiny model and a few steps, for tests.
"""

from experiments.configs import common


def get_config(variant: str = ""):
  c = common.base_config()
  c.name = "voxceleb1"
  c.data.pooling = "mfcc_stats"
  c.data.frames_per_utterance = 4
  c.data.pairing = "identity"
  c.loss.infonce_weight = 1.0
  c.loss.identity_weight = 1.0
  c.train.batch_size = 64
  c.train.num_steps = 2000
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.train.log_every = 50
  if variant == "tiny":
    c.name = "voxceleb1_tiny"
    c.model.hidden = (32, 16)
    c.model.latent_dim = 8
    common.tiny_training(c, batch_size=8, num_steps=4, every=2)
  elif variant:
    raise common.unknown_variant("voxceleb1.py", variant)
  return c
