"""M-CVS on multi-modal digits: a 512-d common space grown one modality at a time (mmvae/zoo/mcvs.py).

Prepare: mmvae prep mmdigits --fsdd ../shared/data/fsdd --mnist ../shared/data/mnist-t10k --out data/mmdigits
Train:   mmvae train --config mcvs --data data/mmdigits --workdir runs/mcvs          (stage-wise, M-CVS)
         mmvae train --config mcvs --config.model.plan=joint --data ... --workdir runs/cvs   (all at once, CVS)
"""

from experiments.configs import common
from mmvae import config_schema


def get_config(variant: str = ""):
  c = config_schema.base_config()
  c.name = "mcvs"
  # Multi-modal digits (data_prep/mmdigits.py): image, audio, text, video, 3D point cloud of a digit.
  c.data.segment_samples = 16000  # FSDD clips are ~0.5 s: 1 s segments, zero-padded
  c.data.face_size = 28
  c.data.grayscale = True
  c.data.frames_per_utterance = 1
  c.data.video_frames = 8  # frames of the moving, rotating digit
  c.data.points = 256  # points of the extruded, rotated digit
  # Relevance is the digit (class-paired, as XMedia): any item of a digit pairs with any other.
  c.data.pairing = "identity"
  c.data.modalities = ("image", "text", "audio", "video", "pointcloud")

  c.model.kind = "mcvs"
  c.model.latent_dim = 128  # each modality encoder's output, before the two 512-wide layers
  c.model.hidden = (256,)
  c.model.encoders.video = "frames"
  c.model.encoders.pointcloud = "pointnet"
  c.model.space_dim = 512  # the common vector space
  c.model.attention_dim = 512  # width of the aligned-attention hidden layer
  # 'stagewise' (M-CVS: model.stages in order, each later stage trains only the new modality) or
  # 'joint' (CVS: every modality and every pair's attention block trained at once).
  c.model.plan = "stagewise"
  c.model.stages = (("image", "text"), ("audio",), ("video",), ("pointcloud",))
  # Probability that a training example's attention partner is left out (as at retrieval time, where an
  # example is embedded alone): see mmvae/zoo/mcvs.py.
  c.model.partner_dropout = 0.5

  c.loss.triplet_weight = 1.0
  c.loss.triplet_margins = (0.2, 0.2, 0.2)  # within x, within y, across x -> y
  c.loss.identity_weight = 1.0  # the classification cross-entropy on the space's vectors
  c.train.rotate_points = True  # the clouds come at any yaw: show every yaw in training
  c.train.batch_size = 64
  c.train.num_steps = 1500  # per stage
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 50
  c.train.lr_schedule = "constant"
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.select_by = "loss"
  c.analysis.joint_samples = 0
  if variant == "tiny":
    c.name = "mcvs_tiny"
    c.model.latent_dim = 8
    c.model.hidden = (16,)
    c.model.space_dim = 16
    c.model.attention_dim = 16
    common.tiny_training(c, batch_size=8, num_steps=4, every=2)
  elif variant:
    raise common.unknown_variant("mcvs.py", variant)
  return c
