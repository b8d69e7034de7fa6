"""What discovery yields: one image on disk (a file or a DICOM series folder), its sample ID and its patient."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from core.io.readers import SUFFIXES


@dataclass(frozen=True)
class ImageRecord:
    """One image on disk: a file, or a folder holding one DICOM series."""

    path: Path
    sample_id: str
    patient_id: str
    split: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "patient_id", canonical_patient(self.patient_id))


def canonical_patient(patient_id: str) -> str:
    """One spelling per patient ID: Unicode NFKC (a composed and a decomposed umlaut, the macOS file-name form, are
    one letter), invisible characters (zero-width spaces, joiners, BOMs, soft hyphens, controls) removed, and
    surrounding space trimmed. Every grouping, count and leak check sees IDs in this form; case is compared
    without (:func:`core.io.splits.patient_key`)."""
    normal = unicodedata.normalize("NFKC", patient_id)
    return "".join(c for c in normal if unicodedata.category(c) not in ("Cf", "Cc")).strip()


def strip_suffix(name: str) -> str:
    """A file name without its image suffix (``a.nii.gz`` -> ``a``)."""
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
