"""`mmvae generate face`: the image a trained run decodes from one WAV file's audio features.

The source is the run's first spectrogram modality, the target its first image modality (on a
VoxCeleb-style run: a face from a voice); the WAV goes through the very feature pipeline (and the
dataset's normalisation) that prepared the training data.
"""

import pathlib

import numpy as np

from mmvae.analysis import generation_figures


def voice_features(wav, data_cfg, manifest: dict, seed: int = 0) -> np.ndarray:
  """One WAV -> the model's audio input: centred crop, data_prep features (dither seeded), dataset normalisation."""
  from data_prep import audio
  feats = audio.utterance_features(str(wav), data_cfg, train=False, rng=np.random.default_rng(seed))
  norm = manifest.get("audio_normalisation")
  if data_cfg.time_average and norm:
    feats = audio.apply_normalisation(feats, norm)  # the very transform preparation applied
  return np.asarray(feats, np.float32)


def _from_wav(m) -> bool:
  """A modality prep computes from the WAV: a spectrogram, or pooled audio stored as augmented views."""
  return m.kind == "spectrogram" or m.frames_are_views


def source_and_target(specs: dict, workdir) -> tuple[str, str]:
  """(first spectrogram modality, first image modality) of a run; ValueError naming what it has otherwise."""
  first = {"spectrogram": next((n for n, m in specs.items() if _from_wav(m)), None),
           "image": next((n for n, m in specs.items() if m.kind == "image"), None)}
  if None in first.values():
    have = ", ".join(f"{n} ({m.kind})" for n, m in specs.items())
    raise ValueError(f"{workdir} has no {'spectrogram' if first['spectrogram'] is None else 'image'} modality "
                     f"(it has {have}); `mmvae generate face` decodes an image from a WAV's spectrogram")
  return first["spectrogram"], first["image"]


def generate_face_from_wav(workdir, wav, out, scale: int = 4, which: str = "best") -> np.ndarray:
  """Writes the image a trained run generates for one WAV file, enlarged `scale` times pixel for pixel, with its
  `which` checkpoint ('best' or 'last'), and says so in one line; returns the image as float [S, S, C]."""
  from PIL import Image

  from mmvae import display, zoo
  from mmvae.train import checkpoints
  if not pathlib.Path(wav).is_file():
    raise FileNotFoundError(f"WAV file {wav} not found")
  Image.init()
  if pathlib.Path(out).is_dir() or pathlib.Path(out).suffix.lower() not in Image.registered_extensions():
    raise ValueError(f"--out {out} must name an image file such as face.png"
                     f"{' (it is a folder)' if pathlib.Path(out).is_dir() else ''}")
  model, config, _, step = checkpoints.load_run(workdir, which=which, return_step=True)
  dataset = checkpoints.dataset_of_run(workdir)
  specs = dataset.modalities(config.data.get("modalities", ()))
  source, target = source_and_target(specs, workdir)
  if not model.can_generate:
    raise ValueError(f"{workdir} holds a model of kind {zoo.kind_of(config)!r}, which cannot generate (it has no "
                     "decoder); generate with a run of a generative kind")
  x = voice_features(wav, config.data, dataset.manifest)[None]
  mu, _ = model.encode(source, x)
  image = specs[target].kind_module.to_data(model.decode(mu)[target])[0]
  generation_figures.save_image_png(image, out, scale)
  shown = display.display_labels(specs)
  height, width = image.shape[0] * scale, image.shape[1] * scale
  why = f" ({step.why})" if step.why else ""
  print(f"mmvae generate: {shown[target]} from the {shown[source]} in {wav} -> {out} ({width}x{height} px: the "
        f"{image.shape[1]}x{image.shape[0]} {shown[target]} enlarged {scale}x), {step.which} checkpoint (step "
        f"{int(step)}){why} of {workdir}", flush=True)
  return image
