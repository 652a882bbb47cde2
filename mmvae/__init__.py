"""mmvae: multimodal VAEs for voices and faces in JAX/Flax NNX."""

__version__ = "0.1.0"
