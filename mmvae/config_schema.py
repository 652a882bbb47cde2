"""The config schema: every key a stage reads, with the reference experiment's values.

The shared sections live here; each model kind owns the keys only it reads (`default_config()` in its
zoo module), merged in by `base_config`, so adding a kind adds no key to this file. Experiment configs
(experiments/configs/*.py) start from `base_config()` and edit a copy.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Every key any stage reads: the shared sections, then every registered model kind's own keys."""
  c = shared_config()
  add_kind_defaults(c)
  return c


def shared_config() -> ml_collections.ConfigDict:
  """The keys every run has, whatever its model kind."""
  c = ml_collections.ConfigDict()
  c.name = "base"
  c.data = data_section()
  c.model = model_section()
  c.loss = loss_section()
  c.train = train_section()
  c.parallel = "sharded"  # 'sharded' (jit over a NamedSharding mesh) or 'pmap' (jax.pmap; same numbers)
  c.analysis = analysis_section()
  return c


def add_kind_defaults(c: ml_collections.ConfigDict) -> None:
  """Adds each registered kind's `default_config()` keys to `c`; two kinds giving one key two defaults is an error."""
  from mmvae import zoo
  owner = {}
  for kind in zoo.kinds():
    default_config = getattr(zoo.get(kind), "default_config", None)
    if default_config is None:  # a kind that reads only shared keys
      continue
    for section, values in default_config().items():
      if section not in c:
        c[section] = ml_collections.ConfigDict()
      for key, value in values.items():
        where = f"{section}.{key}"
        if key in c[section] and (where not in owner or c[section][key] != value):
          first = f"model.kind {owner[where]!r}" if where in owner else "the shared schema"
          raise ValueError(f"model.kind {kind!r} gives config.{where} the default {value!r}, but {first} "
                           f"defines it as {c[section][key]!r}")
        c[section][key] = value
        owner[where] = kind


def data_section() -> ml_collections.ConfigDict:
  """Input settings: `mmvae prep --config NAME` prepares data with these; training checks the dataset matches."""
  d = ml_collections.ConfigDict()
  d.sample_rate = 16000
  d.segment_samples = 47760  # ~3 s: 297 frames of 25 ms with a 10 ms hop
  d.window_ms = 25.0
  d.hop_ms = 10.0
  d.n_fft = 1024
  d.n_bins = 512
  d.magnitude = "linear"  # 'linear' (VGGVox) or 'log' (log1p of the magnitude)
  d.time_average = True  # [T, F] -> a vector pooled over time (data.pooling); see data_prep/audio.py
  # 'mfcc_stats': mean and std over time of MFCCs 1..n_mfcc of the gain-normalised segment, [2 n_mfcc];
  # 'stats': mean and std over time of its log spectrogram, [2F]; both invariant to the utterance's
  # gain. 'magnitude_mean': the seed report's average magnitude, [F] (it encodes loudness).
  d.pooling = "mfcc_stats"
  d.n_mels = 40
  d.n_mfcc = 20
  d.dither = 1.0  # dither amplitude relative to VGGVox's 1e-6 * std scale
  # How a WAV at another rate is brought to sample_rate (librosa.resample res_type): 'soxr_hq' (librosa's default)
  # or 'polyphase' (scipy's resample_poly, the recipe before librosa). 16 kHz corpora (VoxCeleb1, synthetic) never resample.
  d.resampler = "soxr_hq"
  d.short_clips = "pad"  # 'pad' (zero-pad to the segment), 'skip', or 'whole' (pooled features only)
  d.face_size = 23
  d.grayscale = True
  d.frames_per_utterance = 1  # K face frames stored per utterance; training draws one per step
  # Frame sequences (`audio_frames`, `face_frames`: kind `sequence`), prepared when every utterance has its own
  # frame folder (VoxCeleb1's unzippedIntervalFaces, `mmvae prep synthetic --video`); step t of both is one frame.
  d.video_fps = 25  # frame rate of those folders: frame k shows k / video_fps s; one step = 1 / video_fps s
  d.sequence_steps = 50  # steps stored per utterance (2 s at 25 fps); a longer one keeps a window of them
  # Which face a training voice is paired with, drawn per step from (seed, step, position):
  # 'utterance' (one of its own K frames), 'video' (a frame of any utterance of its video) or
  # 'identity' (a frame of any training video of the same identity).
  d.pairing = "utterance"
  d.seed = 0  # train-crop and dither generator seed at preparation time
  # Augmented views of pooled audio (data_prep/audio.py): V > 1 stores each training utterance's audio as [V, D],
  # view 0 clean, views 1..V-1 from augmented waves seeded by (seed, utterance id, view); training draws a view per
  # step, evaluation uses view 0; validation and test hold V copies of view 0. 1 = none (the augmentation keys
  # below are then ignored and left out of the manifest).
  d.audio_views = 1
  d.audio_noise_snr = "5,20"  # dB range of the added white or pink noise, "lo,hi"; "" = no noise
  d.audio_telephone = 0.3  # probability of the telephone band (300-3400 Hz)
  d.audio_reverb = 0.3  # probability of reverberation by a generated room impulse response (RT60 0.2-0.8 s)
  d.audio_speed = "0.9,1.1"  # range of the speed factor (resampling: pitch and tempo), "lo,hi"; "" = none
  # Which of the dataset's modalities a run uses, by name (the manifest lists them); () = all of them.
  # The first one used is the anchor that data.pairing draws the others' partners for.
  d.modalities = ()
  return d


def model_section() -> ml_collections.ConfigDict:
  """The keys every model kind (or the modality kinds' encoders) reads; a kind's own keys come from the zoo."""
  m = ml_collections.ConfigDict()
  # Which registered model (mmvae/zoo/, one module per kind; its module documents its keys): 'msvae' (encoders
  # + shared decoder, ELBO + alignment), 'contrastive' (encoders only, InfoNCE; cannot generate), the
  # multimodal-VAE baselines with one decoder per modality 'mvae', 'mmvae', 'mopoe', or 'mcvs' (the Multi
  # Stage Common Vector Space, trained stage by stage).
  m.kind = "msvae"
  m.latent_dim = 100
  # The encoder of each modality, by name; a modality not named gets its kind's first choice.
  # spectrogram and image: 'mlp' or 'conv'; vector: 'mlp'; tokens: 'bow' or 'conv'; sequence: see below.
  m.encoders = ml_collections.ConfigDict({"audio": "mlp", "face": "mlp", "image": "mlp", "text": "bow"})
  m.decoder = "mlp"  # 'mlp' or 'conv'
  m.hidden = (512, 256)  # MLP widths (encoder order; the decoder mirrors them)
  # Per modality, MLP encoder widths that differ from `hidden` (e.g. {"visual": (512, 512, 128, 128)});
  # a modality not named uses `hidden`.
  m.encoder_hidden = ml_collections.ConfigDict()
  m.decoder_hidden = ()  # decoder trunk widths from z outwards; () = `hidden` reversed
  m.conv_channels = (32, 64, 128, 256)
  # Per modality, how a 'conv' decoder head doubles its grid: 'transpose' (a stride-2 transposed conv; the default
  # for a modality not named; XLA CPU computes its kernel gradient ~20x slower), 'resize' (nearest x2, then a 3x3
  # conv) or 'subpixel' (a 3x3 conv to 4x the channels, then depth-to-space). Empty here, so a config.json
  # written before this key existed still loads (and rebuilds with 'transpose', as it was trained).
  m.upsample = ml_collections.ConfigDict()
  # Per modality, what its decoder head's raw values become: 'default' (the kind's own: a sigmoid for image and
  # video pixels, the values as they are otherwise) or 'linear' (the values as they are: under the Gaussian
  # likelihood a sigmoid whose inputs run far negative stops passing gradient, README "conv decoder"). Empty here,
  # as `upsample`, so a config.json written before this key existed still loads, with the kind's own.
  m.output = ml_collections.ConfigDict()
  m.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16'
  # Sequence modalities (kind 'sequence', mmvae/temporal.py): the encoder per modality in `encoders`
  # ('gru' default, 'lstm', 'tconv', 'transformer', 'pool' = the time-pooled baseline); frame-level
  # embeddings average windows of these many steps; layers and heads of tconv / transformer.
  m.frame_windows = (1, 2, 4)
  m.temporal_layers = 1
  m.temporal_heads = 4
  # A precomputed 'vector' or 'sequence' modality whose embeddings define the space (e.g. CLIP image
  # embeddings joined by `mmvae prep features --join`); the other modalities train adapters into it
  # (contrastive kind; latent_dim must equal its width). '' = none.
  m.frozen_target = ""
  return m


def loss_section() -> ml_collections.ConfigDict:
  """The loss keys several model kinds read; a kind's own keys come from the zoo."""
  lc = ml_collections.ConfigDict()
  # Reconstruction: 'gaussian' (NLL in nats with a per-modality scale sigma, so the loss is a true
  # negative ELBO) or 'sse' (summed squared error: the seed report's recipe).
  lc.likelihood = "gaussian"
  # Per modality, fixed or the initial value when learned; a modality not named gets its kind's default.
  lc.sigma = ml_collections.ConfigDict({"audio": 1.0, "face": 0.1, "image": 0.1})
  lc.learn_sigma = True  # one learned scale per modality (a calibrated decoder)
  lc.min_sigma = 0.01
  lc.kl_weight = 1.0
  lc.kl_anneal_steps = 0  # linear KL warm-up from 0 to kl_weight; 0 = off
  # InfoNCE over the global batch of posterior means (msvae's loss.infonce_weight, contrastive's whole objective).
  lc.temperature = 0.1
  lc.infonce_positives = "identity"  # 'pair' (only its own pair) or 'identity' (every same-identity item)
  lc.triplet_weight = 0.0  # M-CVS triplet loss, batch-hard (msvae: an alignment term; mcvs: its objective)
  lc.triplet_margins = (0.2, 0.2, 0.2)  # within the first modality, within each other one, across
  lc.identity_weight = 0.0  # identity cross-entropy of a linear head on the latent means
  # Within-clip synchronisation InfoNCE of sequence modalities' frame embeddings (step t against the other
  # steps of the same clip), averaged over frame windows; 0 = off. Its temperature.
  lc.sync_weight = 0.0
  lc.sync_temperature = 0.1
  return lc


def train_section() -> ml_collections.ConfigDict:
  """The training loop's keys."""
  t = ml_collections.ConfigDict()
  t.seed = 0
  t.batch_size = 64  # global, over all devices and hosts
  t.num_steps = 1000
  t.learning_rate = 1e-3
  t.warmup_steps = 100
  t.lr_schedule = "cosine"  # 'cosine' or 'constant'
  t.grad_clip = 1.0
  t.weight_decay = 0.0  # decoupled (AdamW) weight decay; 0 = plain Adam
  t.face_flip = False  # mirror each training face left-right with probability 1/2
  # Train-time face augmentations for a new video (image modality kind; each drawn per example, off by default):
  t.face_color_jitter = 0.0  # brightness, contrast, saturation factors uniform in [1 - s, 1 + s]; in [0, 1], 0 = off
  t.face_crop_scale = 1.0  # a random square crop of area fraction in [scale, 1], resized back; in (0, 1], 1 = off
  t.face_blur = 0.0  # Gaussian blur of sigma uniform in [0, face_blur] pixels; >= 0, 0 = off
  t.rotate_points = False  # turn each training point cloud about its vertical axis by a random angle
  t.log_every = 50
  # At each validation, image modalities decoded from every modality for this many validation examples, logged as
  # one picture per image modality to TensorBoard (and W&B) under validation/<name>_generated; 0 = none.
  t.log_images = 8
  # Weights & Biases (the `tracking` extra): a project name to log scalars and those images to ('' = no W&B);
  # wandb_mode 'offline' writes WORKDIR/wandb/ without a network ('' = W&B's default, WANDB_MODE or online).
  t.wandb_project = ""
  t.wandb_mode = ""
  t.eval_every = 500
  t.checkpoint_every = 500
  t.keep_checkpoints = 3
  t.prefetch = 2  # batches the input pipeline builds ahead (0: none, on the training thread)
  # grain worker processes building batches (reading, frame sampling, pairing): -1 = none when the split is held
  # in memory (a background thread does it), up to 4 when it is read from disk; 0 = the background thread.
  t.data_workers = -1
  # Optimizer steps per dispatch to the devices (a lax.scan over that many batches; the same numbers as
  # single steps to float rounding): > 1 saves the per-step dispatch and host work where a step is short
  # (small models or batches). Blocks never cross an eval or checkpoint step; metrics are fetched once per
  # block. 'auto' (the default) derives it from the config alone: enough steps that a dispatch holds about
  # 5 GFLOP on a CPU, 5 TFLOP on an accelerator (XLA's cost analysis of the step), a divisor of the eval and
  # checkpoint spacing, at most 100 steps and 256 MiB of batches, 1 for runs under 500 steps; so a config
  # trains the same numbers on every run of a platform. An integer fixes it (1: one step per dispatch).
  t.steps_per_dispatch = int_or_auto("auto")
  # Which checkpoint is 'best': 'cross_mrr' (mean validation MRR over every ordered pair of modalities,
  # e.g. voice->face and face->voice, the numbers the analysis reports, scored the same way) or 'loss'.
  t.select_by = "cross_mrr"
  return t


# Keys that take an integer or 'auto' (config.apply_override sets them through int_or_auto).
INT_OR_AUTO = ("train.steps_per_dispatch",)


def int_or_auto(value) -> ml_collections.FieldReference:
  """A field holding an integer or 'auto' (a ConfigDict field is otherwise fixed to its default's type)."""
  return ml_collections.FieldReference(value, field_type=object)


def analysis_section() -> ml_collections.ConfigDict:
  """`mmvae analyze`'s keys."""
  a = ml_collections.ConfigDict()
  a.split = "test"
  a.dbscan_eps = -1.0  # <= 0: choose by the k-distance knee
  a.dbscan_min_samples = 3
  a.tsne_perplexity = -1.0  # <= 0: adapt to the set size
  a.seed = 0
  a.likelihood_samples = 16  # K of the importance-weighted test log-likelihood (models with a joint posterior)
  a.joint_samples = 1000  # draws from the prior scored for joint coherence
  # Synchronisation (sequence modalities): each window is matched against the windows of the same clip
  # at offsets -sync_offsets..+sync_offsets (2 * 6 + 1 = 13 candidates; chance 1/13).
  a.sync_offsets = 6
  return a
