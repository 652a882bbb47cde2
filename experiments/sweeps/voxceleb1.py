"""Issue 8's table on VoxCeleb1: the reference MS-VAE and the variants its keys allow today, three seeds.

  mmvae sweep --sweep voxceleb1 --root ../shared/data/voxceleb1-mini --out runs/sweep-vox1-mini

The training length below suits the voxceleb1-mini sample; drop MINI_SET_TRAINING for the full corpus. Rows
whose data section differs (here: the log magnitude) get their own prepared dataset under OUT/data/.
"""

# The mini sample has 98 training utterances: the reference's 17,300 steps (8 epochs of full VoxCeleb1)
# would be ~11,000 epochs of it. Its validation cross-modal MRR peaked at step ~500 and fell after (seed 0,
# measured); 1,500 steps leave later-peaking variants room, and validating every 100 steps lets the best
# checkpoint (the one analysed) stop where each run starts to overfit. ~40 s a run on one CPU core.
MINI_SET_TRAINING = ["train.num_steps=1500", "train.eval_every=100", "train.checkpoint_every=100",
                     "train.log_every=50"]


def _row(name: str, *overrides: str, config: str = "reference") -> dict:
  return {"name": name, "config": config, "overrides": MINI_SET_TRAINING + list(overrides)}


def get_sweep() -> dict:
  return {
      "description": "The reference MS-VAE (the seed report's recipe) against its alignment and feature "
                     "variants on VoxCeleb1; chance levels from the analysed split.",
      "rows": [
          _row("seed report recipe"),
          _row("sample-L2 alignment (public MS-VAE code)", "loss.wasserstein=sample_l2"),
          _row("sliced W2 alignment", "loss.wasserstein=sliced"),
          _row("no alignment term", "loss.wasserstein_weight=0.0"),
          _row("log magnitude", "data.magnitude=log"),
      ],
      "seeds": [0, 1, 2],
  }
