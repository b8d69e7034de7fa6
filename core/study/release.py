"""The release filter: the synthetic samples that are not copies, their manifest, a typed release record and the
report, written together into a new folder (renamed into place at the end, so a release is whole or absent)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from core.common.config import Config
from core.common.errors import MemoScopeError
from core.common.provenance import atomic_dir, atomic_write_text, now_utc, read_json_record, sha256_file, versions
from core.common.tables import write_csv
from core.io.discover import discover
from core.study import verdicts
from core.study.pseudonyms import Pseudonyms
from core.study.report import build_report
from core.study.results import ScanResults, ScanSummary, nearest_pairs

RELEASE_RECORD = "release.json"


@dataclass(frozen=True)
class ReleaseRecord(Config):
    """What a release holds and why (``release.json``): the threshold and where it came from, what was removed,
    and the scan, checkpoint and detector it rests on. Sample IDs only; training scans never appear."""

    study: str
    released_at: str
    threshold: float
    threshold_source: str
    exclude_confirmed: bool
    n_synthetic: int
    kept: int
    removed_by_threshold: int
    removed_as_confirmed: int
    removed: tuple[str, ...]
    checkpoint_hash: str | list[str] | None
    detector_hash: str
    scan_finished_at: str
    scan_id: str
    scan_threshold: float
    warnings: tuple[str, ...]
    versions: dict[str, Any]


def read_release_record(folder: str | Path) -> ReleaseRecord:
    """The record of the release in ``folder`` (refuses unknown or missing fields by name)."""
    path = Path(folder) / RELEASE_RECORD
    return ReleaseRecord.from_dict(read_json_record(path, "release record"), source=str(path))


@dataclass(frozen=True)
class ReleaseResult:
    out: Path
    kept: int
    removed_by_threshold: int
    removed_as_confirmed: int
    warnings: tuple[str, ...] = ()


def release_folder(root: str | Path, name: str) -> Path:
    """``root/name`` for a release named in a form: a plain name, so a typed path cannot write elsewhere."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name.strip()):
        raise MemoScopeError(
            f"Release name {name!r}: use letters, digits, '-', '_' or '.', starting with a letter or "
            "digit (the release goes under the releases folder)."
        )
    return Path(root) / name.strip()


def release_threshold(summary: ScanSummary, threshold: float) -> tuple[float, list[str]]:
    """The release's tau and warnings; a value outside [-1, 1] or not finite is refused."""
    value = float(threshold)
    if not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise MemoScopeError(
            f"--threshold {threshold!r}: give a similarity in [-1, 1] (the scan's is {summary.tau:.3f})."
        )
    if value > summary.tau:
        return value, [
            f"the release threshold {value:.3f} is looser than the scan's calibrated {summary.tau:.3f}: samples the "
            "scan called copies are released; its expected false-positive rate no longer applies."
        ]
    return value, []


def check_synthetic_files(summary: ScanSummary, sample_ids: list[str]) -> dict[str, Path]:
    """The file of each sample, after checking it is byte for byte the file the scan checked.

    Refuses, naming the first offender, when a file is missing, changed or replaced since the scan.
    """
    recorded = summary.inputs["synthetic"].file_hashes
    if not recorded:
        raise MemoScopeError("this scan did not record its synthetic files' hashes; rescan before releasing.")
    files = {r.sample_id: Path(r.path) for r in discover(summary.source("synthetic"))}
    missing = [s for s in sample_ids if s not in files]
    if missing:
        raise MemoScopeError(
            f"{len(missing)} synthetic samples of the scan are missing from {summary.source('synthetic')} "
            f"(e.g. {missing[0]}); rescan."
        )
    changed = [s for s in sample_ids if recorded.get(s) != sha256_file(files[s])]
    if changed:
        raise MemoScopeError(
            f"{len(changed)} synthetic file(s) differ from what the scan checked (e.g. {files[changed[0]]}); a release "
            "only ships scanned files: rescan the study, then release."
        )
    return {s: files[s] for s in sample_ids}


OUTSIDE = "outside"  # release names of samples whose IDs point outside their set (``../x.png``, ``/abs/x.png``)


def release_name(sample_id: str) -> str:
    """Where a sample goes under the release's ``samples/``: its relative ID when that is a plain relative path, so
    ``a/s.png`` and ``b/s.png`` cannot collide; an ID from a manifest that climbs out of its folder (``..``), is
    absolute or names a drive becomes ``outside/<hash>-<file name>``, so nothing is ever written outside ``--out``."""
    parts = PurePosixPath(sample_id.replace("\\", "/")).parts
    plain = bool(parts) and not PurePosixPath(sample_id).is_absolute() and ":" not in parts[0]
    if plain and all(part not in ("", ".", "..") for part in parts) and "\\" not in sample_id:
        return sample_id
    digest = hashlib.sha256(sample_id.encode()).hexdigest()[:12]
    name = next((part for part in reversed(parts) if part not in ("", ".", "..", "/")), "sample")
    return f"{OUTSIDE}/{digest}-{name}"


def release(
    study: str | Path, out: str | Path, threshold: float | None = None, exclude_confirmed: bool = False
) -> ReleaseResult:
    """Write the synthetic samples that are not copies, their manifest, a release record and the report.

    A sample is removed when its nearest training similarity is above the threshold (the scan's,
    unless given) or, with ``exclude_confirmed``, when any reviewer marked its pair a copy.
    Refuses a non-empty ``out``; writes everything into a temporary folder renamed at the end.

    One function: the staged release folder is written in order (samples, manifest, record, report) inside one
    atomic rename.
    """
    study, out = Path(study), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MemoScopeError(f"{out}: exists and is not empty; choose an empty or new folder.")
    scan = ScanResults.open(study)
    summary = scan.summary
    chosen = verdicts.study_threshold(study, scan)
    tau, warnings = release_threshold(summary, chosen.value if threshold is None else threshold)
    pairs = scan.pairs()
    nearest = {p.synthetic_id: p for p in nearest_pairs(pairs)}
    confirmed = (
        {d.synthetic_id for d in verdicts.decisions(study, scan=scan) if d.verdict == "copy"}
        if exclude_confirmed
        else set()
    )
    if summary.slices:
        raise MemoScopeError(
            "this study compared 2D slices of 3D files; a release ships whole files, so rescan without "
            "--slices to release."
        )
    over = {s for s, p in nearest.items() if p.is_copy(tau)}
    dropped_confirmed = confirmed - over
    keep = sorted(set(nearest) - over - confirmed)
    files = check_synthetic_files(summary, keep)
    names = Pseudonyms.of(pairs)  # the same pseudonyms as the report
    if out.exists():
        out.rmdir()
    with atomic_dir(out) as tmp:
        (tmp / "samples").mkdir()
        rows = []
        for sample_id in keep:
            source = Path(files[sample_id])
            name = release_name(sample_id)
            target = tmp / "samples" / name
            if not target.resolve().is_relative_to((tmp / "samples").resolve()):  # never past --out, whatever the ID
                raise MemoScopeError(f"sample {sample_id!r}: its release path leaves the release folder; rename it.")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            p = nearest[sample_id]
            rows.append(
                [
                    f"samples/{name}",
                    names.scans[p.train_id],
                    f"{p.similarity:.6f}",
                    f"{p.p_value:.6g}",
                    sha256_file(target),
                ]
            )
        write_csv(tmp / "manifest.csv", ["path", "nearest_training", "similarity", "p_value", "sha256"], rows)
        record = ReleaseRecord(
            study=study.name,
            released_at=now_utc(),
            threshold=tau,
            threshold_source="given"
            if threshold is not None
            else (f"saved by {chosen.set_by}" if chosen.set_by else "scan"),
            exclude_confirmed=exclude_confirmed,
            n_synthetic=len(nearest),
            kept=len(keep),
            removed_by_threshold=len(over),
            removed_as_confirmed=len(dropped_confirmed),
            removed=tuple(sorted(over | confirmed)),
            checkpoint_hash=summary.checkpoint_hash,
            detector_hash=summary.detector.hash,
            scan_finished_at=summary.finished_at,
            scan_id=summary.scan_id,
            scan_threshold=summary.tau,
            warnings=tuple(warnings),
            versions=versions(),
        )
        atomic_write_text(tmp / RELEASE_RECORD, json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
        note = (
            f"{len(keep)} of {len(nearest)} synthetic samples released at threshold {tau:.3f} "
            f"({'given for the release' if threshold is not None else chosen.label}): {len(over)} removed "
            "above it"
            + (f", {len(dropped_confirmed)} more confirmed as copies by reviewers" if exclude_confirmed else "")
            + "."
        )
        report_threshold = chosen if threshold is None else verdicts.StudyThreshold(tau, "fixed", None, "the release")
        atomic_write_text(tmp / "report.html", build_report(study, release_note=note, threshold=report_threshold))
    return ReleaseResult(out, len(keep), len(over), len(dropped_confirmed), tuple(warnings))
