"""One preprocessing spec (size and intensity rule) applied identically to every data set."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from monai.transforms import (
    Resize,
    ResizeWithPadOrCrop,
    ScaleIntensity,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
)

from core.common.errors import MemoScopeError

ResizeMode = Literal["resize", "crop_pad"]
IntensityRule = Literal["minmax", "ct", "percentile"]
DEFAULT_SIZE = {2: 64, 3: 32}  # per axis: what the default networks are sized for


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw images become network input: ``(1, *spatial_size)`` float32 in [-1, 1].

    Attributes:
        spatial_size: target size, 2 or 3 integers (H, W[, D]).
        resize: ``"resize"`` interpolates (anti-aliased) to the size; ``"crop_pad"``
            centre-crops or zero-pads without interpolation.
        intensity: ``"minmax"`` rescales each image's own min..max to [-1, 1] (the paper's
            rule); ``"ct"`` maps the Hounsfield window ``ct_window`` to [-1, 1] and clips;
            ``"percentile"`` maps each image's ``percentiles`` to [-1, 1] and clips.
        ct_window: (low, high) HU for ``"ct"``.
        percentiles: (low, high) percentiles for ``"percentile"``.
    """

    spatial_size: tuple[int, ...]
    resize: ResizeMode = "resize"
    intensity: IntensityRule = "minmax"
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    percentiles: tuple[float, float] = field(default=(1.0, 99.0))

    def __post_init__(self) -> None:
        if len(self.spatial_size) not in (2, 3) or any(int(s) < 4 for s in self.spatial_size):
            raise MemoScopeError(
                f"spatial_size {self.spatial_size} must be 2 or 3 sizes of at least 4 voxels."
            )
        if self.resize not in ("resize", "crop_pad"):
            raise MemoScopeError(f"resize {self.resize!r} must be 'resize' or 'crop_pad'.")
        if self.intensity not in ("minmax", "ct", "percentile"):
            raise MemoScopeError(
                f"intensity {self.intensity!r} must be 'minmax', 'ct' or 'percentile'."
            )
        if not self.ct_window[0] < self.ct_window[1]:
            raise MemoScopeError(f"ct_window {self.ct_window} must be (low, high) with low < high.")
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise MemoScopeError(f"percentiles {self.percentiles} must satisfy 0 <= low < high <= 100.")

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_size)

    @classmethod
    def for_dims(cls, dims: int, size: int | None = None, **rules: Any) -> PreprocessSpec:
        """A cubic/square spec: ``size`` per axis (default 64 in 2D, 32 in 3D) and the intensity rules."""
        if dims not in DEFAULT_SIZE:
            raise MemoScopeError(f"dims {dims} must be 2 or 3.")
        return cls((int(size or DEFAULT_SIZE[dims]),) * dims, **rules)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {"spatial_size", "resize", "intensity", "ct_window", "percentiles"}
        unknown = set(data) - known
        if unknown:
            raise MemoScopeError(f"preprocessing spec has unknown fields {sorted(unknown)}.")
        values = dict(data)
        for key in ("spatial_size", "ct_window", "percentiles"):
            if key in values:
                values[key] = tuple(values[key])
        values["spatial_size"] = tuple(int(s) for s in values["spatial_size"])
        return cls(**values)


def _intensity_transform(spec: PreprocessSpec) -> Any:
    if spec.intensity == "minmax":
        return ScaleIntensity(minv=-1.0, maxv=1.0)
    if spec.intensity == "ct":
        low, high = spec.ct_window
        return ScaleIntensityRange(a_min=low, a_max=high, b_min=-1.0, b_max=1.0, clip=True)
    low, high = spec.percentiles
    return ScaleIntensityRangePercentiles(lower=low, upper=high, b_min=-1.0, b_max=1.0, clip=True)


def _size_transform(spec: PreprocessSpec) -> Any:
    if spec.resize == "crop_pad":
        return ResizeWithPadOrCrop(spec.spatial_size)
    mode = "bilinear" if spec.spatial_dims == 2 else "trilinear"
    return Resize(spec.spatial_size, mode=mode, anti_aliasing=True)


def is_constant(image: np.ndarray) -> bool:
    """True when an image has no intensity range (min == max), e.g. an empty slice."""
    return bool(np.ptp(image) == 0)


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Apply ``spec`` to one image.

    The intensity rule runs on the raw values (so HU and percentiles are exact), then the
    size change; the result is clipped to [-1, 1].

    Args:
        image: ``(1, *spatial)`` raw intensities, any real dtype (never down-cast first).

    Returns:
        ``(1, *spec.spatial_size)`` float32 in [-1, 1].
    """
    if image.ndim != spec.spatial_dims + 1 or image.shape[0] != 1:
        raise ValueError(f"expected (1, {spec.spatial_dims} spatial dims), got {image.shape}")
    raw = np.asarray(image, dtype=np.float64)
    if spec.intensity == "minmax" and is_constant(raw):
        raise ValueError("image is constant (min == max); min-max scaling is undefined")
    scaled = np.asarray(_intensity_transform(spec)(raw), dtype=np.float32)
    sized = np.asarray(_size_transform(spec)(scaled), dtype=np.float32)
    return np.clip(sized, -1.0, 1.0)


def preprocess_batch(images: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Apply ``spec`` to each image: list of ``(1, *spatial_i)`` -> ``(N, 1, *size)`` float32."""
    if not images:
        return np.zeros((0, 1, *spec.spatial_size), dtype=np.float32)
    return np.stack([preprocess(image, spec) for image in images])
