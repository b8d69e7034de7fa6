"""Patient splits and leak checks: patient keys, the train/validation split by patient, and the checks that no
patient or image is on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.common.errors import MemoScopeError
from core.io.load import ImageSet
from core.io.records import ImageRecord, canonical_patient


def patient_key(patient_id: str) -> str:
    """How patient IDs are compared: case, Unicode form, invisible characters and surrounding space do not make
    another patient (:func:`core.io.records.canonical_patient`)."""
    return canonical_patient(patient_id).casefold()


def image_hashes(images: ImageSet) -> list[str]:
    """SHA-256 of each preprocessed image (what the detector sees), for exact-duplicate checks."""
    return [hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images.images]


def check_record_leaks(train: list[ImageRecord], val: list[ImageRecord], train_source: str, val_source: str) -> None:
    """The same leak checks on files, before anything is loaded: shared patients, byte-identical files."""
    train_keys = {patient_key(r.patient_id) for r in train}
    shared = sorted({r.patient_id for r in val if patient_key(r.patient_id) in train_keys})
    if shared:
        raise MemoScopeError(
            f"{len(shared)} patient(s) appear in both training ({train_source}) and validation ({val_source}), "
            f"e.g. {shared[:3]} (IDs compared without case); split by patient (python -m core split)."
        )
    digests = {_file_digest(r.path): r for r in train if Path(r.path).is_file()}
    for record in val:
        twin = digests.get(_file_digest(record.path)) if Path(record.path).is_file() else None
        if twin is not None:
            raise MemoScopeError(
                f"validation file {record.path} is byte-identical to training file {twin.path}: a leaked copy would "
                "raise the threshold and hide real copies. Remove it from one of the sets."
            )


def _file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_patient_overlap(train: ImageSet, val: ImageSet) -> None:
    """Refuse a validation set that leaks training data: calibration needs real images of unseen patients.

    Checks, before any work: 1. no patient in both sets (IDs compared case-insensitively);
    2. no validation image identical to a training image after preprocessing, whatever its name.
    """
    train_keys = {patient_key(p) for p in train.patient_ids}
    shared = sorted({p for p in val.patient_ids if patient_key(p) in train_keys})
    if shared:
        raise MemoScopeError(
            f"{len(shared)} patient(s) appear in both training ({train.source}) and validation "
            f"({val.source}), e.g. {shared[:3]} (IDs compared without case); split by patient (python -m core split)."
        )
    seen = {h: i for i, h in enumerate(image_hashes(train))}
    same = [(j, seen[h]) for j, h in enumerate(image_hashes(val)) if h in seen]
    if same:
        j, i = same[0]
        raise MemoScopeError(
            f"{len(same)} validation image(s) are identical to training images, e.g. {val.ids[j]} ({val.source}) = "
            f"{train.ids[i]} ({train.source}): a leaked copy would raise the threshold and hide real copies. "
            "Remove it from one of the sets."
        )


def split_by_patient(patient_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split samples into training and validation so that no patient is in both.

    Returns:
        (train_indices, val_indices), int64 arrays in ascending order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise MemoScopeError(f"val_fraction {val_fraction} must be between 0 and 1.")
    keys = [patient_key(p) for p in patient_ids]
    patients = sorted(set(keys))
    if len(patients) < 2:
        raise MemoScopeError("a patient-level split needs at least 2 patients.")
    n_val = min(len(patients) - 1, max(1, round(val_fraction * len(patients))))
    order = np.random.default_rng(seed).permutation(len(patients))
    val_patients = {patients[i] for i in order[:n_val]}
    is_val = np.array([k in val_patients for k in keys])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
