"""What discovery yields: one image on disk (a file or a DICOM series folder), its sample ID and its patient."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".nii.gz", ".nii", ".dcm", ".png", ".npy")


@dataclass(frozen=True)
class ImageRecord:
    """One image on disk: a file, or a folder holding one DICOM series."""

    path: Path
    sample_id: str
    patient_id: str
    split: str | None = None


def strip_suffix(name: str) -> str:
    """A file name without its image suffix (``a.nii.gz`` -> ``a``)."""
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
