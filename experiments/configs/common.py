"""Defaults shared by every experiment config; each config file edits a copy."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Every key any stage reads, with the reference experiment's values."""
  c = ml_collections.ConfigDict()
  c.name = "base"

  # Input settings: `mmvae prep --config NAME` prepares data with these, and training
  # checks that the prepared dataset matches them.
  c.data = ml_collections.ConfigDict()
  c.data.sample_rate = 16000
  c.data.segment_samples = 47760  # ~3 s: 297 frames of 25 ms with a 10 ms hop
  c.data.window_ms = 25.0
  c.data.hop_ms = 10.0
  c.data.n_fft = 1024
  c.data.n_bins = 512
  c.data.magnitude = "linear"  # 'linear' (VGGVox) or 'log' (log1p of the magnitude)
  c.data.time_average = True  # [T, F] -> [F]; see data_prep/audio.py for the normalisation order
  c.data.dither = 1.0  # dither amplitude relative to VGGVox's 1e-6 * std scale
  c.data.short_clips = "pad"  # 'pad' (zero-pad to the segment) or 'skip'
  c.data.face_size = 23
  c.data.grayscale = True
  c.data.frames_per_utterance = 1
  c.data.seed = 0  # train-crop and dither generator seed at preparation time

  c.model = ml_collections.ConfigDict()
  c.model.latent_dim = 100
  c.model.audio_encoder = "mlp"  # 'mlp' or 'conv'
  c.model.face_encoder = "mlp"  # 'mlp' or 'conv'
  c.model.decoder = "mlp"  # 'mlp' or 'conv'
  c.model.hidden = (512, 256)  # MLP widths (encoder order; the decoder mirrors them)
  c.model.conv_channels = (32, 64, 128, 256)
  c.model.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16'

  c.loss = ml_collections.ConfigDict()
  c.loss.wasserstein = "w2_gaussian"  # 'w2_gaussian' | 'sample_l2' | 'sliced'
  c.loss.self_recon_weight = 1.0
  c.loss.cross_recon_weight = 1.0
  c.loss.kl_weight = 1.0
  c.loss.wasserstein_weight = 1.0
  c.loss.kl_anneal_steps = 0  # linear KL warm-up from 0 to kl_weight; 0 = off
  c.loss.sliced_projections = 64

  c.train = ml_collections.ConfigDict()
  c.train.seed = 0
  c.train.batch_size = 64  # global, over all devices and hosts
  c.train.num_steps = 1000
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 100
  c.train.lr_schedule = "cosine"  # 'cosine' or 'constant'
  c.train.grad_clip = 1.0
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.prefetch = 2

  c.parallel = "pmap"  # 'pmap' or 'sharded' (jit + NamedSharding)

  c.analysis = ml_collections.ConfigDict()
  c.analysis.split = "test"
  c.analysis.dbscan_eps = -1.0  # <= 0: choose by the k-distance knee
  c.analysis.dbscan_min_samples = 3
  c.analysis.tsne_perplexity = -1.0  # <= 0: adapt to the set size
  c.analysis.seed = 0
  return c


def tiny_training(c: ml_collections.ConfigDict, batch_size: int, num_steps: int, every: int) -> None:
  """The training settings every `:tiny` variant shares: a few steps, logging and saving often."""
  c.train.batch_size = batch_size
  c.train.num_steps = num_steps
  c.train.warmup_steps = 1
  c.train.log_every = 1
  c.train.eval_every = every
  c.train.checkpoint_every = every


def unknown_variant(file: str, variant: str) -> ValueError:
  return ValueError(f"unknown variant {variant!r} of {file}; use '' or 'tiny'")
