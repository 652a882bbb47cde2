"""VoxCeleb1 with pretrained encoders (issue 26): GE2E speaker d-vectors and dlib face descriptors as modalities.

The dataset is the `voxceleb1` one with the pretrained embeddings joined by example id (README, "Pretrained
encoders, offline"):

  mmvae prep voxceleb1 --root RAW --out data/vox1 --config voxceleb1
  mmvae extract ge2e --root RAW --out runs/ge2e.npz
  mmvae extract dlib_face --root RAW --out runs/dlib.npz
  mmvae prep features --join data/vox1 --embeddings runs/ge2e.npz --name ge2e --out data/vox1-ge2e
  mmvae prep features --join data/vox1-ge2e --embeddings runs/dlib.npz --name dlib_face --out data/vox1-pre

Variants (all read the joined dataset; its `audio` is voxceleb1's MFCC statistics and `face` its 32x32 RGB frames):
  ''         the GE2E voice (a 256-d `vector`) and the face as pixels, MS-VAE with voxceleb1:aligned's settings: the
             shared decoder still draws a face from a voice (`mmvae generate`, coherence).
  'dlib'     GE2E and dlib vectors (128-d): both spaces pretrained; the MS-VAE aligns them (no pixels to draw).
  'adapter'  the MFCC voice trained into the frozen dlib face space (`model.frozen_target=dlib_face`, contrastive,
             latent 128): only the voice encoder learns, as WavCLIP / AudioCLIP do into CLIP's space.
  'tiny'     '' with a tiny model and 4 steps, for tests ('dlib_tiny', 'adapter_tiny' likewise).
Both networks were trained on data that overlaps VoxCeleb1 (GE2E on VoxCeleb1 dev; dlib on VGG faces, from which
VoxCeleb1's identities were drawn): numbers on VoxCeleb1 with them are not open-set claims.
"""

from experiments.configs import common
from experiments.configs import voxceleb1

VOICE, FACE = "ge2e", "dlib_face"  # the names `prep features --join --name` gives the embeddings
VARIANTS = ("", "dlib", "adapter")


def get_config(variant: str = ""):
  base, tiny = common.split_variant("voxceleb1_pretrained.py", variant, VARIANTS)
  # The settings its README rows were measured with (`voxceleb1:aligned`); the prepared features are `voxceleb1`'s.
  c = voxceleb1.get_config("aligned")
  c.name = "voxceleb1_pretrained" + (f"_{base}" if base else "")
  if base == "":
    c.data.modalities = ("face", VOICE)
  elif base == "dlib":
    c.data.modalities = (VOICE, FACE)
  else:
    c.data.modalities = ("audio", FACE)
    c.model.kind = "contrastive"
    c.model.frozen_target = FACE
    c.model.latent_dim = 128  # the width of the dlib space the voice is trained into
    c.loss.identity_weight = 0.0  # InfoNCE into the frozen space alone
  if tiny:
    c.name += "_tiny"
    c.model.hidden = (32, 16)
    if base != "adapter":
      c.model.latent_dim = 8
    common.tiny_training(c, batch_size=8, num_steps=4, every=2)
  return c
