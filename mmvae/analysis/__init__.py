"""Analysis of a trained run: retrieval, latent-space pictures, cross generation, the report."""
