"""mmvae: multimodal VAEs for voices and faces in JAX/Flax NNX.

The Python API mirrors the command line (see experiments/quickstart.py):

  manifest = mmvae.prepare("synthetic", "data", identities=8)          # mmvae prep synthetic --out data
  final = mmvae.train("synthetic:tiny", "data", "run")                  # mmvae train ...
  metrics = mmvae.analyze("run")                                        # mmvae analyze --workdir run
  model, config, data_dir = mmvae.load_run("run")
  hits = mmvae.Index.open("index").query(text="a seven", k=10)   # mmvae index ...; mmvae query ...

Each function imports its stage on first call, so `import mmvae` stays fast.
"""

import os
import types
from typing import Sequence

from mmvae.version import __version__


def prepare(corpus: str, out, config=None, overrides: Sequence[str] = (), **kwargs) -> dict:
  """Prepares a corpus into OUT (TFDS array_record + manifest.json) like `mmvae prep CORPUS`; returns the manifest.

  corpus: a registered corpus (data_prep.corpora): 'synthetic' (kwargs: identities, seed, split, workers, video),
  'voxceleb1' (root, strict, workers, split_policy), 'folder' (your own data: root, videos, split_seed,
  validation_fraction, test_fraction, strict, workers; data_prep.folder.prepare_folder), 'avdigits' or 'mmdigits'
  (fsdd, mnist, seed, strict, workers; see data_prep.prepare.prepare_<corpus>), 'features' (root, seed, anchor,
  rename, standardize; see data_prep.features.prepare_features) or 'yt8m' (records, max_steps;
  data_prep.yt8m.prepare_yt8m); the last two read no config.
  config: whose input settings to follow: a name, 'NAME:variant', 'path.py[:variant]' or a ConfigDict
  (default: the command's, the corpus's Kind.config: voxceleb1 (voxceleb1, folder), synthetic, avdigits or mcvs).
  overrides: 'a.b=value' strings.
  """
  from data_prep import corpora
  kind = corpora.get(corpus)  # ValueError naming the registered corpora
  if kind.config is None and (config is not None or overrides):
    raise ValueError(f"prepare({corpus!r}, ...) reads no config: give no config or overrides")
  if config is not None or overrides:
    kwargs["config"] = _config(config if config is not None else kind.config, overrides)
  return kind.prepare(out=out, **kwargs)


def analyze(workdir, data_dir=None, split: str = "test", checkpoint: str = "best") -> dict:
  """Writes WORKDIR/report/ for a trained run like `mmvae analyze`; returns the metrics (metrics.json).

  checkpoint: 'best' (highest validation score) or 'last'; data_dir: default the dataset the run trained on.
  Keys name the dataset's modalities: 'retrieval.<q>_to_<g>.mrr' for every ordered pair (e.g.
  'retrieval.audio_to_face.mrr'), 'coherence.<q>_to_<g>.accuracy', 'coherence.joint.accuracy' and
  'likelihood.iwae_k<K>' for models that generate; each score with '..._chance' beside it.
  """
  from mmvae.analysis import report
  return report.analyze(workdir, data_dir=data_dir, split=split, which=checkpoint)


def load_run(workdir, checkpoint: str = "best"):
  """(model, config, data_dir) of a trained run: an NNX model of the run's kind, its ConfigDict, its dataset.

  The model offers encode(modality, x) -> (mu, logvar), can_generate, and decode(z) when it can generate.
  """
  from mmvae.train import checkpoints
  return checkpoints.load_run(workdir, which=checkpoint)


def _config(config, overrides: Sequence[str]):
  from mmvae import config as config_lib
  if isinstance(config, (str, os.PathLike)):
    return config_lib.load(str(config), overrides)
  config = config.copy_and_resolve_references() if overrides else config
  for item in overrides:
    config_lib.apply_override(config, item)
  return config


class _Train(types.ModuleType):
  """The mmvae.train subpackage, callable as the training function: `mmvae.train(config, data_dir, workdir)`."""

  def __call__(self, config, data_dir, workdir, overrides: Sequence[str] = (), **kwargs) -> dict:
    """Trains (or resumes) a run in WORKDIR on a prepared dataset like `mmvae train`; returns final.json's contents.

    config: a name ('reference', 'synthetic:tiny'), 'path.py[:variant]' or a ConfigDict; overrides:
    'a.b=value' strings. kwargs: allow_data_change, init_from (see mmvae.train.entry.train).
    """
    from mmvae.train import entry
    return entry.train(_config(config, overrides), data_dir, workdir, **kwargs)


# `mmvae.train` is both the subpackage (mmvae/train/) and the API function: the import system binds the
# name to the subpackage whenever it is imported, so the subpackage itself is made callable. Its
# __init__ imports nothing, so `import mmvae` stays fast.
from mmvae import train  # noqa: E402  pylint: disable=wrong-import-position

train.__class__ = _Train
train.__doc__ = f"{train.__doc__}\n\nmmvae.train(config, data_dir, workdir, overrides=(), **kwargs): " \
                f"{_Train.__call__.__doc__}"



def __getattr__(name: str):
  """`mmvae.Index` (mmvae.index.Index: a built index folder to query), imported on first use."""
  if name == "Index":
    from mmvae.index import Index
    return Index
  raise AttributeError(f"module 'mmvae' has no attribute {name!r}")


__all__ = ["Index", "__version__", "analyze", "load_run", "prepare", "train"]
