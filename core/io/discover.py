"""Discovery: the image files of a folder or a CSV manifest, with their sample IDs, roles and patients.

Nothing is read here but names, manifests and (for DICOM folders) series UIDs; pixel reading is :mod:`core.io.readers`.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from enum import StrEnum
from pathlib import Path

from core.common.errors import MemoScopeError
from core.common.tables import unescape_cell
from core.io.patients import PatientGrouping, PatientRule, assign_patients, folder_patient
from core.io.readers import SUFFIXES
from core.io.records import ImageRecord, canonical_patient


class Role(StrEnum):
    """What a set is to a scan: the generator's training scans, held-out real scans, or its samples."""

    TRAIN = "train"
    VAL = "val"
    SYNTHETIC = "synthetic"


_ROLE_NAMES: dict[str, set[str]] = {
    "train": {"train", "training"},
    "val": {"val", "validation", "valid"},
    "synthetic": {"synthetic", "generated", "syn"},
}


KNOWN_SPLITS = set().union(*_ROLE_NAMES.values()) | {"test", "exclude", "excluded"}


def _has_image_suffix(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def _series_uid(path: Path) -> str:
    try:
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception as exc:  # pydicom raises many types for a damaged header
        raise MemoScopeError(f"{path}: not a readable DICOM file ({type(exc).__name__}).") from exc
    return str(getattr(header, "SeriesInstanceUID", ""))


def _series_uid_or_none(path: Path) -> str | None:
    try:
        return _series_uid(path)
    except MemoScopeError:
        return None


def _dicom_units(root: Path, directory: Path, files: list[Path]) -> list[tuple[Path, str]]:
    """Decide whether the .dcm files of one folder are one series or separate images."""
    rel_dir = directory.relative_to(root).as_posix()
    if len(files) == 1:
        return [(files[0], files[0].relative_to(root).as_posix())]
    found = {f: _series_uid_or_none(f) for f in files}
    readable = [f for f in files if found[f] is not None]
    uids = [found[f] for f in readable]
    if len(set(uids)) == 1 and uids[0] and len(readable) > 1:  # one series (an unreadable slice fails it when read)
        return [(directory, rel_dir if rel_dir != "." else directory.name)]
    if len(set(uids)) == len(uids):  # separate images; an unreadable file is its own unit, refused or skipped
        return [(f, f.relative_to(root).as_posix()) for f in files]  # when read (--skip-bad), as any other file
    raise MemoScopeError(
        f"{directory}: holds {len(set(uids))} DICOM series mixed together; put each series "
        "in its own folder or list them in a CSV manifest."
    )


def _walk_files(root: Path) -> list[Path]:
    """Image files under ``root``, following symlinked patient folders (Path.rglob does not before Python 3.13)
    but never entering the same real folder twice (a link cycle)."""
    seen: set[str] = set()
    found = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        found += [Path(folder) / n for n in names if _has_image_suffix(Path(n)) and not n.startswith(".")]
    return [f for f in found if f.is_file()]


def discover_folder(root: Path) -> list[ImageRecord]:
    """Find every image under ``root`` (recursively), with IDs from relative paths."""
    files = sorted(_walk_files(root))
    dicom_by_dir: dict[Path, list[Path]] = defaultdict(list)
    units: list[tuple[Path, str]] = []
    for path in files:
        if path.name.lower().endswith(".dcm"):
            dicom_by_dir[path.parent].append(path)
        else:
            units.append((path, path.relative_to(root).as_posix()))
    for directory, dcm_files in sorted(dicom_by_dir.items()):
        units.extend(_dicom_units(root, directory, dcm_files))
    units.sort(key=lambda unit: unit[1])
    return [ImageRecord(path=path, sample_id=sid, patient_id=folder_patient(sid)) for path, sid in units]


def discover_manifest(manifest: Path) -> list[ImageRecord]:
    """Read a CSV manifest with columns ``path,patient_id[,split]`` (paths relative to it)."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:  # -sig: a BOM from Excel is not a header
            rows = list(csv.DictReader(handle))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MemoScopeError(f"{manifest}: cannot read the CSV manifest ({exc}).") from exc
    missing = {"path", "patient_id"} - set(header)
    if not rows or missing:
        raise MemoScopeError(
            f"{manifest}: a manifest needs a header with columns path,patient_id[,split] and at "
            f"least one row; missing {sorted(missing) or 'rows'}."
        )
    records: list[ImageRecord] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        rel = unescape_cell((row.get("path") or "").strip())  # as MemoScope's own manifests escape formulas
        patient = canonical_patient(unescape_cell(row.get("patient_id") or ""))
        if not rel or not patient:
            raise MemoScopeError(f"{manifest}, line {line}: empty 'path' or 'patient_id'.")
        if rel in seen:
            raise MemoScopeError(
                f"{manifest}, line {line}: duplicate path {rel!r} (first on line {seen[rel]}); "
                "each image may appear once."
            )
        seen[rel] = line
        split = (row.get("split") or "").strip() or None
        if split is not None and split.lower() not in KNOWN_SPLITS:
            raise MemoScopeError(
                f"{manifest}, line {line}: split {split!r} is not one of {sorted(KNOWN_SPLITS)}; fix the 'split' "
                "column (a typo would silently drop the row)."
            )
        if (manifest.parent / rel).is_dir() and not _is_dicom_series_dir(manifest.parent / rel):
            raise MemoScopeError(
                f"{manifest}, line {line}: {rel!r} is a folder; list image files (or a folder of one DICOM series)."
            )
        records.append(ImageRecord(manifest.parent / rel, Path(rel).as_posix(), patient, split))
    return records


def _is_dicom_series_dir(path: Path) -> bool:
    return any(f.name.lower().endswith(".dcm") for f in path.iterdir())


def discover_patients(
    source: str | Path, role: Role | None = None, patients: PatientRule | str = "auto"
) -> tuple[list[ImageRecord], PatientGrouping]:
    """List the images of a folder or manifest with each one's patient by the ``patients`` rule
    (:mod:`core.io.patients`), and what the rule found; a manifest with a ``split`` column is filtered by role."""
    source = Path(source)
    if not source.exists():
        raise MemoScopeError(f"{source}: no such file or folder; check the path.")
    if source.is_dir():
        records = discover_folder(source)
        if not records:
            raise MemoScopeError(f"{source}: no images found (looked for {', '.join(SUFFIXES)} recursively).")
        return assign_patients(records, patients, source)
    if source.suffix.lower() != ".csv":
        raise MemoScopeError(f"{source}: expected a folder or a .csv manifest.")
    records = discover_manifest(source)
    if role is not None and any(r.split for r in records):
        names = _ROLE_NAMES[role]
        records = [r for r in records if (r.split or "").lower() in names]
        if not records:
            raise MemoScopeError(f"{source}: no rows with split in {sorted(names)}; fix the 'split' column.")
    return assign_patients(records, patients, source, is_manifest=True)


def discover(
    source: str | Path, role: Role | None = None, patients: PatientRule | str | None = None
) -> list[ImageRecord]:
    """The images of a folder or manifest (see :func:`discover_patients`). Without a rule, patients come from the
    folders or the manifest's column and no header is read (all that listing a synthetic set needs)."""
    if patients is None:
        patients = "manifest" if Path(source).suffix.lower() == ".csv" else "folder"
    return discover_patients(source, role, patients)[0]
