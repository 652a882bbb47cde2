"""Load experiment configs by name or `path.py[:variant]`, and apply `--config.a.b=value` overrides."""

import ast
import difflib
import importlib.util
import json
import pathlib
import traceback
from typing import Sequence

import ml_collections


def _experiments_dir() -> pathlib.Path:
  """The `experiments` package's folder (installed beside mmvae), located without importing it: it is data here."""
  spec = importlib.util.find_spec("experiments")
  if spec is None or not spec.submodule_search_locations:
    return pathlib.Path(__file__).resolve().parents[1] / "experiments"  # where a source checkout keeps it
  return pathlib.Path(list(spec.submodule_search_locations)[0])


EXPERIMENTS_DIR = _experiments_dir()
CONFIG_DIR = EXPERIMENTS_DIR / "configs"  # the built-in configs: experiments/configs/NAME.py


def available() -> list[str]:
  """Names of the built-in experiment configs."""
  return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common"))


def resolve(spec: str) -> tuple[pathlib.Path, str]:
  """'reference', 'reference:tiny', 'path/to/x.py' or 'path/to/x.py:tiny' -> (file, variant)."""
  path_part, _, variant = spec.partition(":")
  path = pathlib.Path(path_part)
  if path.suffix != ".py":
    path = CONFIG_DIR / f"{path_part}.py"
  if not path.is_file():
    raise FileNotFoundError(
        f"config {spec!r} not found (looked for {path}); use a file path or one of: {', '.join(available())}")
  return path, variant


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Builds the config of `spec` and applies overrides like 'train.batch_size=256'."""
  path, variant = resolve(spec)
  config = call_user_file(path, "config", "get_config", *([variant] if variant else []))
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"config {path}: get_config() must return an ml_collections.ConfigDict, got "
                     f"{type(config).__name__}")
  for item in overrides:
    apply_override(config, item)
  # Which per-modality keys the command line set: the trainer refuses those naming no modality of the run
  # (a config file may configure modalities of other datasets). Kept off the fields, so config.json is unchanged.
  touched = [k for k in (i.partition("=")[0].removeprefix("--").removeprefix("config.") for i in overrides)
             if k.rpartition(".")[0] in OPEN_SECTIONS]
  object.__setattr__(config, _OVERRIDDEN, tuple(touched))
  return config


def _where(path: pathlib.Path, e: BaseException) -> str:
  """'FILE:LINE' of the line of the user's file (else the innermost one) where `e` was raised."""
  if isinstance(e, SyntaxError) and e.filename:
    return f"{e.filename}:{e.lineno}"
  frames = traceback.extract_tb(e.__traceback__)
  own = [f for f in frames if pathlib.Path(f.filename).resolve() == path.resolve()]
  frame = (own or frames or [None])[-1]
  return f"{frame.filename}:{frame.lineno}" if frame else str(path)


def call_user_file(path: pathlib.Path, what: str, func: str, *args):
  """Runs `func(*args)` of the Python file `path`; any error in it is one ValueError naming the file and line.

  A config or sweep file is user code: its syntax errors, missing function and exceptions must reach the
  command line as one line saying where, not as a traceback from deep inside importlib.
  """
  module_spec = importlib.util.spec_from_file_location(f"mmvae_{what}_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 (user code raises anything)
    raise _user_error(path, what, e) from None
  if not callable(getattr(module, func, None)):
    raise ValueError(f"{what} {path} defines no {func}()")
  try:
    return getattr(module, func)(*args)
  except Exception as e:  # noqa: BLE001
    raise _user_error(path, what, e) from None


def _user_error(path: pathlib.Path, what: str, e: Exception) -> ValueError:
  msg = e.msg if isinstance(e, SyntaxError) else (e.args[0] if isinstance(e, KeyError) and e.args else str(e))
  # A ValueError is the file's own message (e.g. an unknown variant); other types say what broke.
  kind = "" if type(e) is ValueError else f"{type(e).__name__}: "
  return ValueError(f"{what} {_where(path, e)}: {kind}{msg}")


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string such as sharded or w2_gaussian


def keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every dotted key of `config`, e.g. 'train.batch_size'."""
  out = []
  for name, value in config.items():
    out += keys(value, f"{prefix}{name}.") if isinstance(value, ml_collections.ConfigDict) else [prefix + name]
  return out


def _did_you_mean(config: ml_collections.ConfigDict, key: str) -> str:
  """'did you mean X?' naming the closest existing key(s), or '' when none is close."""
  known = keys(config)
  parent, _, leaf = key.rpartition(".")
  close = [k for k in known if k.rpartition(".")[2] == leaf]  # the right name in another section
  siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
  close += [siblings[n] for n in difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)]  # a misspelt name
  close += difflib.get_close_matches(key, known, n=1, cutoff=0.8)  # a misspelt section
  close = list(dict.fromkeys(close))[:2]
  return f"did you mean {' or '.join(repr(k) for k in close)}?" if close else ""


# Sections keyed by modality name: an override may add a modality the defaults do not name.
OPEN_SECTIONS = ("model.encoders", "model.encoder_hidden", "model.upsample", "model.output", "loss.sigma")
_OVERRIDDEN = "_mmvae_modality_overrides"  # an attribute of a loaded config (not a field): its overridden such keys


def check_modality_keys(config: ml_collections.ConfigDict, modalities) -> None:
  """ValueError when a per-modality key (OPEN_SECTIONS) names no modality of the run, so it would be ignored.

  Refused: a display label (e.g. 'voice', how reports show 'audio'), from anywhere, and any key an override set
  (config.load records those). A key a config file sets for a modality this dataset lacks passes: experiment
  configs serve several datasets. A staged model's later stages (model.stages) count as the run's modalities.
  """
  from mmvae import display
  names = list(modalities)
  names += [n for stage in config.model.get("stages", ()) for n in stage if n not in names]
  overridden = set(getattr(config, _OVERRIDDEN, None) or ())
  shown_as = {label: name for name, label in display.VOICE_FACE.items() if label != name}
  for section in OPEN_SECTIONS:
    head, leaf = section.split(".")
    for key, value in (config[head].get(leaf) or {}).items():
      label_of = shown_as.get(key) if shown_as.get(key) in names else None
      if key in names or not (label_of or f"{section}.{key}" in overridden):
        continue
      hint = f" ('{key}' is how reports show '{label_of}': use --config.{section}.{label_of})" if label_of else ""
      raise ValueError(f"config.{section}.{key}={value!r} names no modality of this run, so it would be "
                       f"ignored{hint}; the run's modalities: {', '.join(names)}")


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """Sets one 'a.b.c=value' override; refuses unknown keys (naming the closest) and wrong types in one line."""
  key, sep, text = item.partition("=")
  key = key.removeprefix("--").removeprefix("config.")
  if not sep:
    raise ValueError(f"config override {item!r} must look like --config.{key}=VALUE")
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      hint = _did_you_mean(config, key) or f"top-level keys: {', '.join(sorted(config.keys()))}"
      raise KeyError(f"unknown config section {'.'.join(parents[:i + 1])!r} in override {item!r}; {hint}")
    node = node[part]
  if leaf not in node and ".".join(parents) in OPEN_SECTIONS:  # per-modality tables: any modality name ...
    if not difflib.get_close_matches(leaf, list(node.keys()), n=1, cutoff=0.75):  # ... that is not a typo
      node[leaf] = _parse_value(text)
      return
  if leaf not in node:
    hint = _did_you_mean(config, key) or f"known keys here: {', '.join(sorted(node.keys()))}"
    raise KeyError(f"unknown config key {key!r}; {hint}")
  value = _parse_value(text)
  from mmvae import config_schema
  if key in config_schema.INT_OR_AUTO:  # an integer or 'auto': trainer.check_config says which values work
    node[leaf] = config_schema.int_or_auto(value)
    return
  old = node[leaf]
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if old is not None and type(value) is not type(old):
    raise TypeError(f"config key {key!r} expects {type(old).__name__}, got {text!r}")
  node[leaf] = value


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """A JSON-friendly copy (tuples become lists)."""
  return config.to_dict()


def stored(path: pathlib.Path) -> dict:
  """The config a run's config.json holds; ValueError (one line) when an older mmvae wrote it.

  Older means it lacks a key of today's shared schema or of its own model kind's `default_config()` (the keys of
  kinds registered since do not count).
  """
  from mmvae import config_schema, zoo
  config = json.loads(pathlib.Path(path).read_text())
  have = flat(config)
  expected = flat(to_dict(config_schema.shared_config()))
  kind = config.get("model", {}).get("kind")
  if kind is not None:
    expected.update(flat(getattr(zoo.get(kind), "default_config", dict)()))
  missing = [k for k in expected if k not in have and k.rpartition(".")[0] not in OPEN_SECTIONS]
  if missing:
    raise ValueError(f"{path} was made by an older mmvae (it has no {', '.join(missing[:3])}"
                     f"{', ...' if len(missing) > 3 else ''}): train a new run with this version")
  return config


def flat(d: dict, prefix: str = "") -> dict:
  """{'a.b.c': value} of a nested dict."""
  out = {}
  for k, v in d.items():
    out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out

