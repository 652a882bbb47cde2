"""The corpus registry: `mmvae prep NAME` and `mmvae.prepare(NAME, ...)` reach a corpus through it.

A corpus is one module that registers a Kind: its name, its command-line arguments, what the command does with
them, and its prepare function for the Python API. A module outside the package registers the same way; once
imported (before `mmvae.cli.main` builds its parser), `mmvae prep NAME` and `mmvae.prepare(NAME, ...)` work:

  from data_prep import corpora
  corpora.register(corpora.Kind("mine", help="...", add_arguments=add_arguments, run=run, prepare=prepare))

The built-in corpora (BUILTIN) import, and so register, on the first kinds()/get().
"""

import argparse
import dataclasses
import difflib
import importlib
from typing import Callable

# name -> module, in the order `mmvae prep --help` lists them.
BUILTIN = {"voxceleb1": "data_prep.voxceleb1", "folder": "data_prep.folder", "avdigits": "data_prep.avdigits",
           "mmdigits": "data_prep.mmdigits", "synthetic": "data_prep.synthetic", "features": "data_prep.features",
           "yt8m": "data_prep.yt8m"}


@dataclasses.dataclass(frozen=True)
class Kind:
  """A corpus: `mmvae prep NAME` (help, description, arguments, run) and `mmvae.prepare(NAME, out, **kwargs)`.

  add_arguments(parser, add_config): adds the subcommand's flags; add_config(parser) adds --config (default:
  `config`) where the flags should list it. run(args, config): prepares from the parsed arguments (config: the
  loaded ConfigDict, None when `config` is None). prepare(out=..., config=..., **kwargs) -> manifest.
  config: the default config whose input settings the corpus follows; None: the corpus reads no config.
  """
  name: str
  help: str
  add_arguments: Callable[[argparse.ArgumentParser, Callable], None]
  run: Callable[[argparse.Namespace, object], None]
  prepare: Callable[..., dict]
  config: str | None = None
  description: str | None = None


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> None:
  """Makes `mmvae prep KIND.NAME` and `mmvae.prepare(KIND.NAME, ...)` reach KIND in this process."""
  if not isinstance(kind, Kind) or not kind.name:
    raise ValueError(f"a corpus is registered as a corpora.Kind with a name, got {kind!r}")
  if _KINDS.get(kind.name, kind) is not kind:
    raise ValueError(f"corpus {kind.name!r} is already registered to {_KINDS[kind.name]!r}")
  _KINDS[kind.name] = kind


def _load_builtin() -> None:
  for module in BUILTIN.values():
    importlib.import_module(module)  # registers itself


def names() -> list[str]:
  """Every corpus: the built-in ones in their order, then those registered in this process."""
  _load_builtin()
  return [*BUILTIN, *(n for n in _KINDS if n not in BUILTIN)]


def kinds() -> list[Kind]:
  """Every registered Kind, in names() order."""
  return [_KINDS[n] for n in names()]


def get(name: str) -> Kind:
  """The corpus NAME; ValueError naming the known ones (and the closest) when there is none."""
  known = names()
  if name not in _KINDS:
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown corpus {name!r}; {hint}use one of {', '.join(known)}")
  return _KINDS[name]


# Arguments several corpora share.
OUT_HELP = "output folder for the prepared dataset and manifest.json"
WORKERS_HELP = "worker processes (default: 0, all cores)"


def add_beam(parser) -> None:
  """--beam and --beam-options (read by beam_options)."""
  parser.add_argument("--beam", action="store_true",
                      help="extract and write the shards on Apache Beam (pip install 'mmvae[beam]'); alone: the local "
                           "DirectRunner with 2 worker processes; the same dataset and fingerprint as without")
  parser.add_argument("--beam-options", default=None, metavar="OPTIONS",
                      help='Beam pipeline options, implying --beam, e.g. --beam-options="--runner=FlinkRunner '
                           '--flink_master=HOST:8081 --environment_type=PROCESS ..."; on a cluster, OUT\'s parent and '
                           "the corpus must be on a file system every worker mounts at the same path (default: none)")


BEAM_MISSING = "--beam needs Apache Beam: pip install 'mmvae[beam]'"


def beam_options(args) -> str | None:
  """None: prepare locally; else the Beam pipeline options ("" for the local default); checked before any work."""
  if not (args.beam or args.beam_options is not None):
    return None
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("apache_beam") is None:
    raise ValueError(BEAM_MISSING)
  return args.beam_options or ""  # "": beam_prep.DEFAULT_OPTIONS
