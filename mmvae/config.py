"""Load experiment configs by name or `path.py[:variant]`, and apply `--config.a.b=value` overrides."""

import ast
import difflib
import importlib.util
import json
import pathlib
from typing import Sequence

import ml_collections

import experiments

CONFIG_DIR = pathlib.Path(experiments.__file__).parent / "configs"


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
  module_spec = importlib.util.spec_from_file_location(f"mmvae_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant) if variant else module.get_config()
  for item in overrides:
    apply_override(config, item)
  return config


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
OPEN_SECTIONS = ("model.encoders", "model.encoder_hidden", "loss.sigma")


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


# Keys renamed since a run's config.json was written: old key -> new key.
RENAMED = {"model.audio_encoder": "model.encoders.audio", "model.face_encoder": "model.encoders.face"}


def upgraded(old: dict, new: dict) -> dict:
  """A flat old config as today's code reads it: renamed keys moved, keys added since then at their defaults.

  A key the old run lacks means the behaviour from before the key existed, which is its default, so a
  resume with that default is no config change (model.kind -> 'msvae', data.modalities -> all, ...).
  """
  from experiments.configs import common
  defaults = flat(json.loads(json.dumps(to_dict(common.base_config()))))  # as JSON has it: tuples are lists
  out = {RENAMED.get(k, k): v for k, v in old.items()}
  for key in new:
    if key not in out and key in defaults:
      out[key] = defaults[key]
  return out


def flat(d: dict, prefix: str = "") -> dict:
  """{'a.b.c': value} of a nested dict."""
  out = {}
  for k, v in d.items():
    out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out

