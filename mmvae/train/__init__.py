"""Training: the MS-VAE train step, data parallelism, checkpoints and the loop."""
