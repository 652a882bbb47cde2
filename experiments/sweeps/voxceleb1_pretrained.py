"""Issue 26's rows of the VoxCeleb1 comparison: learned from scratch against pretrained speaker and face spaces.

  mmvae prep voxceleb1 --root RAW --out data/vox1 --config voxceleb1
  mmvae extract ge2e --root RAW --out runs/ge2e.npz
  mmvae extract dlib_face --root RAW --out runs/dlib.npz
  mmvae prep features --join data/vox1 --embeddings runs/ge2e.npz --name ge2e --out data/vox1-ge2e
  mmvae prep features --join data/vox1-ge2e --embeddings runs/dlib.npz --name dlib_face --out data/vox1-pre
  mmvae sweep --sweep voxceleb1_pretrained --data data/vox1-pre --out runs/sweep-vox1-pretrained --parallel 1

Every row reads the one joined dataset and picks its voice and face with data.modalities: `audio` (voxceleb1's
MFCC statistics, learned encoder) or `ge2e` (256-d GE2E d-vectors), `face` (32x32 RGB pixels, learned encoder) or
`dlib_face` (128-d dlib descriptors). Each run keeps its best checkpoint by validation cross-modal MRR
(train.select_by); the test columns are never used to choose. Every row has voxceleb1:aligned's training settings
(identity pairing, Gaussian likelihood, InfoNCE and identity CE), the ones these rows were first measured with. The rows' modality names differ, so each row has
its own columns (the others' are blank). The selection key `retrieval.{q}_to_{g}.mrr` scores each run on the two
directions between its own voice and face (sweep_table.applies), so the rows are chosen between on validation.
GE2E was trained on VoxCeleb1 dev (with VoxCeleb2 and LibriSpeech) and dlib's network on VGG faces, from which
VoxCeleb1's identities were drawn: the pretrained rows are not open-set numbers.
"""

# Shorter than experiments/sweeps/voxceleb1.py's 1,000 steps so that the 12 runs fit about 20 minutes of one
# core; validated every 50 steps, the best of them analysed.
MINI_SET_TRAINING = ["train.num_steps=300", "train.eval_every=50", "train.checkpoint_every=50",
                     "train.log_every=50"]
PAIRS = [("audio", "face", "MFCC, pixels"), ("ge2e", "face", "GE2E, pixels"), ("ge2e", "dlib_face", "GE2E, dlib"),
         ("audio", "dlib_face", "MFCC into dlib")]
METRICS = ([(f"retrieval.{v}_to_{f}.mrr", f"voice->face MRR ({what})") for v, f, what in PAIRS]
           + [(f"retrieval.{f}_to_{v}.mrr", f"face->voice MRR ({what})") for v, f, what in PAIRS]
           + [(f"coherence.{v}_to_face.accuracy", f"faces from voices: coherence ({what})")
              for v, f, what in PAIRS[:2]])
SELECT = {"keys": ["retrieval.{q}_to_{g}.mrr"],
          "title": "mean of the run's own voice->face and face->voice MRR (whichever voice and face it has)"}


def _row(name: str, config: str, *overrides: str) -> dict:
  return {"name": name, "config": config, "overrides": MINI_SET_TRAINING + list(overrides)}


def get_sweep() -> dict:
  return {
      "description": "VoxCeleb1 voice-face retrieval with pretrained encoders (GE2E speaker, dlib face) against "
                     "the learned-from-scratch voxceleb1:aligned config, on the joined voxceleb1-mini dataset; the "
                     "pretrained networks saw VoxCeleb1 (GE2E: its dev set; dlib: VGG faces), so these are not "
                     "open-set numbers.",
      "rows": [
          _row("1 learned from scratch (voxceleb1:aligned)", "voxceleb1:aligned",
               "data.modalities=('audio', 'face')"),
          _row("2 GE2E voice + learned face", "voxceleb1_pretrained"),
          _row("3 GE2E + dlib", "voxceleb1_pretrained:dlib"),
          _row("4 voice adapter into the frozen dlib space", "voxceleb1_pretrained:adapter"),
      ],
      "seeds": [0, 1, 2],
      "metrics": METRICS,
      "select": SELECT,
  }
