"""Does a rebuilt demo data set match the committed one? Exactly where arithmetic allows, within stated tolerances
where floating-point resampling rounds differently from one CPU to another.

MONAI's anti-aliased resize runs in float32 through torch kernels whose vector width (SSE, AVX2, AVX-512, NEON)
changes the order of sums, so the same recipe gives values a few float32 ulps apart on different CPUs. Measured
on this project's build machine by rebuilding with torch's kernels pinned to other instruction sets
(``ATEN_CPU_CAPABILITY=default`` and ``avx2`` against the committed AVX-512 build): the float32 cubes moved by at
most 3.0e-7 (in [-1, 1]) and 16-bit PNG slices by 1 grey level in at most 7 of the 4,096 pixels of a slice.
The tolerances:

- PNG slices: at most 1 grey level of 65535 per pixel. A rounding error far below one level (3e-7 of a range of
  2 is 1e-2 of a level) can carry a value across one rounding boundary, never across two.
- NIfTI cubes: at most 1e-6 per voxel, three times the largest difference measured and still five orders below
  what a change to the recipe moves (another slice, size or intensity rule changes values by 1e-2 or more).
- Everything else (manifests, SOURCES.md), the file list, image shapes, dtypes and NIfTI affines: exact.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage
from PIL import Image

PNG_LEVELS = 1  # grey levels of 65535
NIFTI_ABS = 1e-6  # in the cubes' [-1, 1] units


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _png(built: Path, committed: Path) -> str | None:
    a, b = np.asarray(Image.open(built)), np.asarray(Image.open(committed))
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"shape/dtype {a.shape} {a.dtype} != {b.shape} {b.dtype}"
    worst = int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())
    return f"differs by {worst} grey levels (tolerance {PNG_LEVELS})" if worst > PNG_LEVELS else None


def _nifti(built: Path, committed: Path) -> str | None:
    a, b = nib.load(built), nib.load(committed)
    if not isinstance(a, SpatialImage) or not isinstance(b, SpatialImage):  # nib.load is typed as any image file
        return f"not a NIfTI image: {type(a).__name__} {type(b).__name__}"
    if not np.array_equal(a.affine, b.affine):
        return "affine differs"
    x, y = np.asarray(a.dataobj), np.asarray(b.dataobj)
    if x.shape != y.shape or x.dtype != y.dtype:
        return f"shape/dtype {x.shape} {x.dtype} != {y.shape} {y.dtype}"
    worst = float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
    return f"differs by {worst:.3g} (tolerance {NIFTI_ABS:g})" if not worst <= NIFTI_ABS else None


def differences(built: Path, committed: Path) -> list[str]:
    """Every way ``built`` departs from ``committed`` beyond the module's tolerances (empty: they match)."""
    mine, theirs = _files(built), _files(committed)
    found = [f"{name}: only in the rebuild" for name in sorted(set(mine) - set(theirs))]
    found += [f"{name}: missing from the rebuild" for name in sorted(set(theirs) - set(mine))]
    for name in sorted(set(mine) & set(theirs)):
        a, b = mine[name], theirs[name]
        if a.read_bytes() == b.read_bytes():
            continue
        if name.endswith(".png"):
            problem = _png(a, b)
        elif name.endswith((".nii", ".nii.gz")):
            problem = _nifti(a, b)
        else:
            problem = "differs (must be byte-identical)"
        if problem:
            found.append(f"{name}: {problem}")
    return found
