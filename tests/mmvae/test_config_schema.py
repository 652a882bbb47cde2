"""The config schema in the library: a model kind brings its own keys, and the library never imports experiments."""

import pathlib
import re

import pytest

from mmvae import config as config_lib
from mmvae import config_schema, zoo


class _ToyKind:
  """A kind that reads one key of its own (nothing is built or trained here)."""

  def __init__(self, keys: dict):
    self.keys = keys

  def build(self, config, specs, seed, num_classes):
    raise NotImplementedError

  def loss(self, model, batch, example_keys_B, step_key, step, loss_cfg, axis_name):
    raise NotImplementedError

  def check_config(self, config) -> None:
    pass

  def default_config(self) -> dict:
    return {"loss": self.keys}


@pytest.fixture
def registry():
  """The model registry after the test: the toy kinds registered here removed, so other tests' configs are left
  alone. A built-in kind first imported meanwhile stays registered: its module registers itself only once, so
  restoring a copy of the entries would lose it ('mcvs' is unknown) for every later test of the process."""
  entries = zoo._REGISTRY.entries  # pylint: disable=protected-access
  before = set(entries)
  yield
  for name in set(entries) - before - set(zoo._REGISTRY.builtin):  # pylint: disable=protected-access
    del entries[name]


def test_a_registered_kind_adds_its_own_overridable_key(registry):  # pylint: disable=redefined-outer-name,unused-argument
  with pytest.raises(KeyError, match="toy_weight"):
    config_lib.load("synthetic:tiny", ["model.kind=toy_keys", "loss.toy_weight=2"])
  zoo.register("toy_keys", _ToyKind({"toy_weight": 0.5}))
  assert config_schema.base_config().loss.toy_weight == 0.5
  cfg = config_lib.load("synthetic:tiny", ["model.kind=toy_keys", "loss.toy_weight=2"])
  assert cfg.loss.toy_weight == 2.0 and isinstance(cfg.loss.toy_weight, float)
  # Another kind giving a key of the schema (msvae's loss.wasserstein) another default is refused, naming both.
  zoo.register("toy_clash", _ToyKind({"wasserstein": "sliced"}))
  with pytest.raises(ValueError, match=r"config\.loss\.wasserstein .*'msvae'|'msvae'.*config\.loss\.wasserstein"):
    config_schema.base_config()


def test_the_library_never_imports_experiments():
  library = pathlib.Path(config_schema.__file__).parent
  importing = [str(p) for p in library.rglob("*.py")
               if re.search(r"^\s*(import experiments|from experiments[ .])", p.read_text(), re.M)]
  assert importing == []
  assert (config_lib.CONFIG_DIR / "synthetic.py").is_file()  # located as data, not imported
