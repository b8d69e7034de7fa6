"""Readers: one image file as the array a viewer shows, chosen by suffix (:data:`READERS`), with MONAI's readers.

Adding an image format is one row of :data:`READERS`; discovery looks for its suffixes (:data:`SUFFIXES`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.common.errors import MemoScopeError


def _read_with(reader: object, path: Path) -> tuple[np.ndarray, Any]:
    """The image's array and the reader's own object for it (a DICOM file's dataset, a series' list of them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image_obj = reader.read(str(path))  # type: ignore[attr-defined]
        array, _ = reader.get_data(image_obj)  # type: ignore[attr-defined]
    failed = [w for w in caught if "Failed to read" in str(w.message)]
    if failed:
        raise MemoScopeError(f"{path}: {len(failed)} DICOM slice(s) could not be read.")
    return np.asarray(array), image_obj


def _dicom() -> object:
    from monai.data import PydicomReader  # MONAI loads with the first image, not with this module

    return PydicomReader(swap_ij=False)


def _nifti() -> object:
    from monai.data import NibabelReader

    return NibabelReader()


def _png() -> object:
    from monai.data import PILReader

    return PILReader(converter=_as_displayed, reverse_indexing=False)


def _numpy() -> object:
    from monai.data import NumpyReader

    return NumpyReader(allow_pickle=False)  # an .npy never runs code


# The suffix-to-reader table (longest suffix first: ``.nii.gz`` before ``.nii``). A folder is a DICOM series.
READERS: dict[str, tuple[str, Callable[[], object]]] = {
    ".nii.gz": ("NIfTI", _nifti),
    ".nii": ("NIfTI", _nifti),
    ".dcm": ("DICOM", _dicom),
    ".png": ("PNG", _png),
    ".npy": ("NPY", _numpy),
}
SUFFIXES = tuple(READERS)  # what discovery looks for


def reader_for(path: Path) -> object:
    """The MONAI reader for ``path`` (a file by its suffix; a folder is a DICOM series)."""
    if path.is_dir():
        return _dicom()
    name = path.name.lower()
    for suffix, (_, make) in READERS.items():
        if name.endswith(suffix):
            return make()
    formats = ", ".join(dict.fromkeys(kind for kind, _ in READERS.values()))
    raise MemoScopeError(f"{path}: unsupported file type; use {formats} ({', '.join(SUFFIXES)}).")


def _as_displayed(image: Any) -> Any:
    """A PIL image as a viewer shows it: a palette image's colours, not its palette indices (``quantize()`` and many
    image tools save greyscale slices that way, with indices in any order); a 1-bit image as 0/255 grey."""
    if image.mode in ("P", "PA"):
        return image.convert("RGBA")
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    return image


def _dicom_as_displayed(path: Path, array: np.ndarray, header: Any) -> np.ndarray:
    """What a DICOM viewer shows, in the modality's values: MONAI's reader has applied the rescale slope and
    intercept; here a Modality LUT Sequence (when there is no rescale), a VOI LUT Sequence (a display curve that only
    the header knows), and MONOCHROME1 (low values shown bright: most X-ray) turned around so that bright is high,
    as in every other file. Window centre/width is not applied: it is a linear map with clipping, which the scan's
    intensity rule (``--intensity``) decides for every set alike. ``header``: the dataset MONAI's reader read the
    pixels from (a series: its first slice's), so no file is read twice."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    if isinstance(header, list):
        header = header[0]
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if int(header.get("SamplesPerPixel", 1) or 1) > 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise MemoScopeError(f"{path}: a colour DICOM image ({photometric}); MemoScope compares greyscale scans only.")
    values = np.asarray(array)
    if "ModalityLUTSequence" in header and "RescaleSlope" not in header:
        values = apply_modality_lut(values, header)
    if "VOILUTSequence" in header:
        values = apply_voi(values, header)
    if photometric == "MONOCHROME1":
        wide = values.astype(np.float64)
        values = wide.max() + wide.min() - wide  # the same range, bright where the viewer shows bright
    return np.asarray(values)


def read_raw(path: str | Path) -> np.ndarray:
    """Read one image or DICOM series with MONAI's readers, as a viewer displays it.

    A palette PNG gives its colours' grey values (not palette indices); a DICOM file its modality values with the
    Modality and VOI LUT sequences applied and MONOCHROME1 turned so that bright is high (:func:`_dicom_as_displayed`).
    A copy saved in any of these ways reads as the image it shows.

    Returns:
        ``(H, W)`` or ``(X, Y, Z)`` array: singleton axes dropped, DICOM rescale applied.
    """
    from monai.data import PydicomReader

    path = Path(path)
    reader = reader_for(path)
    try:
        array, image_obj = _read_with(reader, path)
        if isinstance(reader, PydicomReader):
            array = _dicom_as_displayed(path, array, image_obj)
    except MemoScopeError:
        raise
    except Exception as exc:  # readers raise OSError, EOFError, zlib, pydicom and PIL errors
        raise MemoScopeError(
            f"{path}: cannot read the image ({type(exc).__name__}: {exc}); the file may be "
            "truncated or of another format. Replace it, or pass --skip-bad to leave it out."
        ) from exc
    if array.ndim == 3 and path.name.lower().endswith(".png") and array.shape[-1] in (2, 3, 4):
        colour = array[..., : 1 if array.shape[-1] == 2 else 3]  # grey+alpha keeps its grey channel
        if not all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(colour.shape[-1])):
            raise MemoScopeError(f"{path}: a colour PNG; save it as single-channel greyscale.")
        array = colour[..., 0]
    return np.squeeze(array)


def check_values(path: Path, array: np.ndarray) -> None:
    if array.size == 0 or array.ndim < 2 or min(array.shape) < 2:
        raise MemoScopeError(
            f"{path}: shape {array.shape} is not an image (MemoScope reads 2D images and 3D volumes of at least 2 "
            "voxels per axis); remove the file or export it again."
        )
    if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.number):  # a 1-bit image is numeric enough
        raise MemoScopeError(f"{path}: voxel type {array.dtype} is not numeric.")
    if np.iscomplexobj(array):
        raise MemoScopeError(
            f"{path}: complex voxels ({array.dtype}); save the magnitude (np.abs) so no part is dropped silently."
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise MemoScopeError(f"{path}: {bad} NaN/Inf voxels; fix or remove the image.")
