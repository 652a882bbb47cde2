"""Temporal audio-visual embeddings on the lip-synced synthetic corpus (`mmvae prep synthetic --video`).

Two `sequence` modalities, voice frames (log-mel per 40 ms step) and face frames (25 fps), each through
a bidirectional GRU (mmvae/temporal.py); the contrastive kind aligns the clips (InfoNCE over the global
batch, positives of the same identity) and, step by step, the frames of each clip (the within-clip
sync InfoNCE, loss.sync_weight). `mmvae analyze` reports clip-level retrieval, frame-level retrieval and
synchronisation (sync.top1 over 13 offsets). Variants: ':tiny' (a few steps, for tests), ':pooled' (the
time-pooled baseline: the same model with per-step MLPs averaged over time, no temporal mixing).
"""

from experiments.configs import common, synthetic

NAMES = ("audio_frames", "face_frames")


def get_config(variant: str = ""):
  c = synthetic.get_config()
  c.name = "temporal"
  c.data.modalities = NAMES
  c.model.kind = "contrastive"
  c.model.encoders = {n: "gru" for n in NAMES}
  c.model.hidden = (256, 128)
  c.model.latent_dim = 64
  c.model.frame_windows = (1, 2, 4)
  c.loss.temperature = 0.1
  c.loss.infonce_positives = "identity"
  c.loss.sync_weight = 1.0
  c.train.batch_size = 32
  c.train.num_steps = 1500
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 100
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  if variant == "pooled":
    c.name = "temporal_pooled"
    c.model.encoders = {n: "pool" for n in NAMES}
  elif variant == "tiny":
    c.name = "temporal_tiny"
    c.model.hidden = (16,)
    c.model.latent_dim = 8
    common.tiny_training(c, batch_size=8, num_steps=6, every=3)
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of temporal.py; use '', 'tiny' or 'pooled'")
  return c
