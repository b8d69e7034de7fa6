"""MemoScope core: find patient-data copies among the samples of a latent diffusion model."""

from __future__ import annotations

__version__ = "0.1.0"
