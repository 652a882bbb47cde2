"""Issue 10's comparison: every model kind on the three-modality AV-digits (audio, image, text), three seeds.

  mmvae prep avdigits --fsdd ../shared/data/fsdd --mnist ../shared/data/mnist-t10k --out data/avdigits
  mmvae sweep --sweep avdigits --data data/avdigits --out runs/sweep-avdigits --parallel 2

Each row is one `model.kind` with the shipped `avdigits` config; the table shows, per ordered pair of
modalities, retrieval MRR and the coherence of cross generation (an independent classifier per modality,
trained on real training data, names the digit of what was generated), joint coherence of samples from
the prior, an importance-weighted test log-likelihood where the model has a joint posterior, and the
training step time. `contrastive` has no decoder, so it has retrieval columns only.
"""

KINDS = ("msvae", "mvae", "mmvae", "mopoe", "contrastive")


def get_sweep() -> dict:
  return {
      "description": "Every registered multimodal model kind on AV-digits (FSDD speech, MNIST images, digit "
                     "descriptions); relevance = same digit; chance levels from the analysed split.",
      "rows": [{"name": kind, "config": "avdigits", "overrides": [f"model.kind={kind}"]} for kind in KINDS],
      "seeds": [0, 1, 2],
  }
