"""A name -> module registry with lazily imported built-ins: model kinds (mmvae.zoo) and modality kinds (mmvae.modalities)."""

import difflib
import importlib


class Registry:
  """Entries that must offer `functions`; built-ins import (and register themselves) on first `get`."""

  def __init__(self, what: str, config_key: str, builtin: dict[str, str], functions: tuple[str, ...]):
    self.what, self.config_key, self.builtin, self.functions = what, config_key, dict(builtin), functions
    self.entries: dict = {}

  def register(self, name: str, module_or_object) -> None:
    """Makes `name` name `module_or_object`, which must offer every function of the registry."""
    if not isinstance(name, str) or not name:
      raise ValueError(f"a {self.what} is a non-empty string, got {name!r}")
    missing = [f for f in self.functions if not callable(getattr(module_or_object, f, None))]
    if missing:
      raise ValueError(f"{self.what} {name!r} lacks {', '.join(missing)}; a {self.what} offers "
                       f"{', '.join(self.functions)}")
    if self.entries.get(name, module_or_object) is not module_or_object:
      raise ValueError(f"{self.what} {name!r} is already registered to {self.entries[name]!r}")
    self.entries[name] = module_or_object

  def names(self) -> list[str]:
    """Every known name: the built-in ones and those registered in this process."""
    return sorted(set(self.builtin) | set(self.entries))

  def get(self, name: str):
    """The entry; ValueError naming the known ones (and the closest) when there is none."""
    if name not in self.entries and name in self.builtin:
      import jax
      # The first get may come from inside a traced step; module-level constants (jnp) must stay concrete.
      with jax.ensure_compile_time_eval():
        importlib.import_module(self.builtin[name])  # registers itself
    if name not in self.entries:
      close = difflib.get_close_matches(str(name), self.names(), n=1)
      hint = f"did you mean {close[0]!r}? " if close else ""
      raise ValueError(f"{self.config_key}={name!r} is unknown; {hint}known {self.what}s: {', '.join(self.names())}")
    return self.entries[name]
