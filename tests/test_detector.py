"""Detector: encoders for 2D/3D, augmentation policies, save/load, cached embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.common.errors import MemoScopeError
from core.detect.detector import (
    DetectorConfig,
    augmentation,
    build_encoder,
    embed_set,
    load_detector,
    save_detector,
    train_detector,
)
from core.io.load import ImageSet
from core.io.preprocessing import PreprocessSpec
from tests.conftest import smooth_image


@pytest.mark.parametrize(
    "dims,size,arch,dim", [(2, 32, "resnet18", 128), (3, 16, "convres", 32), (2, 32, "convres", 32)]
)
def test_encoder_output_shape(dims: int, size: int, arch: str, dim: int) -> None:
    model = build_encoder(DetectorConfig.for_dims(dims, [size] * dims, arch=arch, embed_dim=dim)).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, *[size] * dims)).shape == (2, dim)


@pytest.mark.parametrize("policy", ["paper", "strong"])
def test_augmentation_is_seeded_and_keeps_shape(policy: str) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16)).astype(np.float32)
    a, b = augmentation(policy, 2, [16, 16]), augmentation(policy, 2, [16, 16])  # type: ignore[arg-type]
    a.set_random_state(seed=3)
    b.set_random_state(seed=3)
    outs = [np.asarray(a(x)) for _ in range(4)]
    assert all(o.shape == x.shape for o in outs)
    np.testing.assert_array_equal(outs[0], np.asarray(b(x)))


def _set(n: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    x = np.stack([smooth_image(rng, (1, 16, 16)) for _ in range(n)])
    return ImageSet(
        [f"s{i}" for i in range(n)],
        [f"p{i}" for i in range(n)],
        np.clip(x * 3, -1, 1).astype(np.float32),
        PreprocessSpec((16, 16)),
        "mem",
    )


def test_train_save_load_and_cached_embeddings(tmp_path: Path) -> None:
    config = DetectorConfig.for_dims(
        2,
        [16, 16],
        arch="convres",
        embed_dim=16,
        epochs=3,
        batch_size=8,
        preprocessing=PreprocessSpec((16, 16)).to_dict(),
    )
    train, val = _set(16, 0), _set(8, 1)
    detector = train_detector(train, val, config)
    assert len(detector.history) == 3 and detector.best_epoch == int(
        np.argmin([h["val_loss"] for h in detector.history])
    )
    again = train_detector(train, val, config)
    for a, b in zip(detector.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # fixed seed, identical weights
    save_detector(detector, tmp_path / "det")
    loaded = load_detector(tmp_path / "det")
    first, cached = embed_set(loaded, train, tmp_path / "cache")
    second, cached_again = embed_set(loaded, train, tmp_path / "cache")
    assert not cached and cached_again
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert first.vectors.shape == (16, 16) and first.ids == train.ids


def test_wrong_image_size_is_refused() -> None:
    config = DetectorConfig.for_dims(2, [32, 32], epochs=1)
    with pytest.raises(MemoScopeError, match="expects"):
        train_detector(_set(4, 0), _set(4, 1), config)


def test_mixed_precision_embeds_alike_keys_its_own_cache_and_trains(tmp_path: Path) -> None:
    """bf16 autocast (the CPU's mixed precision) gives embeddings close to fp32's, cached apart from them; detector
    training runs in it and records it; fp16 is refused on a CPU before any work."""
    config = DetectorConfig.for_dims(2, [16, 16], arch="convres", embed_dim=16, epochs=1, batch_size=8)
    train, val = _set(16, 0), _set(8, 1)
    detector = train_detector(train, val, config, precision="bf16")
    assert detector.provenance["precision"] == "bf16"
    save_detector(detector, tmp_path / "det")
    loaded = load_detector(tmp_path / "det")
    full, _ = embed_set(loaded, train, tmp_path / "cache")
    mixed, cached = embed_set(loaded, train, tmp_path / "cache", precision="bf16")
    assert not cached  # not fp32's cache entry
    cosine = (full.vectors * mixed.vectors).sum(1) / (
        np.linalg.norm(full.vectors, axis=1) * np.linalg.norm(mixed.vectors, axis=1)
    )
    assert cosine.min() > 0.99 and not np.array_equal(full.vectors, mixed.vectors)
    with pytest.raises(MemoScopeError, match="fp16 needs a GPU"):
        train_detector(train, val, config, precision="fp16")
