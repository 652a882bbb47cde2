"""Encoding a split, cross generation (faces from voices, spectra from faces), and their figures."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmvae import inference, modalities  # noqa: E402

DPI = 120
BATCH = inference.BATCH


def _decoder(model):
  from flax import nnx

  @nnx.jit
  def decode(m, z):
    return m.decode(z)

  return lambda z: decode(model, z)


def cross_generate(model, latents: dict, batch_size: int = BATCH) -> dict:
  """Decodes each example's voice and face posterior means into both modalities."""
  decode = _decoder(model)
  from_voice = inference.batched(decode, np.asarray(latents["audio_mu"], np.float32), batch_size, "decode voices")
  from_face = inference.batched(decode, np.asarray(latents["face_mu"], np.float32), batch_size, "decode faces")
  return {"face_from_voice": from_voice[modalities.FACE], "audio_from_voice": from_voice[modalities.AUDIO],
          "face_from_face": from_face[modalities.FACE], "audio_from_face": from_face[modalities.AUDIO]}


def _show(ax, img):
  img = np.asarray(img, np.float32)
  img = img / 255.0 if img.max() > 1.5 else img
  if img.ndim == 3 and img.shape[-1] == 1:
    ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
  else:
    ax.imshow(np.clip(img, 0, 1))
  ax.set_xticks([])
  ax.set_yticks([])


def select_identities(labels, max_identities: int) -> np.ndarray:
  """The first identities in label order (deterministic), at most max_identities."""
  return np.unique(np.asarray(labels))[:max_identities]


def plot_face_grid(path, real_faces, recon_faces, voice_faces, labels, names: dict, voices: int = 4,
                   max_identities: int = 12) -> None:
  """Per identity: a real face, its reconstruction from the face latent, faces from its voices."""
  labels = np.asarray(labels)
  ids = select_identities(labels, max_identities)
  cols = 2 + voices
  fig, axes = plt.subplots(len(ids), cols, figsize=(1.3 * cols + 1.6, 1.35 * len(ids) + 0.6), squeeze=False)
  for r, i in enumerate(ids):
    rows = np.flatnonzero(labels == i)
    _show(axes[r, 0], real_faces[rows[0]][0])
    _show(axes[r, 1], recon_faces[rows[0]])
    for c in range(voices):
      if c < len(rows):
        _show(axes[r, 2 + c], voice_faces[rows[c]])
      else:
        axes[r, 2 + c].axis("off")
    axes[r, 0].set_ylabel(str(names.get(int(i), i))[:14], fontsize=8, rotation=0, ha="right", va="center")
  for c, title in enumerate(["real", "from face"] + [f"from voice {k + 1}" for k in range(voices)]):
    axes[0, c].set_title(title, fontsize=8)
  fig.suptitle("Faces generated from voices (per row: one identity; voices from different utterances)")
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def plot_spectra(path, audio_real, audio_from_face, audio_from_voice, labels, names: dict,
                 max_identities: int = 6) -> None:
  """Audio generated from faces next to the real and the voice-reconstructed audio, per identity."""
  labels = np.asarray(labels)
  ids = select_identities(labels, max_identities)
  vector = np.asarray(audio_real).ndim == 2
  fig, axes = plt.subplots(len(ids), 1 if vector else 3, figsize=(9 if vector else 10, 1.9 * len(ids) + 0.6),
                           squeeze=False)
  for r, i in enumerate(ids):
    rows = np.flatnonzero(labels == i)
    name = str(names.get(int(i), i))
    if vector:  # time-averaged spectra: identity means as curves over frequency bins
      ax = axes[r, 0]
      ax.plot(np.mean(audio_real[rows], 0), label="real (mean)", lw=1)
      ax.plot(np.mean(audio_from_voice[rows], 0), label="from voice", lw=1)
      ax.plot(np.mean(audio_from_face[rows], 0), label="from face", lw=1.5)
      ax.set_ylabel("normalised\nmagnitude", fontsize=7)
      ax.set_title(name, fontsize=8)
      if r == 0:
        ax.legend(fontsize=7, ncol=3)
      if r == len(ids) - 1:
        ax.set_xlabel("frequency bin")
    else:
      for c, (title, spec) in enumerate((("real", audio_real), ("from voice", audio_from_voice),
                                         ("from face", audio_from_face))):
        ax = axes[r, c]
        ax.imshow(np.asarray(spec[rows[0]]).T, origin="lower", aspect="auto", cmap="magma")
        ax.set_title(f"{name}: {title}", fontsize=8)
        ax.set_xlabel("frame")
        ax.set_ylabel("bin")
  fig.suptitle("Spectra generated from faces")
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def save_face_png(face_SxSxC, out, scale: int = 4) -> None:
  """A float [0, 1] face as a PNG, enlarged `scale` times with nearest-neighbour pixels."""
  from PIL import Image
  img = np.clip(np.asarray(face_SxSxC, np.float32), 0, 1)
  img = (img * 255 + 0.5).astype(np.uint8)
  img = img[..., 0] if img.shape[-1] == 1 else img
  img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(img).save(out)


def voice_features(wav, data_cfg, manifest: dict, seed: int = 0) -> np.ndarray:
  """One WAV -> the model's audio input: centred crop, data_prep features (dither seeded), dataset normalisation."""
  from data_prep import audio
  feats = audio.utterance_features(str(wav), data_cfg, train=False, rng=np.random.default_rng(seed))
  norm = manifest.get("audio_normalisation")
  if data_cfg.time_average and norm:
    feats = audio.apply_normalisation(feats, norm)  # the very transform preparation applied
  return np.asarray(feats, np.float32)


def generate_face_from_wav(workdir, wav, out, scale: int = 4) -> np.ndarray:
  """Writes the face a trained run generates for one WAV file; returns it as float [S, S, C]."""
  from PIL import Image

  from mmvae import zoo
  from mmvae.train import checkpoints
  if not pathlib.Path(wav).is_file():
    raise FileNotFoundError(f"WAV file {wav} not found")
  Image.init()
  if pathlib.Path(out).is_dir() or pathlib.Path(out).suffix.lower() not in Image.registered_extensions():
    raise ValueError(f"--out {out} must name an image file such as face.png"
                     f"{' (it is a folder)' if pathlib.Path(out).is_dir() else ''}")
  model, config, _ = checkpoints.load_run(workdir)
  if not model.can_generate:
    raise ValueError(f"{workdir} holds a model of kind {zoo.kind_of(config)!r}, which cannot generate (it has no "
                     "decoder); generate with a run of a generative kind")
  manifest = checkpoints.dataset_of_run(workdir).manifest
  x = voice_features(wav, config.data, manifest)[None]
  mu, _ = model.encode(modalities.AUDIO, x)
  face = np.asarray(model.decode(mu)[modalities.FACE])[0]
  save_face_png(face, out, scale)
  return face
