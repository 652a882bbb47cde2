"""A small prepared dataset of two `sequence` modalities whose steps share a hidden envelope (for temporal tests).

Per clip: an identity, a length L (some clips shorter than T, so padding is exercised) and a random
envelope e_t. Step t of `audio_frames` is e_t * A + identity_a + noise, of `face_frames` e_t * F +
identity_f + noise (A, F fixed random directions), so clips are told apart by identity and steps by
the envelope, which both modalities see at the same t: synchronisation is learnable.
"""

import numpy as np

from data_prep import storage
from mmvae.modalities import sequence

CORPUS = "sequence_toy"
NAMES = ("audio_frames", "face_frames")


def write(out, identities: int = 4, clips: dict | None = None, steps: int = 24, dims=(6, 10), seed: int = 0) -> dict:
  """Writes the corpus into OUT (a fresh folder); returns its manifest."""
  clips = clips or {"train": 12, "validation": 3, "test": 4}  # per identity
  rng = np.random.default_rng(seed)
  directions = [rng.normal(size=d) for d in dims]
  people = [[rng.normal(size=d) for d in dims] for _ in range(identities)]

  def examples(split):
    local = np.random.default_rng((seed, list(clips).index(split)))
    rows = []
    for i in range(identities):
      for c in range(clips[split]):
        length = int(local.integers(steps // 2, steps + 1))
        envelope = np.convolve(local.uniform(0, 1, length + 4), np.ones(3) / 3, "same")[2:length + 2]
        steps_of = [np.outer(envelope * 3, d) + p + 0.3 * local.normal(size=(length, len(d)))
                    for d, p in zip(directions, people[i])]
        rows.append({"label": i, "id": f"{split}/{i:02d}/{c:03d}", "identity": f"p{i}", "video": f"{split}{i}{c}",
                     "gender": "", **{n: sequence.pack(s, steps) for n, s in zip(NAMES, steps_of)}})
    return lambda: iter(rows)

  entries = [{"name": n, "kind": "sequence", "shape": [steps, d + 1], "dtype": "float32", "step_shape": [d],
              "step_seconds": 0.04} for n, d in zip(NAMES, dims)]
  manifest = {"config": "temporal", "data_config": {}, "relevance": "same identity",
              "identities": [{"identity": f"p{i}", "name": f"person {i}"} for i in range(identities)],
              "attributes": [], "skipped": [], "warnings": [], "notes": ["toy sequences for tests"],
              "audio_normalisation": None}
  storage.register_corpus(CORPUS)
  with storage.Build(out) as build:
    manifest = storage.write_dataset(build.path, CORPUS, {s: examples(s) for s in clips}, entries, manifest)
    build.commit()
  return manifest
