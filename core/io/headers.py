"""Image shapes read from file headers, without decoding pixels: how large a set's scans are before it is loaded."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from core.common.errors import MemoScopeError
from core.io.records import ImageRecord


def _dicom_shape(path: Path) -> tuple[int, ...]:
    import pydicom

    files = sorted(p for p in path.iterdir() if p.name.lower().endswith(".dcm")) if path.is_dir() else [path]
    header = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["Rows", "Columns", "NumberOfFrames"])
    rows, columns = int(getattr(header, "Rows", 0) or 0), int(getattr(header, "Columns", 0) or 0)
    frames = int(getattr(header, "NumberOfFrames", 1) or 1) * len(files)
    return (rows, columns, frames) if frames > 1 else (rows, columns)


def native_shape(path: str | Path) -> tuple[int, ...]:
    """The spatial shape of an image file or DICOM series as stored (singleton axes dropped), from its header.

    Raises:
        MemoScopeError: the header cannot be read (names the file).
    """
    path = Path(path)
    name = path.name.lower()
    try:
        if path.is_dir() or name.endswith(".dcm"):
            shape = _dicom_shape(path)
        elif name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            shape = tuple(nib.load(path).shape)  # type: ignore[attr-defined]
        elif name.endswith(".png"):
            from PIL import Image

            with Image.open(path) as image:
                shape = (image.height, image.width)
        elif name.endswith(".npy"):
            import numpy as np

            shape = tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        else:
            raise MemoScopeError(f"{path}: unsupported file type; use NIfTI, DICOM, PNG or NPY.")
    except MemoScopeError:
        raise
    except Exception as exc:  # readers raise OSError, EOFError, zlib, pydicom and PIL errors
        raise MemoScopeError(f"{path}: cannot read the image header ({type(exc).__name__}: {exc}).") from exc
    return tuple(int(s) for s in shape if s != 1)


def largest_side(records: Iterable[ImageRecord], axes: tuple[int, ...] | None = None) -> int:
    """The longest side among the records' images (``axes``: only those axes of 3D files, e.g. a slice's plane;
    2D files count whole). Unreadable headers count as 0: the loader reports them, by name, with the pixels."""
    longest = 0
    for record in records:
        try:
            shape = native_shape(record.path)
        except MemoScopeError:
            continue
        sides = [shape[a] for a in axes if a < len(shape)] if axes is not None and len(shape) == 3 else shape
        longest = max([longest, *sides])
    return longest
