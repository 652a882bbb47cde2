"""Experiment configs (experiments/configs/*.py) and thin scripts."""
