"""Latent diffusion models: checkpoint format and import, training, sampling."""
