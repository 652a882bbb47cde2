"""Modality names: the keys of every batch, model output and latent dictionary."""

AUDIO = "audio"
FACE = "face"
MODALITIES = (AUDIO, FACE)
