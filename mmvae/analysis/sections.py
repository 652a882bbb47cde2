"""Analysis sections: each computes its flat metrics and writes its part of report.md; analyze runs them in order.

A section is registered like a model kind:

  from mmvae.analysis import sections
  sections.register("mine", compute, markdown)

  compute(ctx) -> {metric key: value}   ctx: Context (the split's latents, generated data, stored arrays, specs,
                                        manifest, config); what its markdown needs besides metrics goes in ctx.state
  markdown(ctx, metrics) -> [lines]     its part of report.md; metrics: every section's, as metrics.json holds them

The built-in sections (BUILTIN, registered by mmvae/analysis/report.py) come first in that order, then the others
in the order they were registered; report.md puts the dataset, the training summary and the config after them.
"""

import dataclasses
import pathlib
from typing import Callable

from mmvae import display as display_lib

# retrieval.*, sync.*, clusters.* + nearest.*, coherence.* + figures, likelihood.*: report.md's order
BUILTIN = ("retrieval", "sync", "latent_space", "cross_generation", "likelihood")


@dataclasses.dataclass(frozen=True)
class Section:
  name: str
  compute: Callable  # (Context) -> {key: value}
  markdown: Callable  # (Context, metrics) -> [str]


@dataclasses.dataclass
class Context:
  """What every section may read: the analysed split and the run; `state` carries a section's results to markdown."""

  specs: dict  # {modality name: Modality}, in the dataset's order
  manifest: dict
  id_names: dict  # {label: identity name}
  report_dir: pathlib.Path | None = None
  latents: dict | None = None  # latents.npz: '<m>_mu', '<m>_logvar', 'label', text fields
  generated: dict | None = None  # generated.npz; None: the model cannot generate
  test: dict | None = None  # the split's stored arrays ({modality: data, 'label': ...})
  train: dict | None = None  # the training split's (coherence's classifiers learn from it)
  lik: dict | None = None  # likelihood.estimate's per-example arrays, or {'skipped': why}
  frames: dict | None = None  # per-frame latents of sequence modalities
  config: object = None
  run_info: dict = dataclasses.field(default_factory=dict)
  acfg: dict = dataclasses.field(default_factory=dict)  # the config's analysis.* values with their defaults
  state: dict = dataclasses.field(default_factory=dict)

  @property
  def names(self) -> list:
    return list(self.specs)

  @property
  def display(self) -> dict:
    return display_lib.display_labels(self.names)


_SECTIONS: dict[str, Section] = {}


def register(name: str, compute: Callable, markdown: Callable) -> None:
  """Makes `name` a section of every analysis in this process (after the built-in ones, in registration order)."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"an analysis section is a non-empty name, got {name!r}")
  if not callable(compute) or not callable(markdown):
    raise ValueError(f"analysis section {name!r} needs a callable compute(ctx) and markdown(ctx, metrics)")
  if name in _SECTIONS and (_SECTIONS[name].compute, _SECTIONS[name].markdown) != (compute, markdown):
    raise ValueError(f"analysis section {name!r} is already registered")
  _SECTIONS[name] = Section(name, compute, markdown)


def unregister(name: str) -> None:
  """Removes a section registered with `register` (a built-in one stays)."""
  if name not in BUILTIN:
    _SECTIONS.pop(name, None)


def ordered() -> list[Section]:
  """Every registered section in report order: BUILTIN, then the others as registered.

  The built-in ones are registered when mmvae/analysis/report.py is imported (this module imports nothing of
  analysis); RuntimeError when it was not, rather than a report without them.
  """
  missing = [n for n in BUILTIN if n not in _SECTIONS]
  if missing:
    raise RuntimeError(f"the built-in analysis sections {missing} are not registered: import mmvae.analysis.report "
                       "first (it registers them)")
  return [_SECTIONS[n] for n in BUILTIN] + [s for n, s in _SECTIONS.items() if n not in BUILTIN]


def compute(ctx: Context) -> dict:
  """Every section's metrics, in order; ValueError when one section's key repeats another's."""
  out = {}
  for section in ordered():
    metrics = section.compute(ctx)
    clash = sorted(set(metrics) & set(out))
    if clash:
      raise ValueError(f"analysis section {section.name!r} writes metrics another section wrote: {clash[:3]}")
    out.update(metrics)
  return out


def markdown(ctx: Context, metrics: dict) -> list[str]:
  """Every section's report.md lines, in order."""
  return [line for section in ordered() for line in section.markdown(ctx, metrics)]
