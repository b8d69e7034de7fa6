"""LDM training: checkpoints every N epochs, resume after interruption gives the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from core.generative.train import TrainLDMConfig, train_ldm
from core.io.data import ImageSet
from core.io.preprocessing import PreprocessSpec
from tests.conftest import smooth_image


@pytest.fixture
def images() -> ImageSet:
    rng = np.random.default_rng(0)
    x = np.stack([smooth_image(rng, (1, 16, 16)) for _ in range(8)])
    x = x / np.abs(x).max()
    return ImageSet(
        [f"i{i}" for i in range(8)], [f"p{i}" for i in range(8)], x.astype(np.float32), PreprocessSpec((16, 16)), "mem"
    )


def test_checkpoints_and_resume_match_an_uninterrupted_run(images: ImageSet, tmp_path: Path) -> None:
    cfg = TrainLDMConfig(ae_epochs=2, epochs=2, batch_size=4, save_every=1, augment=True, adversarial=True)
    full = train_ldm(images, tmp_path / "full", cfg)
    assert (tmp_path / "full" / "epoch-0001" / "ldm.json").is_file()
    # interrupted after the autoencoder phase, then resumed
    train_ldm(images, tmp_path / "part", cfg.replace(epochs=0))
    resumed = train_ldm(images, tmp_path / "part", cfg)
    a, b = load_file(full / "unet.safetensors"), load_file(resumed / "unet.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    ae = load_file(full / "autoencoder.safetensors")
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in ae.values())
