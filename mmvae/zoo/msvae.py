"""`msvae`: per-modality Gaussian encoders, one shared decoder, per-encoder ELBOs plus alignment terms.

The building blocks live in mmvae/models.py (MSVAE, build_model) and mmvae/losses.py (msvae_loss);
this module only registers them as a model kind.
"""

import sys

from mmvae import losses, models, zoo


def build(config, input_shapes: dict, seed: int, num_classes: int = 0):
  """The MS-VAE of config.model (see models.build_model)."""
  return models.build_model(config, input_shapes, seed=seed, num_classes=num_classes)


def loss(model, batch, example_keys_B, step_key, step, loss_cfg, axis_name=None):
  """The MS-VAE loss (see losses.msvae_loss)."""
  return losses.msvae_loss(model, batch, example_keys_B, step_key, step, loss_cfg, axis_name)


def check_config(config) -> None:
  """Raises ValueError naming the key to change in the model or loss section."""
  losses.check_loss_config(config.loss)
  models.check_model_config(config.model)


zoo.register("msvae", sys.modules[__name__])
