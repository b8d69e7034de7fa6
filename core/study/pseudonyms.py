"""Report pseudonyms: stable names for training scans and patients, and the re-identification key.

Reports, releases and the app's presentation mode show ``train-00001`` and ``patient-0001`` instead of file and
patient names. The key that maps them back (``pseudonyms.csv``) is written into the study folder only and never
exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.common.errors import MemoScopeError
from core.common.tables import write_csv
from core.study.results import Pair

PSEUDONYMS = "pseudonyms.csv"


@dataclass(frozen=True)
class Pseudonyms:
    """Stable pseudonyms for training scans and patients (order of the sorted training IDs)."""

    scans: dict[str, str]
    patients: dict[str, str]

    @classmethod
    def of(cls, pairs: list[Pair]) -> Pseudonyms:
        scans: dict[str, str] = {}
        patients: dict[str, str] = {}
        for train_id, patient_id in sorted({(p.train_id, p.patient_id) for p in pairs}):
            scans.setdefault(train_id, f"train-{len(scans) + 1:05d}")
            patients.setdefault(patient_id, f"patient-{len(patients) + 1:04d}")
        return cls(scans, patients)

    def write_key(self, study: Path, pairs: list[Pair]) -> None:
        """The re-identification key, kept in the study folder only."""
        rows = [
            [self.scans[train_id], train_id, self.patients[patient_id], patient_id]
            for train_id, patient_id in sorted({(p.train_id, p.patient_id) for p in pairs})
        ]
        try:
            write_csv(study / PSEUDONYMS, ["pseudonym", "train_id", "patient_pseudonym", "patient_id"], rows)
        except OSError as exc:
            raise MemoScopeError(
                f"{study}: cannot write the pseudonym key {PSEUDONYMS} there ({exc.strerror}); the report needs a "
                "writable study folder (copy the study somewhere writable)."
            ) from exc
