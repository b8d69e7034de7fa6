"""Planted-copy tests: training images altered the way a generator alters what it copies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

Perturb = Callable[[npt.NDArray[np.float32], np.random.Generator], npt.NDArray[np.float32]]


def _noise(x: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    return x + rng.normal(0.0, 0.05, x.shape).astype(np.float32)


def _blur(x: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    return ndimage.gaussian_filter(x, sigma=1.0).astype(np.float32)


def _intensity(x: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    return (1.1 * x + 0.05).astype(np.float32)


def _shift(x: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    offsets = rng.choice([-2.0, 2.0], size=x.ndim)
    return ndimage.shift(x, offsets, order=1, mode="nearest").astype(np.float32)


def _rotate(x: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    return ndimage.rotate(
        x, float(rng.choice([-4.0, 4.0])), axes=(0, 1), reshape=False, order=1, mode="nearest"
    ).astype(np.float32)


def _mixed(x: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    return _noise(_shift(_blur(x, rng), rng), rng)


PERTURBATIONS: dict[str, Perturb] = {
    "exact": lambda x, rng: x.copy(),
    "noise": _noise,
    "blur": _blur,
    "intensity": _intensity,
    "shift": _shift,
    "rotate": _rotate,
    "mixed": _mixed,
}


@dataclass(frozen=True)
class PlantedSet:
    """Synthetic stand-in: planted copies of training images among real unseen images.

    Attributes:
        images: ``(N, 1, *S)`` float32 in [-1, 1].
        source_index: training row each copy came from; -1 for a real unseen image.
        kind: the perturbation name, or ``"unseen"``.
    """

    images: npt.NDArray[np.float32]
    source_index: npt.NDArray[np.int64]
    kind: list[str]


def plant_copies(
    train: npt.NDArray[np.float32],
    unseen: npt.NDArray[np.float32],
    per_kind: int,
    seed: int = 0,
    kinds: list[str] | None = None,
) -> PlantedSet:
    """Copy ``per_kind`` random training images with each perturbation; add ``unseen`` as negatives."""
    rng = np.random.default_rng(seed)
    images, sources, labels = [], [], []
    for kind in kinds or list(PERTURBATIONS):
        for t in rng.choice(len(train), size=per_kind, replace=False):
            images.append(np.clip(PERTURBATIONS[kind](train[t, 0], rng), -1.0, 1.0)[None])
            sources.append(int(t))
            labels.append(kind)
    images.extend(list(unseen))
    sources.extend([-1] * len(unseen))
    labels.extend(["unseen"] * len(unseen))
    return PlantedSet(np.stack(images).astype(np.float32), np.array(sources, dtype=np.int64), labels)
