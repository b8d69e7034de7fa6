"""LDM training: checkpoints every N epochs, resume after interruption gives the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from core.generative.train import TrainLDMConfig, train_ldm
from core.io.load import ImageSet
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_velocity_prediction_is_trained_against_the_velocity(images: ImageSet, tmp_path: Path) -> None:
    """``"scheduler": {"prediction_type": "v_prediction"}`` in the networks JSON changes the UNet's target (same
    seed, same batches: only the target differs), is recorded in ldm.json and samples through the same step."""
    import json

    from core.generative.ldm import load_ldm, networks_config
    from core.generative.sample import sample

    networks = tmp_path / "networks.json"
    cfg = TrainLDMConfig(ae_epochs=1, epochs=2, batch_size=4)
    folders = {}
    for kind in ("epsilon", "v_prediction"):
        small = {"channels": [8, 16, 16], "norm_num_groups": 8}
        spec = {"autoencoder": small, "unet": {**small, "num_head_channels": 8}, "scheduler": {"prediction_type": kind}}
        networks.write_text(json.dumps(spec))
        folders[kind] = train_ldm(images, tmp_path / kind, cfg, networks_config(networks, 2, (16, 16)))
    eps, vel = (load_file(folders[k] / "unet.safetensors") for k in ("epsilon", "v_prediction"))
    assert any(not torch.equal(eps[key], vel[key]) for key in eps)
    ldm = load_ldm(folders["v_prediction"])
    assert ldm.config.scheduler["prediction_type"] == "v_prediction"
    assert np.isfinite(sample(ldm, [0, 1], steps=3)).all()


def test_unknown_scheduler_keywords_are_refused_naming_the_file(tmp_path: Path) -> None:
    from core.common.errors import MemoScopeError
    from core.generative.ldm import networks_config

    networks = tmp_path / "networks.json"
    networks.write_text('{"scheduler": {"prediction_type": "x0-please"}}')
    with pytest.raises(MemoScopeError, match="networks.json"):
        networks_config(networks, 2, (16, 16))
