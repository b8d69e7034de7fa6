"""Display arithmetic for the review viewer: window/level, comparison overlays, orthogonal planes.

Pure functions over arrays (no Streamlit): images stay float until the very last step, which
maps a window to uint8 for a PNG; 16-bit or HU data are never down-cast before windowing. ``gallery`` reads a
folder of samples into such thumbnails, so that no page reads image files itself.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from plotly.colors import sample_colorscale

from core.common.errors import MemoScopeError
from core.io.discover import discover
from core.io.readers import read_raw

# OHIF's CT presets in Hounsfield units: (width, level).
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (2500.0, 480.0),
    "brain": (80.0, 40.0),
    "liver": (150.0, 90.0),
}
# MR and X-ray have no calibrated units: windows from percentiles of the images shown.
PERCENTILE_PRESETS: dict[str, tuple[float, float]] = {
    "full range": (0.0, 100.0),
    "1-99 %": (1.0, 99.0),
    "5-95 %": (5.0, 95.0),
    "0.5-99.5 %": (0.5, 99.5),
}
PLANES = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class Window:
    """A display window: values in ``[level - width / 2, level + width / 2]`` map to black..white."""

    width: float
    level: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        return self.level + self.width / 2


def percentile_window(
    images: list[npt.NDArray[np.floating]] | npt.NDArray[np.floating], low: float, high: float
) -> Window:
    """One window for all ``images`` together (so that both sides of a pair are shown alike)."""
    values = (
        np.concatenate([np.asarray(i, dtype=np.float64).ravel() for i in images])
        if isinstance(images, list)
        else np.asarray(images, np.float64).ravel()
    )
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if hi <= lo:
        hi = lo + 1e-6
    return Window(hi - lo, (hi + lo) / 2)


def apply_window(image: npt.ArrayLike, window: Window) -> npt.NDArray[np.uint8]:
    """Map ``image`` through ``window`` to uint8 (computed in float64; the last step only)."""
    x = (np.asarray(image, dtype=np.float64) - window.low) / max(window.width, 1e-12)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _diverging_lut(name: str = "RdBu_r", size: int = 256) -> npt.NDArray[np.uint8]:
    """``(size, 3)`` RGB of plotly's diverging colour scale (blue below zero, white at zero, red above)."""
    colours = sample_colorscale(name, list(np.linspace(0.0, 1.0, size)), colortype="tuple")
    return np.round(np.array(colours, dtype=np.float64) * 255.0).astype(np.uint8)


DIFFERENCE_LUT = _diverging_lut()


def difference_limit(window: Window) -> float:
    """The difference colour scale: +-half the display window, the same for every pair shown in that window
    (a near-identical pair is near-white; a contrast as large as the window saturates)."""
    return window.width / 2


def difference(a: npt.ArrayLike, b: npt.ArrayLike, limit: float) -> npt.NDArray[np.uint8]:
    """Signed difference ``a - b`` as RGB on a fixed symmetric scale ``[-limit, +limit]``: white at zero,
    red where the synthetic image is brighter, blue where it is darker (see :func:`difference_bar`)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    x = np.clip(d / max(limit, 1e-12), -1.0, 1.0)
    return DIFFERENCE_LUT[np.round((x + 1.0) / 2.0 * (len(DIFFERENCE_LUT) - 1)).astype(np.int64)]


def difference_bar(width: int = 256, height: int = 12) -> npt.NDArray[np.uint8]:
    """The colour bar of :func:`difference`: ``-limit`` on the left, 0 in the middle, ``+limit`` on the right."""
    x = np.linspace(-1.0, 1.0, width)
    row = DIFFERENCE_LUT[np.round((x + 1.0) / 2.0 * (len(DIFFERENCE_LUT) - 1)).astype(np.int64)]
    return np.repeat(row[None], height, axis=0)


def checkerboard(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], tiles: int = 8) -> npt.NDArray[np.uint8]:
    """Alternate tiles of two equally sized displayed images (3D Slicer's Compare Volumes overlay)."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    rows = (np.arange(a.shape[0]) * tiles // a.shape[0])[:, None]
    cols = (np.arange(a.shape[1]) * tiles // a.shape[1])[None, :]
    return np.where((rows + cols) % 2 == 0, a, b)


def orthogonal_slice(volume: npt.NDArray[np.floating], plane: str, index: int) -> npt.NDArray[np.floating]:
    """One plane of a ``(X, Y, Z)`` volume, rotated for display (anterior/superior up)."""
    if plane == "axial":
        cut = volume[:, :, index]
    elif plane == "coronal":
        cut = volume[:, index, :]
    elif plane == "sagittal":
        cut = volume[index, :, :]
    else:
        raise ValueError(f"plane {plane!r} must be one of {PLANES}")
    return np.rot90(cut)


def plane_size(shape: tuple[int, ...], plane: str) -> int:
    """Number of slices along ``plane``'s normal."""
    return shape[{"sagittal": 0, "coronal": 1, "axial": 2}[plane]]


def crosshair_at(shape: tuple[int, ...], plane: str, position: dict[str, int]) -> tuple[int, int]:
    """Where the other two planes cut ``plane`` as displayed by :func:`orthogonal_slice`: ``(row, column)``.

    ``position`` holds the slice index of each plane (``axial`` = z, ``coronal`` = y, ``sagittal`` = x).
    """
    nx, ny, nz = shape
    x, y, z = position["sagittal"], position["coronal"], position["axial"]
    return {
        "axial": (ny - 1 - y, x),
        "coronal": (nz - 1 - z, x),
        "sagittal": (nz - 1 - z, y),
    }[plane]


CROSSHAIR = np.array([255, 200, 0], dtype=np.uint8)  # amber: visible on grey and on the difference colours


def with_crosshair(image: npt.NDArray[np.uint8], row: int, col: int, scale: int = 1) -> npt.NDArray[np.uint8]:
    """``image`` (grey or RGB) enlarged by ``scale`` with a one-pixel crosshair through pixel ``(row, col)``."""
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    big = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1).copy()
    r, c = row * scale + scale // 2, col * scale + scale // 2
    big[r, :] = CROSSHAIR
    big[:, c] = CROSSHAIR
    return big


def png_bytes(image: npt.NDArray[np.uint8], scale: int = 1) -> bytes:
    """Lossless PNG of a uint8 grey ``(H, W)`` or RGB ``(H, W, 3)`` image, optionally enlarged by pixel
    repetition (no smoothing)."""
    if scale > 1:
        image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def flicker_gif(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], scale: int = 1, ms: int = 600) -> bytes:
    """A two-frame looping GIF alternating the two windowed images (8-bit grey: no loss after windowing)."""
    if scale > 1:
        a, b = (np.kron(x, np.ones((scale, scale), dtype=np.uint8)) for x in (a, b))
    frames = [Image.fromarray(x, mode="L") for x in (a, b)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=ms, loop=0)
    return buffer.getvalue()


@dataclass(frozen=True)
class Gallery:
    """The first samples of a folder as PNG thumbnails (the middle axial plane of a volume, windowed 1-99 %).

    Attributes:
        total: how many images the folder holds (0 when it holds none or does not exist).
        thumbnails: ``(file name, PNG bytes)`` of the first ``limit``, in file order.
    """

    total: int
    thumbnails: list[tuple[str, bytes]]


def gallery(folder: str | Path, limit: int = 24) -> Gallery:
    """Thumbnails of the first ``limit`` images under ``folder``; an empty or missing folder gives none."""
    folder = Path(folder)
    try:
        files = sorted(Path(r.path) for r in discover(folder)) if folder.is_dir() else []
    except MemoScopeError:  # an empty folder: nothing generated yet
        files = []
    thumbnails = []
    for file in files[:limit]:
        image: npt.NDArray[np.floating] = np.squeeze(read_raw(file)).astype(np.float64)
        if image.ndim == 3:
            image = orthogonal_slice(image, PLANES[0], image.shape[2] // 2)
        thumbnails.append((file.name, png_bytes(apply_window(image, percentile_window(image, 1, 99)))))
    return Gallery(len(files), thumbnails)
