"""Ranking metrics shared by training's validation and `mmvae analyze`: scores, ranks, MRR/mAP/Recall@K, chance levels.

NumPy/SciPy (and JAX for large galleries) only; imports nothing above mmvae.progress.
"""
