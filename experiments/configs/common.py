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
  c.data.time_average = True  # [T, F] -> a vector pooled over time (data.pooling); see data_prep/audio.py
  # 'mfcc_stats': mean and std over time of MFCCs 1..n_mfcc of the gain-normalised segment, [2 n_mfcc];
  # 'stats': mean and std over time of its log spectrogram, [2F]; both invariant to the utterance's
  # gain. 'magnitude_mean': the seed report's average magnitude, [F] (it encodes loudness).
  c.data.pooling = "mfcc_stats"
  c.data.n_mels = 40
  c.data.n_mfcc = 20
  c.data.dither = 1.0  # dither amplitude relative to VGGVox's 1e-6 * std scale
  c.data.short_clips = "pad"  # 'pad' (zero-pad to the segment), 'skip', or 'whole' (pooled features only)
  c.data.face_size = 23
  c.data.grayscale = True
  c.data.frames_per_utterance = 1  # K face frames stored per utterance; training draws one per step
  # Frame sequences (`audio_frames`, `face_frames`: kind `sequence`), prepared when every utterance has its own
  # frame folder (VoxCeleb1's unzippedIntervalFaces, `mmvae prep synthetic --video`); step t of both is one frame.
  c.data.video_fps = 25  # frame rate of those folders: frame k shows k / video_fps s; one step = 1 / video_fps s
  c.data.sequence_steps = 50  # steps stored per utterance (2 s at 25 fps); a longer one keeps a window of them
  # Which face a training voice is paired with, drawn per step from (seed, step, position):
  # 'utterance' (one of its own K frames), 'video' (a frame of any utterance of its video) or
  # 'identity' (a frame of any training video of the same identity).
  c.data.pairing = "utterance"
  c.data.seed = 0  # train-crop and dither generator seed at preparation time
  # Which of the dataset's modalities a run uses, by name (the manifest lists them); () = all of them.
  # The first one used is the anchor that data.pairing draws the others' partners for.
  c.data.modalities = ()

  c.model = ml_collections.ConfigDict()
  # Which registered model (mmvae/zoo/): 'msvae' (encoders + shared decoder, ELBO + alignment),
  # 'contrastive' (encoders only, symmetric InfoNCE over every modality pair as the whole objective, so
  # loss.infonce_weight does not apply; cannot generate), or the multimodal-VAE baselines with one
  # decoder per modality: 'mvae' (product of experts), 'mmvae' (mixture of experts), 'mopoe' (mixture
  # of the products of every subset). The baselines read loss.likelihood='gaussian', loss.sigma,
  # learn_sigma, min_sigma, kl_weight, kl_anneal_steps, identity_weight and the keys below. 'mcvs': the
  # Multi Stage Common Vector Space (encoders + attention into a shared space, triplet + classification
  # loss, trained stage by stage; reads loss.triplet_weight, triplet_margins, identity_weight).
  c.model.kind = "msvae"
  c.model.latent_dim = 100
  # The encoder of each modality, by name; a modality not named gets its kind's first choice.
  # spectrogram and image: 'mlp' or 'conv'; vector: 'mlp'; tokens: 'bow' or 'conv'; sequence: see below.
  c.model.encoders = ml_collections.ConfigDict({"audio": "mlp", "face": "mlp", "image": "mlp", "text": "bow"})
  c.model.decoder = "mlp"  # 'mlp' or 'conv'
  c.model.hidden = (512, 256)  # MLP widths (encoder order; the decoder mirrors them)
  # Per modality, MLP encoder widths that differ from `hidden` (e.g. {"visual": (512, 512, 128, 128)});
  # a modality not named uses `hidden`.
  c.model.encoder_hidden = ml_collections.ConfigDict()
  c.model.decoder_hidden = ()  # decoder trunk widths from z outwards; () = `hidden` reversed
  c.model.conv_channels = (32, 64, 128, 256)
  c.model.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16'
  # mcvs (the Multi Stage Common Vector Space, mmvae/zoo/mcvs.py): the space's width, the aligned-attention
  # width, 'stagewise' (M-CVS) or 'joint' (CVS), the stages (each a tuple of the modalities it adds; ()
  # = the run's modalities in order, the first two together), the stage one run trains (0: `mmvae train`
  # runs them all, one run each) and the chance that an example's attention partner is left out in training.
  c.model.space_dim = 512
  c.model.attention_dim = 512
  c.model.plan = "stagewise"
  c.model.stages = ()
  c.model.stage = 0
  c.model.partner_dropout = 0.5
  # Sequence modalities (kind 'sequence', mmvae/temporal.py): the encoder per modality in `encoders`
  # ('gru' default, 'lstm', 'tconv', 'transformer', 'pool' = the time-pooled baseline); frame-level
  # embeddings average windows of these many steps; layers and heads of tconv / transformer.
  c.model.frame_windows = (1, 2, 4)
  c.model.temporal_layers = 1
  c.model.temporal_heads = 4
  # A precomputed 'vector' or 'sequence' modality whose embeddings define the space (e.g. CLIP image
  # embeddings joined by `mmvae prep features --join`); the other modalities train adapters into it
  # (contrastive kind; latent_dim must equal its width). '' = none.
  c.model.frozen_target = ""

  c.loss = ml_collections.ConfigDict()
  # Reconstruction: 'gaussian' (NLL in nats with a per-modality scale sigma, so the loss is a true
  # negative ELBO) or 'sse' (summed squared error: the seed report's recipe).
  c.loss.likelihood = "gaussian"
  # Per modality, fixed or the initial value when learned; a modality not named gets its kind's default.
  c.loss.sigma = ml_collections.ConfigDict({"audio": 1.0, "face": 0.1, "image": 0.1})
  c.loss.learn_sigma = True  # one learned scale per modality (a calibrated decoder)
  c.loss.min_sigma = 0.01
  c.loss.wasserstein = "w2_gaussian"  # 'w2_gaussian' | 'sample_l2' | 'sliced'
  c.loss.self_recon_weight = 1.0
  c.loss.cross_recon_weight = 1.0
  c.loss.kl_weight = 1.0
  c.loss.wasserstein_weight = 1.0
  c.loss.kl_anneal_steps = 0  # linear KL warm-up from 0 to kl_weight; 0 = off
  c.loss.sliced_projections = 64
  # Further alignment objectives (weight 0 = off), computed over the global batch of posterior means.
  c.loss.infonce_weight = 0.0  # symmetric InfoNCE (CLIP/VATT)
  c.loss.temperature = 0.1
  c.loss.infonce_positives = "identity"  # 'pair' (only its own pair) or 'identity' (every same-identity item)
  c.loss.triplet_weight = 0.0  # M-CVS triplet loss, batch-hard
  c.loss.triplet_margins = (0.2, 0.2, 0.2)  # within the first modality, within each other one, across
  c.loss.identity_weight = 0.0  # identity cross-entropy of a linear head on the latent means
  # Within-clip synchronisation InfoNCE of sequence modalities' frame embeddings (step t against the other
  # steps of the same clip), averaged over frame windows; 0 = off. Its temperature.
  c.loss.sync_weight = 0.0
  c.loss.sync_temperature = 0.1
  c.loss.adapter = "contrastive"  # with model.frozen_target: 'contrastive' (InfoNCE) or 'regression' (squared error)
  # The multimodal-VAE baselines (mvae, mmvae, mopoe; see mmvae/zoo/):
  c.loss.num_samples = 1  # K reparameterised draws per posterior: per ELBO term, mixture component or subset
  # mmvae's bound: 'elbo' (stratified ELBO), 'iwae' (stratified IWAE) or 'dreg' (IWAE with DReG
  # gradients; Shi et al. trained with dreg and K = 30). Other kinds need 'elbo'.
  c.loss.estimator = "elbo"
  c.loss.subsampled_elbos = 0  # mvae: ELBO terms of k random subsets beyond the joint and unimodal ones
  c.loss.subset_sampling = "one"  # mopoe: 'one' subset per example (from its key) or 'stratified' (every subset)

  c.train = ml_collections.ConfigDict()
  c.train.seed = 0
  c.train.batch_size = 64  # global, over all devices and hosts
  c.train.num_steps = 1000
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 100
  c.train.lr_schedule = "cosine"  # 'cosine' or 'constant'
  c.train.grad_clip = 1.0
  c.train.weight_decay = 0.0  # decoupled (AdamW) weight decay; 0 = plain Adam
  c.train.face_flip = False  # mirror each training face left-right with probability 1/2
  c.train.rotate_points = False  # turn each training point cloud about its vertical axis by a random angle
  c.train.log_every = 50
  # At each validation, image modalities decoded from every modality for this many validation examples, logged as
  # one picture per image modality to TensorBoard (and W&B) under validation/<name>_generated; 0 = none.
  c.train.log_images = 8
  # Weights & Biases (the `tracking` extra): a project name to log scalars and those images to ('' = no W&B);
  # wandb_mode 'offline' writes WORKDIR/wandb/ without a network ('' = W&B's default, WANDB_MODE or online).
  c.train.wandb_project = ""
  c.train.wandb_mode = ""
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.prefetch = 2  # batches the input pipeline builds ahead (0: none, on the training thread)
  # grain worker processes building batches (reading, frame sampling, pairing): -1 = none when the split is held
  # in memory (a background thread does it), up to 4 when it is read from disk; 0 = the background thread.
  c.train.data_workers = -1
  # Optimizer steps per dispatch to the devices (a lax.scan over that many batches; the same numbers as
  # single steps): > 1 saves the per-step dispatch and host work where a step is short (small models or
  # batches). Blocks never cross an eval or checkpoint step; metrics are fetched once per block.
  c.train.steps_per_dispatch = 1
  # Which checkpoint is 'best': 'cross_mrr' (mean validation MRR over every ordered pair of modalities,
  # e.g. voice->face and face->voice, the numbers the analysis reports, scored the same way) or 'loss'.
  c.train.select_by = "cross_mrr"

  c.parallel = "sharded"  # 'sharded' (jit over a NamedSharding mesh) or 'pmap' (jax.pmap; same numbers)

  c.analysis = ml_collections.ConfigDict()
  c.analysis.split = "test"
  c.analysis.dbscan_eps = -1.0  # <= 0: choose by the k-distance knee
  c.analysis.dbscan_min_samples = 3
  c.analysis.tsne_perplexity = -1.0  # <= 0: adapt to the set size
  c.analysis.seed = 0
  c.analysis.likelihood_samples = 16  # K of the importance-weighted test log-likelihood (models with a joint posterior)
  c.analysis.joint_samples = 1000  # draws from the prior scored for joint coherence
  # Synchronisation (sequence modalities): each window is matched against the windows of the same clip
  # at offsets -sync_offsets..+sync_offsets (2 * 6 + 1 = 13 candidates; chance 1/13).
  c.analysis.sync_offsets = 6
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
