"""Modalities are data: a prepared dataset declares each one (name, kind, shape, dtype); kinds are registered modules.

A manifest's `modalities` list holds one entry per modality, in order (the first is the anchor that
pairing is relative to):

  {"name": "audio", "kind": "spectrogram", "shape": [40], "dtype": "float32"}
  {"name": "face", "kind": "image", "shape": [K, S, S, C], "dtype": "uint8"}      K stored frames
  {"name": "text", "kind": "tokens", "shape": [L], "dtype": "int32", "vocab": [...]}

A modality kind is a module (or object) offering:

  ENCODERS: tuple of encoder choices (config.model.encoders[name]), the first the default
  model_shape(m) -> shape of one example as the model sees it
  frames(m) -> stored alternatives per example (an image's K frames; 1 otherwise)
  inputs(m, stored_N, frame_N) -> numpy model input of N examples (one chosen frame each)
  encoder(choice, m, model_cfg, dtype, rngs) -> module: x -> (mu_BxZ, logvar_BxZ)
  head(in_dim, m, decoder, model_cfg, dtype, rngs) -> module: h_BxH -> raw output
  activate(raw) -> the output of decode (an image's sigmoid; identity for most kinds)
  nll(output_B, target_B, log_sigma) -> -log p(target | output) per example, in nats
  to_data(output) -> decoded output in the stored value space (numpy: image pixels in [0, 1], token ids)
  augment(x_B, flip_B, train_cfg, keys_B) -> x_B  (train-time; flip_B is one fair coin per example, keys_B
                                                  one key per example for other draws)
  DEFAULT_SIGMA: the Gaussian likelihood scale, or None for a likelihood without one

and optionally (`optional(m, name)` falls back to mmvae/modalities/base.py):

  classifier_features(m, data_N) -> float [N, D]   what the coherence classifier sees (default: values flattened)
  to_text(m, data_one) -> str                     a text kind's example as words (default None: not text)
  SHOWS_ATTRIBUTES: whether coherence also scores generated data for identity attributes (default False; image True)
  FIGURE: the generation figure of a target modality: 'image_grid', 'spectra' (analysis/generation_figures.PLOTS)
          or a callable like plot_image_grid; None (default): no figure

Train-time augmentation reads its own train.* options (image: train.face_flip, face_crop_scale, face_blur,
face_color_jitter; points: train.rotate_points);
the trainer calls every kind's augment, so a kind's augmentation needs no other registration.

Register a new kind with `modalities.register(kind, module)`; the model zoo, the reader, the
trainer and analysis reach modalities only through these functions, so they never name one.
"""

import dataclasses

from mmvae import registry

_BUILTIN = {k: f"mmvae.modalities.{k}" for k in ("spectrogram", "image", "vector", "tokens", "video", "points", "sequence")}
_FUNCTIONS = ("model_shape", "frames", "inputs", "encoder", "head", "activate", "nll", "to_data", "augment")
_REGISTRY = registry.Registry("modality kind", "a manifest's modality kind", _BUILTIN, _FUNCTIONS)


register = _REGISTRY.register  # register(kind, module): makes `kind` usable in manifests
kinds = _REGISTRY.names  # every known modality kind
get = _REGISTRY.get  # the module of a kind; ValueError naming the known kinds when there is none


@dataclasses.dataclass(frozen=True)
class Modality:
  """One declared modality: name, kind, stored per-example shape and dtype, and kind-specific extras (vocab)."""

  name: str
  kind: str
  shape: tuple[int, ...]
  dtype: str
  extra: tuple = ()  # sorted (key, value) pairs, so the spec stays hashable (a static jit argument)

  @property
  def kind_module(self):
    return get(self.kind)

  @property
  def model_shape(self) -> tuple[int, ...]:
    return tuple(int(d) for d in self.kind_module.model_shape(self))

  @property
  def frames(self) -> int:
    return int(self.kind_module.frames(self))

  @property
  def frames_are_views(self) -> bool:
    """Whether the stored frames are augmented views of frame 0 (manifest `"views": true`), not real alternatives:
    evaluation then encodes frame 0 only."""
    return bool(self.get("views", False))

  def get(self, key: str, default=None):
    return dict(self.extra).get(key, default)

  def to_dict(self) -> dict:
    return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "dtype": self.dtype,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in self.extra}}


OUTPUTS = ("default", "linear")  # config.model.output.NAME


def linear_outputs(specs: dict, model_cfg) -> tuple:
  """Names of the modalities whose decoder outputs are the head's raw values (config.model.output.NAME='linear');
  the others go through their kind's `activate`. () for a config written before the key existed."""
  table = model_cfg.get("output") or {}
  for name, choice in table.items():
    if choice not in OUTPUTS:
      raise ValueError(f"config.model.output.{name}={choice!r} is not supported; use one of {', '.join(OUTPUTS)}")
  return tuple(name for name in specs if table.get(name, "default") == "linear")


def decoded(m: Modality, raw, linear: tuple):
  """A decoder's output for modality m from its head's values `raw`: as they are when m is among `linear`
  (linear_outputs), else through its kind's `activate`."""
  return raw if m.name in linear else m.kind_module.activate(raw)


def optional(m: Modality, name: str):
  """Modality m's kind's optional hook or constant `name`, else the default of mmvae/modalities/base.py."""
  from mmvae.modalities import base
  return getattr(m.kind_module, name, getattr(base, name))


def from_dict(d: dict) -> Modality:
  """A Modality from its manifest entry (unknown kinds fail here, with the known ones named)."""
  missing = [k for k in ("name", "kind", "shape", "dtype") if k not in d]
  if missing:
    raise ValueError(f"a manifest modality needs name, kind, shape and dtype; {d!r} lacks {missing}")
  get(d["kind"])
  extra = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()
                       if k not in ("name", "kind", "shape", "dtype")))
  return Modality(str(d["name"]), str(d["kind"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]), extra)


def of_manifest(manifest: dict) -> tuple[Modality, ...]:
  """The dataset's modalities in order (its `modalities` list); ValueError when an older mmvae prepared it."""
  if not manifest.get("modalities"):
    raise ValueError("the dataset was made by an older mmvae (its manifest.json declares no modalities): "
                     "re-run prep")
  return tuple(from_dict(d) for d in manifest["modalities"])


def specs(input_shapes: dict) -> dict[str, Modality]:
  """{name: Modality} from a dict of Modality values or of their manifest entries (without the name)."""
  out = {}
  for name, value in input_shapes.items():
    if isinstance(value, Modality):
      out[name] = value
    elif isinstance(value, dict):
      out[name] = from_dict({"name": name, **value})
    else:
      raise ValueError(f"modality {name!r} is given only a shape {tuple(value)}; give its manifest entry "
                       "(name, kind, shape, dtype) so its kind is known")
  return out


def selected(all_modalities, names) -> tuple[Modality, ...]:
  """The modalities a run uses (config.data.modalities; empty = all), in the dataset's order."""
  names = tuple(names or ())
  known = [m.name for m in all_modalities]
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"config.data.modalities names {unknown}, which the dataset does not have (it has {known})")
  chosen = tuple(m for m in all_modalities if not names or m.name in names)
  if len(chosen) < 2:
    raise ValueError(f"a run needs at least 2 modalities, config.data.modalities selects {[m.name for m in chosen]}")
  return chosen


def encoder_choice(model_cfg, m: Modality) -> str:
  """config.model.encoders[m.name], else the kind's default; ValueError naming the choices when unknown."""
  kind = m.kind_module
  choices = model_cfg.get("encoders", {}) or {}
  choice = choices.get(m.name, kind.ENCODERS[0])
  if m.name == (model_cfg.get("frozen_target", "") or ""):
    if "frozen" not in kind.ENCODERS:
      raise ValueError(f"config.model.frozen_target={m.name!r} is a {m.kind!r} modality; a frozen target must be "
                       "a precomputed 'vector' or 'sequence' modality")
    return "frozen"
  if choice not in kind.ENCODERS:
    raise ValueError(f"config.model.encoders.{m.name}={choice!r} is not an encoder of the {m.kind!r} kind; "
                     f"use one of {kind.ENCODERS}")
  return choice


def encoder_hidden(model_cfg, m: Modality) -> tuple[int, ...]:
  """The MLP widths of m's encoder: config.model.encoder_hidden[m.name], else config.model.hidden."""
  table = model_cfg.get("encoder_hidden", {}) or {}
  widths = tuple(int(w) for w in (table[m.name] if m.name in table else model_cfg.hidden))
  if not widths or min(widths) < 1:
    key = f"encoder_hidden.{m.name}" if m.name in table else "hidden"
    raise ValueError(f"config.model.{key}={widths} needs at least one width, each >= 1")
  return widths


def sigma(loss_cfg, m: Modality) -> float | None:
  """The initial Gaussian scale of a modality: config.loss.sigma[name], else its kind's default (None: no scale)."""
  default = getattr(m.kind_module, "DEFAULT_SIGMA", None)
  if default is None:
    return None
  table = loss_cfg.get("sigma", {}) or {}
  return float(table[m.name]) if m.name in table else float(default)
