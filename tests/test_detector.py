"""Detector: encoders for 2D/3D, augmentation policies, save/load, cached embeddings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import core.detect.detector as detector_module
from core.common.errors import MemoScopeError
from core.detect.detector import (
    DetectorConfig,
    augmentation,
    build_encoder,
    embed_set,
    load_detector,
    save_detector,
    train_detector,
    training_schedule,
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


def _renamed(images: ImageSet, prefix: str) -> ImageSet:
    """The same images under other patients' IDs (train_and_save refuses a patient in both sets)."""
    return ImageSet(images.ids, [prefix + p for p in images.patient_ids], images.images, images.spec, images.source)


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


def test_the_training_budget_bounds_the_steps_whatever_the_set_size() -> None:
    """Epochs or max_steps, whichever is fewer; a long epoch is split so the validation loss is still taken about
    `evaluations` times; the demo's 147 images x 100 epochs keep their once-per-epoch schedule."""
    config = DetectorConfig.for_dims(2, [64, 64])
    assert (config.max_steps, config.evaluations) == (1000, 100)
    demo = training_schedule(147, config)
    assert (demo.per_epoch, demo.steps, demo.period, demo.periods, demo.patience) == (5, 500, 5, 100, 30)
    for n in (1_000, 16_000, 100_000, 1_000_000):
        schedule = training_schedule(n, config)
        assert schedule.steps == config.max_steps and schedule.periods == config.evaluations, n
    assert training_schedule(16_000, config).period == 10
    assert training_schedule(33, config.replace(epochs=1)).steps == 1  # a last batch of one image has no negatives
    assert training_schedule(34, config.replace(epochs=1)).steps == 2
    assert training_schedule(147, config.replace(stop_after=0.0)).patience == 0


def test_training_stops_at_the_budget_or_early_and_records_which(monkeypatch: pytest.MonkeyPatch) -> None:
    config = DetectorConfig.for_dims(
        2, [16, 16], arch="convres", embed_dim=16, epochs=50, batch_size=4, max_steps=7, evaluations=7, stop_after=0
    )
    train, val = _set(16, 0), _set(8, 1)
    detector = train_detector(train, val, config)
    assert [h["step"] for h in detector.history] == list(range(1, 8))  # 7 steps, not 50 epochs x 4
    assert detector.provenance["schedule"] == {
        "steps_planned": 7,
        "steps_trained": 7,
        "steps_per_epoch": 4,
        "evaluation_every": 1,
        "stopped_early": False,
    }
    # a validation loss that only rises after the first evaluation: training stops after patience = ceil(0.3 * 20)
    # = 6 further evaluations and keeps the first evaluation's weights
    rising = iter(np.arange(100.0))
    monkeypatch.setattr(detector_module, "validation_loss", lambda *a, **k: float(next(rising)))
    frozen = train_detector(train, val, config.replace(max_steps=20, evaluations=20, stop_after=0.3))
    assert frozen.provenance["schedule"]["stopped_early"] and frozen.provenance["schedule"]["steps_trained"] == 7
    assert frozen.best_epoch == 0 and len(frozen.history) == 7
    # without early stopping it runs the whole budget
    rising = iter(np.arange(100.0))
    longer = train_detector(train, val, config.replace(max_steps=20, evaluations=20, stop_after=0))
    assert longer.provenance["schedule"]["steps_trained"] == 20 and longer.best_epoch == 0


def test_a_time_budget_stops_training_at_its_second_evaluation_and_otherwise_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The projection at the second evaluation is the time so far plus the second period's for each period left; a
    clock that advances 10 s per reading makes it exact to state: readings at the start (0) and at the first two
    evaluations (10, 20) of 4 periods of 3 steps: 20 + 10 x 2 = 40 s."""
    small = {"arch": "convres", "embed_dim": 16, "epochs": 50, "batch_size": 4, "max_steps": 12, "evaluations": 4}
    config = DetectorConfig.for_dims(2, [16, 16], **small)
    train, val = _set(16, 0), _set(8, 1)
    free = train_detector(train, val, config)
    roomy = train_detector(train, val, config, budget=3600.0)
    for a, b in zip(free.model.state_dict().values(), roomy.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # within the budget the check changes nothing
    assert roomy.history == free.history
    clock = iter(np.arange(0.0, 1000.0, 10.0))
    monkeypatch.setattr(detector_module, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    over_budget = "about 1 min \\(12 steps\\), more than its 0.5 min budget"
    with pytest.raises(detector_module.TrainingOverBudget, match=over_budget) as over:
        detector_module.train_and_save(train, _renamed(val, "v"), tmp_path / "det", overrides=small, budget=30.0)
    assert over.value.projected == pytest.approx(40.0)
    assert not (tmp_path / "det").exists()  # nothing half written


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
    schedule = training_schedule(len(train), config)
    assert (schedule.per_epoch, schedule.steps, schedule.period) == (2, 6, 1)  # 3 short epochs: evaluated every step
    assert len(detector.history) == 6 and detector.best_epoch == int(
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
