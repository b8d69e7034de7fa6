"""Planted-copy tests: training images altered the way a generator alters what it copies, at strength levels.

Every change works on 2D slices and 3D volumes alike. Level 1 is what a generator typically does to a
copy (the benchmark's headline numbers); levels 2 and 3 are stronger, for the robustness sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.io.preprocessing import DEFAULT_SIZE

Image = npt.NDArray[np.float32]
Perturb = Callable[[Image, np.random.Generator], Image]
LEVELS = (1, 2, 3)

# strength of each change at levels 1, 2, 3
NOISE_SIGMA = (0.05, 0.1, 0.2)  # Gaussian noise, in units of the [-1, 1] intensity range
BLUR_SIGMA = (1.0, 1.5, 2.0)  # voxels of a 64 px / 32-voxel image (scaled with finer images: _scale)
GAIN = ((1.1, 0.05), (1.25, 0.1), (0.8, -0.15))  # intensity * gain + offset
SHIFT_PX = (2.0, 4.0, 6.0)  # voxels along every axis
ROTATE_DEG = (4.0, 8.0, 12.0)  # about one axis
WARP_PX = (0.5, 1.0, 2.0)  # largest displacement of a smooth elastic deformation
ZOOM = (1.03, 1.06, 1.10)  # magnified or shrunk (either, at random) about the centre by this factor


def _noise(level: int) -> Perturb:
    return lambda x, rng: x + rng.normal(0.0, NOISE_SIGMA[level - 1], x.shape).astype(np.float32)


def _scale(x: Image) -> float:
    """Voxel-stated strengths are for a 64 px (2D) or 32-voxel (3D) image; a finer image's copy is changed as
    much relative to its size (a 2-voxel shift at 64 px is an 8-voxel shift at 256 px)."""
    return max(1.0, max(x.shape) / DEFAULT_SIZE[x.ndim])


def _blur(level: int) -> Perturb:
    def blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from scipy import ndimage

        return ndimage.gaussian_filter(x, sigma=BLUR_SIGMA[level - 1] * _scale(x)).astype(np.float32)

    return blur


def _intensity(level: int) -> Perturb:
    gain, offset = GAIN[level - 1]
    return lambda x, rng: (gain * x + offset).astype(np.float32)


def _shift(level: int) -> Perturb:
    def move(x: Image, rng: np.random.Generator) -> Image:
        from scipy import ndimage

        offsets = rng.choice([-1.0, 1.0], size=x.ndim) * SHIFT_PX[level - 1] * _scale(x)
        return ndimage.shift(x, offsets, order=1, mode="nearest").astype(np.float32)

    return move


def _rotate(level: int) -> Perturb:
    def turn(x: Image, rng: np.random.Generator) -> Image:
        from scipy import ndimage

        angle = float(rng.choice([-1.0, 1.0])) * ROTATE_DEG[level - 1]
        axes = (0, 1) if x.ndim == 2 else tuple(int(a) for a in rng.choice(3, size=2, replace=False))
        return ndimage.rotate(x, angle, axes=axes, reshape=False, order=1, mode="nearest").astype(np.float32)

    return turn


def _zoom(level: int) -> Perturb:
    """Magnified or shrunk about the centre, the size kept (a generator that reproduces a scan at another field of
    view; the edge voxels fill what a shrunk image leaves)."""

    def zoom(x: Image, rng: np.random.Generator) -> Image:
        from scipy import ndimage

        factor = ZOOM[level - 1] if rng.random() < 0.5 else 1.0 / ZOOM[level - 1]
        centre = (np.array(x.shape) - 1) / 2.0
        matrix = np.eye(x.ndim) / factor  # pull: output voxel o reads the input at centre + (o - centre) / factor
        offset = centre - matrix @ centre
        return ndimage.affine_transform(x, matrix, offset=offset, order=1, mode="nearest").astype(np.float32)

    return zoom


def _warp(level: int) -> Perturb:
    """A smooth random deformation (what a generator's imperfect reproduction of anatomy looks like)."""

    def deform(x: Image, rng: np.random.Generator) -> Image:
        from scipy import ndimage

        smooth = max(x.shape) / 10.0
        fields = [ndimage.gaussian_filter(rng.normal(size=x.shape), smooth) for _ in range(x.ndim)]
        peak = max(float(np.abs(f).max()) for f in fields) or 1.0
        grid = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in x.shape], indexing="ij")
        coords = [g + f / peak * WARP_PX[level - 1] * _scale(x) for g, f in zip(grid, fields, strict=True)]
        return ndimage.map_coordinates(x, coords, order=1, mode="nearest").astype(np.float32)

    return deform


def _mixed(level: int) -> Perturb:
    blur, shift, noise = _blur(level), _shift(level), _noise(level)
    return lambda x, rng: noise(shift(blur(x, rng), rng), rng)


CHANGES: dict[str, Callable[[int], Perturb]] = {
    "exact": lambda level: lambda x, rng: x.copy(),
    "noise": _noise,
    "blur": _blur,
    "intensity": _intensity,
    "shift": _shift,
    "rotate": _rotate,
    "warp": _warp,
    "mixed": _mixed,
    "zoom": _zoom,  # last: the changes before it draw the same random numbers as before it was added
}
PERTURBATIONS: dict[str, Perturb] = {kind: make(1) for kind, make in CHANGES.items()}


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

    @property
    def is_copy(self) -> npt.NDArray[np.bool_]:
        return self.source_index >= 0


def plant_copies(
    train: npt.NDArray[np.float32],
    unseen: npt.NDArray[np.float32],
    per_kind: int,
    seed: int = 0,
    kinds: list[str] | None = None,
    level: int = 1,
) -> PlantedSet:
    """Copy ``per_kind`` random training images with each change at ``level``; add ``unseen`` as negatives."""
    rng = np.random.default_rng(seed)
    images, sources, labels = [], [], []
    for kind in kinds or list(CHANGES):
        change = CHANGES[kind](level)
        for t in rng.choice(len(train), size=min(per_kind, len(train)), replace=False):
            images.append(np.clip(change(train[t, 0], rng), -1.0, 1.0)[None])
            sources.append(int(t))
            labels.append(kind)
    images.extend(list(unseen))
    sources.extend([-1] * len(unseen))
    labels.extend(["unseen"] * len(unseen))
    return PlantedSet(np.stack(images).astype(np.float32), np.array(sources, dtype=np.int64), labels)
