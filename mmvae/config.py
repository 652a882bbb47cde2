"""Load experiment configs by name or `path.py[:variant]`, and apply `--config.a.b=value` overrides."""

import ast
import importlib.util
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


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """Sets one 'a.b.c=value' override, refusing unknown keys and wrong types with a clear message."""
  key, sep, text = item.partition("=")
  key = key.removeprefix("--").removeprefix("config.")
  if not sep:
    raise ValueError(f"config override {item!r} must look like --config.{key}=VALUE")
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise KeyError(f"unknown config section {'.'.join(parents[:i + 1])!r} in override {item!r}")
    node = node[part]
  if leaf not in node:
    raise KeyError(f"unknown config key {key!r}; known keys here: {', '.join(sorted(node.keys()))}")
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
