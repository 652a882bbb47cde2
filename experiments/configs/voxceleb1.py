"""MS-VAE on real VoxCeleb1 voices and faces: the recipe chosen on validation alone.

Against the seed recipe (`reference`): gain-invariant MFCC statistics of up to 6 s of each clip, eight 32x32 RGB
face frames per utterance, mirrored training faces and weight decay, and InfoNCE over the batch's posterior means
(weight 10) beside the exact W2; the rest (summed squared error, pairs within an utterance) is the reference's.
This is row 17 of experiments/sweeps/voxceleb1.py, the row that validation picks in the video-grouped
cross-validation (README, "Honest numbers on new videos"); the shared decoder draws a face from a voice
(`mmvae generate face`).

Variants:
  ''             the recommended config.
  'aligned'      the config shipped before mmvae's validation-only protocol (sweep row 9): identity pairing,
                 mirrored faces, weight decay, a Gaussian likelihood with learned scales, InfoNCE and identity
                 cross-entropy beside the W2. Its settings were chosen on the mini set's test split; on validation
                 and across videos it scores below ''. Kept for the sweep rows and the pretrained configs built
                 on it.
  'tiny', 'aligned_tiny'   the same pipelines with a tiny model and 4 steps, for tests.
"""

from experiments.configs import common
from experiments.configs import reference

VARIANTS = ("", "aligned")


def get_config(variant: str = ""):
  base, tiny = common.split_variant("voxceleb1.py", variant, VARIANTS)
  c = reference.get_config()
  c.name = "voxceleb1" + (f"_{base}" if base else "")
  c.data.pooling = "mfcc_stats"
  # Up to 6 s of each clip, and a shorter clip as it is (not zero-padded: the statistics need no fixed length).
  c.data.segment_samples = 96_000
  c.data.short_clips = "whole"
  c.data.face_size = 32
  c.data.grayscale = False
  c.data.frames_per_utterance = 8
  # InfoNCE between the two posteriors' means beside the W2, weighted 10 against the summed squared error (sweep row
  # 15: validation's pick over rows 2 and 14 = 2 + InfoNCE, in the sweep and in the cross-validation by video).
  c.loss.infonce_weight = 10.0
  # Mirrored training faces and weight decay (row 17): the cross-validation's validation folds, 155 utterances of
  # 49 videos, score it 0.771 against row 15's 0.744 and row 16's (15 + identity CE) 0.741. The sweep's single
  # 31-utterance validation split ranked it second (0.80 against 0.82); the cross-validation is the larger sample.
  c.train.face_flip = True
  c.train.weight_decay = 0.05
  if base == "aligned":
    c.data.pairing = "identity"
    c.loss.likelihood = "gaussian"
    c.loss.learn_sigma = True
    c.loss.sigma.face = 0.1
    c.loss.infonce_weight = 1.0
    c.loss.identity_weight = 1.0
  # As `reference`: 17,300 steps (8 epochs of full VoxCeleb1's ~138k training utterances at batch 64), validated
  # every 1,000. On the mini sample (98 training utterances) use the sweep's 1,000 steps validated every 100.
  if tiny:
    c.name += "_tiny"
    c.model.hidden = (32, 16)
    c.model.latent_dim = 8
    common.tiny_training(c, batch_size=8, num_steps=4, every=2)
  return c
