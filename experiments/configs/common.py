"""What the experiment configs share beyond the library's schema (mmvae/config_schema.py, where every key is)."""

import ml_collections

from mmvae.config_schema import base_config  # noqa: F401  (config files written against common.base_config)


def tiny_training(c: ml_collections.ConfigDict, batch_size: int, num_steps: int, every: int) -> None:
  """The training settings every `:tiny` variant shares: a few steps, logging and saving often."""
  c.train.batch_size = batch_size
  c.train.num_steps = num_steps
  c.train.warmup_steps = 1
  c.train.log_every = 1
  c.train.eval_every = every
  c.train.checkpoint_every = every


def unknown_variant(file: str, variant: str) -> ValueError:
  return ValueError(f"unknown variant {variant!r} of {file}; use '' or 'tiny'")


def split_variant(file: str, variant: str, bases: tuple) -> tuple[str, bool]:
  """'name' or 'name_tiny' ('tiny' alone: '' tiny) -> (name, tiny), name one of `bases`; else a one-line error."""
  base, _, tiny = variant.partition("_") if variant != "tiny" else ("", "", "tiny")
  if base not in bases or tiny not in ("", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of {file}; use one of "
                     f"{', '.join(repr(v) for v in bases)}, each optionally with '_tiny' ('tiny' alone: '')")
  return base, bool(tiny)
