"""Which patient each scan belongs to: from folders, DICOM headers, a pattern on the path, or a manifest.

Every patient-level number (the new-patient threshold bound, leave-one-patient-out, the leak check, the
patient intervals) is only as right as this grouping. So the rule is explicit (``--patients``), the rule in
force and what it found are recorded with each set, and a grouping that cannot tell one patient from
another (every file its own patient, by default) says so instead of passing silently.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from core.common.config import Config, choices
from core.common.errors import MemoScopeError
from core.common.home import identity_key
from core.io.records import ImageRecord, canonical_patient, strip_suffix


class PatientSource(StrEnum):
    """Where a scan's patient comes from (``--patients``)."""

    AUTO = "auto"  # a manifest's patient_id; else DICOM headers when every file is DICOM; else folders
    FOLDER = "folder"  # ``patient/…/file`` gives ``patient``; a file at the top its own name
    DICOM = "dicom"  # PatientID, else StudyInstanceUID, kept only as a keyed hash
    PATTERN = "pattern"  # ``pattern:REGEX`` on the path relative to the set (group ``patient``, else group 1)
    MANIFEST = "manifest"  # the manifest's patient_id column


PATTERN_PREFIX = f"{PatientSource.PATTERN}:"
HELP = (
    "where each scan's patient comes from: auto (a manifest's patient_id, else DICOM PatientID for DICOM, else "
    "folders), folder (patient/.../file), dicom (PatientID, falling back to StudyInstanceUID; kept only as a keyed "
    "hash), manifest, or pattern:REGEX on the path relative to the set, with a group named patient, e.g. "
    "'pattern:(?P<patient>sub-\\d+)_'"
)


@dataclass(frozen=True)
class PatientRule:
    """A parsed ``--patients`` value: the source and, for ``pattern``, its regular expression."""

    source: PatientSource
    pattern: str = ""

    @classmethod
    def parse(cls, text: str | PatientRule) -> PatientRule:
        """``auto``, ``folder``, ``dicom``, ``manifest`` or ``pattern:REGEX``; anything else is refused by name."""
        if isinstance(text, PatientRule):
            return text
        value = (text or PatientSource.AUTO).strip()
        if value.startswith(PATTERN_PREFIX):
            pattern = value[len(PATTERN_PREFIX) :]
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise MemoScopeError(f"--patients {value!r}: not a regular expression ({exc}).") from None
            if not regex.groups:
                raise MemoScopeError(
                    f"--patients {value!r}: the pattern needs a group that captures the patient, e.g. "
                    "'pattern:(?P<patient>sub-\\d+)_'."
                )
            return cls(PatientSource.PATTERN, pattern)
        if value not in choices(PatientSource) or value == PatientSource.PATTERN:
            raise MemoScopeError(
                f"--patients {value!r} must be one of auto, folder, dicom, manifest or pattern:REGEX "
                "(e.g. 'pattern:(?P<patient>sub-\\d+)_')."
            )
        return cls(PatientSource(value))

    def __str__(self) -> str:
        return f"{PATTERN_PREFIX}{self.pattern}" if self.source == PatientSource.PATTERN else str(self.source)


@dataclass(frozen=True)
class PatientGrouping(Config):
    """What a patient rule found in one set (kept in ``summary.json`` with the set).

    Attributes:
        rule: the rule in force (``auto`` resolved: ``folder``, ``dicom``, ``manifest`` or ``pattern:…``).
        files: files (or DICOM series) in the set; patients: distinct patients among them.
        by_default: ``auto`` took patients from file names because the folder has no patient subfolders: the
            layout said nothing about who is who (``--patients folder`` says each file is a patient: not a guess).
        scans_per_patient: the median number of files per patient.
    """

    rule: str
    files: int
    patients: int
    by_default: bool = False
    scans_per_patient: float = 1.0

    @property
    def one_per_file(self) -> bool:
        """Every file is its own patient (a set of two or more files)."""
        return self.files > 1 and self.patients == self.files

    @property
    def doubtful(self) -> bool:
        """The grouping cannot tell scans of one person from different people: every file became its own patient
        only because the folder had no patient subfolders (a rule the user chose, or a manifest, is taken at its
        word: one scan per patient is common for volumes and radiographs)."""
        return self.one_per_file and self.by_default

    def label(self) -> str:
        """How the patients were named, for a table: the rule, or that each file was taken as its own patient."""
        return "each file its own (no patient folders)" if self.doubtful else self.rule

    def describe(self) -> str:
        """``12 patients in 240 files (rule: dicom)``."""
        noun = "patient" if self.patients == 1 else "patients"
        how = "each file its own patient: no patient subfolders" if self.by_default else f"rule: {self.rule}"
        return f"{self.patients} {noun} in {self.files} files ({how})"


def doubt_message(role: str, source: str, grouping: PatientGrouping) -> str:
    """What a doubtful grouping means and how to fix it (the scan's warning, the caveat's source)."""
    return (
        f"{role} set {source}: {grouping.describe()}. Slices or scans of one person then count as different "
        "people, so the new-patient threshold bound and the leave-one-patient-out check are optimistic. Say who is "
        "who: --patients (in the app: 'Patients from') pattern:REGEX on the file names, e.g. "
        "'pattern:^(?P<patient>[^_]+)_' for names like sub-07_slice012.png (the patient is what comes before the "
        "first underscore), a CSV manifest with patient_id, or one folder per patient (or folder if each file really "
        "is another patient)."
    )


def folder_patient(sample_id: str) -> str:
    """Folder layout rule: ``patient/…/file`` gives ``patient``; a top-level file its own name."""
    rel = Path(sample_id)
    return rel.parts[0] if len(rel.parts) > 1 else strip_suffix(rel.name)


def _is_dicom(record: ImageRecord) -> bool:
    return record.path.is_dir() or record.path.name.lower().endswith(".dcm")


def _dicom_header_file(record: ImageRecord) -> Path:
    if record.path.is_dir():
        files = sorted(p for p in record.path.iterdir() if p.name.lower().endswith(".dcm"))
        if not files:
            raise MemoScopeError(f"{record.path}: no .dcm files to read the patient from.")
        return files[0]
    return record.path


def pseudonymous_id(value: str) -> str:
    """A header identifier as a keyed hash (``pt-`` + 16 hex digits): equal for equal IDs (in one Unicode form,
    without invisible characters or case, as :func:`core.io.splits.patient_key` compares them), unreadable without
    the key."""
    normal = canonical_patient(value).casefold()
    return "pt-" + hmac.new(identity_key(), normal.encode(), hashlib.sha256).hexdigest()[:16]


def dicom_patient(record: ImageRecord) -> str:
    """The patient of a DICOM file or series: PatientID, else StudyInstanceUID, as :func:`pseudonymous_id`.

    The identifier itself is never returned, logged or shown; an error names the file, not its header values.
    """
    import pydicom

    path = _dicom_header_file(record)
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "StudyInstanceUID"])
    except Exception as exc:  # pydicom raises many types for a damaged header
        raise MemoScopeError(f"{path}: not a readable DICOM file ({type(exc).__name__}).") from exc
    for tag in ("PatientID", "StudyInstanceUID"):
        value = str(getattr(header, tag, "") or "").strip()
        if value:
            return pseudonymous_id(value)
    raise MemoScopeError(
        f"{path}: no PatientID or StudyInstanceUID in the header, so --patients dicom cannot tell whose scan it is; "
        "use --patients folder, pattern:REGEX or a manifest."
    )


def _pattern_patient(regex: re.Pattern[str], record: ImageRecord, source: str) -> str:
    match = regex.search(record.sample_id)
    if match is None:
        raise MemoScopeError(
            f"--patients pattern:{regex.pattern} does not match {record.sample_id!r} in {source}; fix the pattern "
            "(it is searched in the path relative to the set) or list the file's patient in a manifest."
        )
    patient = match.group("patient") if "patient" in regex.groupindex else match.group(1)
    if not patient:
        raise MemoScopeError(
            f"--patients pattern:{regex.pattern} matches {record.sample_id!r} in {source} with an empty patient."
        )
    return patient


def resolve(rule: PatientRule, records: Sequence[ImageRecord], is_manifest: bool) -> PatientRule:
    """``auto`` made concrete for these records; a rule the source cannot follow is refused."""
    if rule.source == PatientSource.MANIFEST and not is_manifest:
        raise MemoScopeError("--patients manifest needs a CSV manifest with a patient_id column, not a folder.")
    if rule.source != PatientSource.AUTO:
        return rule
    if is_manifest:
        return PatientRule(PatientSource.MANIFEST)
    if records and all(_is_dicom(r) for r in records):
        return PatientRule(PatientSource.DICOM)
    return PatientRule(PatientSource.FOLDER)


def assign_patients(
    records: Sequence[ImageRecord], rule: PatientRule | str, source: str | Path, is_manifest: bool = False
) -> tuple[list[ImageRecord], PatientGrouping]:
    """Give each record its patient by ``rule`` and say what the rule found.

    Raises:
        MemoScopeError: the rule cannot be followed for a record (names the file and what to do instead).
    """
    asked = PatientRule.parse(rule)
    used = resolve(asked, records, is_manifest)
    by_default = False
    if used.source == PatientSource.MANIFEST:
        named = list(records)
    elif used.source == PatientSource.DICOM:
        named = [replace(r, patient_id=dicom_patient(r)) for r in records]
    elif used.source == PatientSource.PATTERN:
        regex = re.compile(used.pattern)
        named = [replace(r, patient_id=_pattern_patient(regex, r, str(source))) for r in records]
    else:
        named = [replace(r, patient_id=folder_patient(r.sample_id)) for r in records]
        # only ``auto`` guesses: ``--patients folder`` on a flat folder is the user's word that each file is a patient
        flat = bool(named) and all(len(Path(r.sample_id).parts) == 1 for r in named)
        by_default = flat and asked.source == PatientSource.AUTO
    counts = Counter(r.patient_id for r in named)
    grouping = PatientGrouping(
        rule=str(used),
        files=len(named),
        patients=len(counts),
        by_default=by_default,
        scans_per_patient=float(statistics.median(counts.values())) if counts else 0.0,
    )
    return named, grouping
