"""The mmvae version (`mmvae --version`, run.json, the package metadata): a module of its own, imported from below."""

__version__ = "0.1.0"
