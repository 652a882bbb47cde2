"""The model registry: `config.model.kind` names an entry, and every stage reaches the model through it.

A model kind is a module (or any object) with three functions:

  build(config, specs, seed, num_classes) -> nnx.Module
      specs: {modality name: Modality} as the dataset declares them; num_classes: training
      identities (for optional identity heads). Parameters should start from `models.init_module(build, seed)`.
  loss(model, batch, example_keys_B, step_key, step, loss_cfg, axis_name) -> (total, {name: scalar})
      A pure function of one (device-local) batch {modality: x, 'label': ...}; `example_keys_B`
      give each example its own noise, `step_key` is shared by the step; a term over the whole
      batch gathers it with `losses.gather(x, axis_name)` so 1 and 4 devices agree. The metrics
      must hold 'loss'.
  check_config(config) -> None
      Raises ValueError naming the config key to change.

and optionally

  default_config() -> {section: {key: default}}
      The config keys only this kind reads; mmvae.config_schema.base_config merges every registered
      kind's into the schema, so `--config.loss.KEY=...` works once the kind is registered.
  stages(config, names) -> [tuple of modality names]
      A staged kind (protocol Staged): `mmvae train` trains one stage after another.

and the module `build` returns offers:

  encode(modality, x_Bx...) -> (mu_BxZ, logvar_BxZ)   the posterior of one modality
  can_generate: bool                                  whether decode exists
  decode(z_BxZ) -> {modality: output}                 when can_generate

and optionally the abilities declared below as protocols (Trainable, JointPosterior, FrameModalities,
LogSigmas); callers test `isinstance(model, zoo.JointPosterior)`, never the member's name.

Registering makes a kind usable by `mmvae train --config.model.kind=NAME` in this process:

  from mmvae import zoo
  zoo.register("mine", my_module)

The trainer, the parallel runner, checkpoints (`load_run` rebuilds a run's kind from its
config.json), inference and analysis only call these, so they never name a model.
"""

from typing import Protocol, runtime_checkable

from mmvae import registry

# Built-in kinds import on first use, so `import mmvae` stays free of JAX.
_BUILTIN = {k: f"mmvae.zoo.{k}" for k in ("msvae", "contrastive", "mvae", "mmvae", "mopoe", "mcvs")}
_REGISTRY = registry.Registry("model kind", "config.model.kind", _BUILTIN, ("build", "loss", "check_config"))


@runtime_checkable
class Model(Protocol):
  """What a built model offers the trainer, inference and analysis."""

  can_generate: bool

  def encode(self, modality: str, x) -> tuple:
    """(mu_BxZ, logvar_BxZ) of q(z | x) for one modality."""


@runtime_checkable
class ModelKind(Protocol):
  """What a registered kind offers: a builder, a loss and a config check."""

  def build(self, config, specs: dict, seed: int, num_classes: int) -> Model:
    """The initialised model for the config and the modalities {name: Modality}."""

  def loss(self, model, batch: dict, example_keys_B, step_key, step, loss_cfg, axis_name) -> tuple:
    """(total loss, {name: scalar}) of one batch."""

  def check_config(self, config) -> None:
    """Raises ValueError naming the key to change when the config is unusable."""


# Optional abilities: a kind or model offers one by having the member; callers test `isinstance(x, Ability)`.
@runtime_checkable
class Staged(Protocol):
  """A kind trained stage by stage (`mmvae train` runs its plan unless config.model.stage picks one)."""

  def stages(self, config, names) -> list:
    """The plan: one tuple of modality names per stage."""


@runtime_checkable
class Trainable(Protocol):
  """A model that trains only some parameters (a staged model); the others get no update."""

  def trainable(self, name: str) -> bool:
    """Whether the parameter of this dotted checkpoint name trains."""


@runtime_checkable
class JointPosterior(Protocol):
  """A model with a posterior given every modality (importance-weighted likelihood samples from it)."""

  def joint_posterior(self, inputs: dict) -> tuple:
    """(mu_BxZ, logvar_BxZ) of q(z | all of inputs)."""


@runtime_checkable
class FrameModalities(Protocol):
  """A model with temporal encoders: sync and frame retrieval compare its per-frame latents."""

  def frame_modalities(self) -> tuple:
    """The names of the modalities it encodes frame by frame."""


@runtime_checkable
class LogSigmas(Protocol):
  """A model whose Gaussian likelihood scales live elsewhere than the MS-VAE decoder's."""

  def log_sigmas(self, loss_cfg) -> dict:
    """{modality: log sigma}."""


def register(kind: str, module_or_object) -> None:
  """Makes `kind` name `module_or_object` (it must offer build, loss and check_config; see ModelKind)."""
  _REGISTRY.register(kind, module_or_object)


def kinds() -> list[str]:
  """Every known kind: the built-in ones and those registered in this process."""
  return _REGISTRY.names()


def get(kind: str):
  """The registered kind; ValueError naming the known kinds (and the closest) when there is none."""
  return _REGISTRY.get(kind)


def kind_of(config) -> str:
  """config.model.kind."""
  return config.model.kind


def of(config):
  """The kind `config` names."""
  return get(kind_of(config))
