"""A two-row, two-seed sweep of tiny configs, to try `mmvae sweep` in a minute on the synthetic corpus.

  mmvae prep synthetic --out data/syn4 --identities 4
  mmvae sweep --sweep tiny --root data/syn4/raw --out runs/sweep-tiny

The rows differ in their data section, so with --root each gets its own prepared dataset.
"""


def get_sweep() -> dict:
  return {
      "rows": [
          {"name": "synthetic tiny", "config": "synthetic:tiny"},
          {"name": "reference tiny", "config": "reference:tiny", "overrides": ["loss.wasserstein=sample_l2"]},
      ],
      "seeds": [0, 1],
      "select": "retrieval.{q}_to_{g}.mrr",  # the row with the best mean validation MRR (both directions)
  }
