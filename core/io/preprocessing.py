"""One preprocessing spec (size and intensity rule) applied identically to every data set.

MONAI is imported where an image is transformed, not with the module: reading a study's spec (the app's first page)
does not pay for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import numpy as np

from core.common.config import Config
from core.common.errors import MemoScopeError


class ResizeMode(StrEnum):
    RESIZE = "resize"
    CROP_PAD = "crop_pad"


class IntensityRule(StrEnum):
    MINMAX = "minmax"
    CT = "ct"
    PERCENTILE = "percentile"


DEFAULT_SIZE = {2: 64, 3: 32}  # per axis: what the default networks are sized for


@dataclass(frozen=True)
class PreprocessSpec(Config):
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
    resize: ResizeMode = ResizeMode.RESIZE
    intensity: IntensityRule = IntensityRule.MINMAX
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    percentiles: tuple[float, float] = (1.0, 99.0)

    def describe(self) -> str:
        """One plain sentence (the report's body; the settings themselves go to its appendix)."""
        size = " x ".join(str(v) for v in self.spatial_size)
        fit = "resized" if self.resize == ResizeMode.RESIZE else "cropped or padded"
        scale = {
            IntensityRule.MINMAX: "each image's own minimum to maximum",
            IntensityRule.CT: f"the CT window {self.ct_window[0]:g} to {self.ct_window[1]:g} HU",
            IntensityRule.PERCENTILE: (
                f"each image's {self.percentiles[0]:g}th to {self.percentiles[1]:g}th percentile"
            ),
        }.get(self.intensity, str(self.intensity))
        unit = "pixels" if len(self.spatial_size) == 2 else "voxels"
        return f"every image {fit} to {size} {unit}, intensities scaled from {scale} to [-1, 1]"

    def settings(self) -> dict[str, Any]:
        """The settings in force: ``to_dict`` without the rules' parameters that the chosen rule does not use (an
        MR study's report once listed a CT window it never applied)."""
        unused = {
            IntensityRule.CT: ("percentiles",),
            IntensityRule.PERCENTILE: ("ct_window",),
        }.get(self.intensity, ("ct_window", "percentiles"))
        return {k: v for k, v in self.to_dict().items() if k not in unused}

    def validate(self) -> None:
        object.__setattr__(self, "spatial_size", tuple(int(s) for s in self.spatial_size))
        if len(self.spatial_size) not in (2, 3) or any(s < 4 for s in self.spatial_size):
            raise MemoScopeError(f"spatial_size {self.spatial_size} must be 2 or 3 sizes of at least 4 voxels.")
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

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> PreprocessSpec:
        """The spec of flat options (``dims``, ``size``, ``resize``, ...; ``None`` = default), checking ``slices``."""
        rules = {k: options[k] for k in SPEC_OPTIONS if options.get(k) is not None}
        dims, size = int(rules.pop("dims", 2)), rules.pop("size", None)
        if options.get("slices") and dims != 2:
            raise MemoScopeError("--slices takes 2D slices of 3D files; use it with --dims 2.")
        return cls.for_dims(dims, size, **rules)


SPEC_OPTIONS = ("dims", "size", "resize", "intensity", "ct_window", "percentiles")
C = TypeVar("C", bound=Config)


def config_from_options(cls: type[C], options: dict[str, Any]) -> C:
    """Flat options (CLI flags, a page's form, a job request) -> a config; the spec options become its ``spec``.

    The one path from user input to a config: ``dims``/``size``/``resize``/``intensity``/``ct_window``/
    ``percentiles`` build a :class:`PreprocessSpec` when ``cls`` has a ``spec`` field; ``None`` means default.
    """
    values = {k: v for k, v in options.items() if v is not None}
    if "spec" in getattr(cls, "__dataclass_fields__", {}) and "spec" not in values:
        values["spec"] = PreprocessSpec.from_options(values).to_dict()
    return cls.from_dict({k: v for k, v in values.items() if k not in SPEC_OPTIONS})


def _intensity_transform(spec: PreprocessSpec) -> Any:
    from monai.transforms import ScaleIntensity, ScaleIntensityRange, ScaleIntensityRangePercentiles

    if spec.intensity == "minmax":
        return ScaleIntensity(minv=-1.0, maxv=1.0)
    if spec.intensity == "ct":
        low, high = spec.ct_window
        return ScaleIntensityRange(a_min=low, a_max=high, b_min=-1.0, b_max=1.0, clip=True)
    low, high = spec.percentiles
    return ScaleIntensityRangePercentiles(lower=low, upper=high, b_min=-1.0, b_max=1.0, clip=True)


def _size_transform(spec: PreprocessSpec) -> Any:
    from monai.transforms import Resize, ResizeWithPadOrCrop

    if spec.resize == "crop_pad":
        return ResizeWithPadOrCrop(spec.spatial_size)
    mode = "bilinear" if spec.spatial_dims == 2 else "trilinear"
    return Resize(spec.spatial_size, mode=mode, anti_aliasing=True)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Preprocess with one torch thread wherever it runs: MONAI's anti-aliased resize of a large volume rounds
    differently with another thread count, and an image must not depend on who read it or on the machine's cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def is_constant(image: np.ndarray) -> bool:
    """True when an image has no intensity range (min == max), e.g. an empty slice."""
    return bool(np.min(image) == np.max(image))  # not ptp: max - min overflows for values near the float limit


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
    if raw.size == 0 or not np.isfinite(raw).all():
        raise ValueError("image has no voxels or holds NaN/Inf values")
    if spec.intensity == "minmax" and is_constant(raw):
        raise ValueError("image is constant (min == max); min-max scaling is undefined")
    with np.errstate(over="ignore"):  # the overflow is what this tests for
        spread = np.ptp(raw)
    if spec.intensity != "ct" and not np.isfinite(spread):
        # values near the float64 limit (+-1.7e308): max - min overflows and the scaled image would be NaN. The
        # minmax and percentile rules do not depend on the values' scale, so divide by the largest magnitude first.
        raw = raw / np.abs(raw).max()
    scaled = np.asarray(_intensity_transform(spec)(raw), dtype=np.float32)
    sized = np.asarray(_size_transform(spec)(scaled), dtype=np.float32)
    if not np.isfinite(sized).all():
        raise ValueError("scaling gave NaN/Inf values; check the image's values (extremes, empty regions)")
    return np.clip(sized, -1.0, 1.0)


def resize_images(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Bring already-scaled ``(N, 1, *S)`` images to ``spec``'s grid with its size rule only (the intensity rule
    has been applied): what loading at ``spec`` would have given, e.g. planted copies made on a finer grid."""
    transform = _size_transform(spec)
    with one_torch_thread():
        resized = [np.asarray(transform(image), dtype=np.float32) for image in images]
    return np.clip(np.stack(resized), -1.0, 1.0) if resized else np.zeros((0, 1, *spec.spatial_size), np.float32)
