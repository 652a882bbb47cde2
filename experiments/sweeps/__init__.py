"""Sweep definitions for `mmvae sweep` (experiments/sweeps/*.py): rows of configs x seeds."""
