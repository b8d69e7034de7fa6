"""Reviewer verdicts on synthetic/training pairs: an SQLite store with an append-only audit trail,
a blinded sample for the paper's rater check, and agreement statistics.

Verdicts live in the study's ``study.sqlite`` (rollback journal, one transaction per verdict), so several
reviewers in separate processes can record at once and a killed process leaves either the whole
verdict (with its audit row) or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from core.common.config import parse_option
from core.common.errors import MemoScopeError
from core.common.provenance import atomic_write_text, now_utc
from core.detect.metrics import Threshold, is_copy
from core.study.results import PairRef, ScanResults, copies
from core.study.store import DB_NAME


class Verdict(StrEnum):
    """A reviewer's call on a pair."""

    COPY = "copy"
    NOT_COPY = "not_copy"
    UNSURE = "unsure"

    @property
    def label(self) -> str:
        """As a reviewer reads it (buttons, tables)."""
        return {Verdict.COPY: "Copy", Verdict.NOT_COPY: "Not a copy", Verdict.UNSURE: "Unsure"}[self]

    @property
    def shortcut(self) -> str:
        """The Review page's key for it."""
        return {Verdict.COPY: "y", Verdict.NOT_COPY: "n", Verdict.UNSURE: "u"}[self]


class ReviewMode(StrEnum):
    """How the pair was shown: the open work list, or the blinded check (no similarity, no call, random order)."""

    OPEN = "open"
    BLINDED = "blinded"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    synthetic_id TEXT NOT NULL,
    train_id TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('open', 'blinded')),
    verdict TEXT NOT NULL CHECK (verdict IN ('copy', 'not_copy', 'unsure')),
    note TEXT NOT NULL,
    replaced_verdict TEXT,
    replaced_note TEXT,
    scan_id TEXT,
    synthetic_hash TEXT,
    train_hash TEXT,
    prev_hash TEXT,
    row_hash TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_pair ON audit (synthetic_id, train_id, reviewer, mode, id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_explicit_id BEFORE INSERT ON audit WHEN NEW.id <> -1
BEGIN SELECT RAISE(ABORT, 'audit ids are assigned by the database (no explicit ids, no REPLACE)'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_backdating BEFORE INSERT ON audit
WHEN NEW.at < (SELECT max(at) FROM audit)
BEGIN SELECT RAISE(ABORT, 'audit rows cannot be backdated'); END;
CREATE TABLE IF NOT EXISTS thresholds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    set_by TEXT NOT NULL,
    scan_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    percentile REAL,
    value REAL NOT NULL CHECK (value BETWEEN -1 AND 1),
    note TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS thresholds_no_update BEFORE UPDATE ON thresholds
BEGIN SELECT RAISE(ABORT, 'saved thresholds are append-only'); END;
CREATE TRIGGER IF NOT EXISTS thresholds_no_delete BEFORE DELETE ON thresholds
BEGIN SELECT RAISE(ABORT, 'saved thresholds are append-only'); END;
"""
_ADDED = ("scan_id", "synthetic_hash", "train_hash", "prev_hash", "row_hash")  # columns MemoScope 0.1 lacked
_CHAINED = (
    "at",
    "reviewer",
    "synthetic_id",
    "train_id",
    "mode",
    "verdict",
    "note",
    "scan_id",
    "synthetic_hash",
    "train_hash",
)
_CURRENT = """
SELECT * FROM audit AS a WHERE id = (
    SELECT max(id) FROM audit AS b
    WHERE b.synthetic_id = a.synthetic_id AND b.train_id = a.train_id AND b.reviewer = a.reviewer AND b.mode = a.mode
)"""


@dataclass(frozen=True)
class Decision:
    """A reviewer's current verdict on one pair: the last audit row for (pair, reviewer, mode)."""

    synthetic_id: str
    train_id: str
    reviewer: str
    mode: str
    verdict: str
    note: str
    decided_at: str
    scan_id: str | None = None
    synthetic_hash: str | None = None
    train_hash: str | None = None

    def judged(self, ref: PairRef) -> bool:
        """Whether this verdict was given on exactly these images (same content, whichever scan)."""
        return bool(self.synthetic_hash) and (self.synthetic_hash, self.train_hash) == (
            ref.synthetic_hash,
            ref.train_hash,
        )


def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """The audit chain: each row's hash covers its fields and the previous row's hash."""
    payload = json.dumps([prev_hash, *(row.get(k) for k in _CHAINED)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def _connect(study: str | Path) -> Iterator[sqlite3.Connection]:
    """A writing connection: rollback journal, full sync, the audit table created (or given newer columns) if needed.

    The rollback journal (not WAL) keeps reading free of side effects: a WAL database makes every reader,
    even a read-only one, create ``-wal``/``-shm`` files beside it, which a read-only or shared study folder
    cannot take. Writers still serialise through ``BEGIN IMMEDIATE``; readers wait up to a minute.
    """
    path = Path(study) / DB_NAME
    if not Path(study).is_dir():
        raise MemoScopeError(f"{study}: no such study folder.")
    connection = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=DELETE")
        connection.execute("PRAGMA synchronous=FULL")
        columns = {row[1] for row in connection.execute("PRAGMA table_info(audit)")}
        for column in _ADDED if columns else ():
            if column not in columns:
                connection.execute(f"ALTER TABLE audit ADD COLUMN {column} TEXT")
        connection.executescript(_SCHEMA)
        yield connection
    except sqlite3.DatabaseError as exc:
        raise MemoScopeError(f"{path}: the study database cannot be written ({exc}).") from exc
    finally:
        connection.close()


def _select(study: str | Path, query: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
    """Rows of a read-only query; a study without verdicts yet gives none (reading never writes)."""
    path = Path(study) / DB_NAME
    if not path.is_file():
        return []
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        try:
            connection.row_factory = sqlite3.Row
            found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").fetchone()
            return list(connection.execute(query, args)) if found else []
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise MemoScopeError(f"{path}: not a readable study database ({exc}); restore it from a backup.") from exc


def record(study: str | Path, reviewer: str, pair: PairRef, verdict: str, note: str = "", mode: str = "open") -> None:
    """Append ``reviewer``'s verdict on ``pair`` to the audit trail (the current verdict is its last row).

    One ``BEGIN IMMEDIATE`` transaction: the time is taken and the chain extended under the write lock,
    so rows are in time order and the chain has no forks.
    """
    reviewer = reviewer.strip()
    if not reviewer:
        raise MemoScopeError("Reviewer name: enter your name before recording verdicts.")
    verdict = parse_option(Verdict, verdict, "verdict").value  # stored and hashed as its text
    mode = parse_option(ReviewMode, mode, "mode").value
    with _connect(study) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            previous = db.execute(
                "SELECT verdict, note FROM audit WHERE synthetic_id = ? AND train_id = ? AND reviewer = ? AND mode = ? "
                "ORDER BY id DESC LIMIT 1",
                (pair.synthetic_id, pair.train_id, reviewer, mode),
            ).fetchone()
            last = db.execute("SELECT row_hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            row: dict[str, str | None] = {
                "at": now_utc(),
                "reviewer": reviewer,
                "synthetic_id": pair.synthetic_id,
                "train_id": pair.train_id,
                "mode": mode,
                "verdict": verdict,
                "note": note,
                "scan_id": pair.scan_id,
                "synthetic_hash": pair.synthetic_hash,
                "train_hash": pair.train_hash,
            }
            prev_hash = (last[0] if last else None) or ""
            row.update(
                replaced_verdict=previous[0] if previous else None,
                replaced_note=previous[1] if previous else None,
                prev_hash=prev_hash,
                row_hash=row_hash(prev_hash, row),
            )
            db.execute(f"INSERT INTO audit ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
            chained = db.execute("SELECT count(*) FROM audit WHERE row_hash IS NOT NULL").fetchone()[0]
            before = _write_anchor(study, int(chained), str(row["row_hash"]))  # under the write lock: in step
            try:
                db.execute("COMMIT")
            except BaseException:
                _restore_anchor(study, before)
                raise
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def decisions(
    study: str | Path, reviewer: str | None = None, mode: str | None = None, scan: ScanResults | None = None
) -> list[Decision]:
    """Current verdicts, optionally of one reviewer and/or mode.

    With ``scan``, only verdicts given on the images that scan compared (same content hashes); the others
    are stale (see :func:`stale_decisions`) and never counted.
    """
    query, args = f"SELECT * FROM ({_CURRENT}) WHERE 1 = 1", list[str]()
    if reviewer is not None:
        query, args = query + " AND reviewer = ?", [*args, reviewer]
    if mode is not None:
        query, args = query + " AND mode = ?", [*args, mode]
    found = [
        Decision(
            r["synthetic_id"],
            r["train_id"],
            r["reviewer"],
            r["mode"],
            r["verdict"],
            r["note"],
            r["at"],
            r["scan_id"],
            r["synthetic_hash"],
            r["train_hash"],
        )
        for r in _select(study, query + " ORDER BY at, synthetic_id", args)
    ]
    if scan is None:
        return found
    return [d for d in found if d.judged(scan.pair_ref(d.synthetic_id, d.train_id))]


def unjudged_copies(study: str | Path, scan: ScanResults, tau: float) -> int:
    """How many pairs called copies at ``tau`` no reviewer has judged yet on the images this scan compared."""
    judged = {(d.synthetic_id, d.train_id) for d in decisions(study, scan=scan)}
    return sum((p.synthetic_id, p.train_id) not in judged for p in copies(scan.pairs(), tau))


def stale_decisions(study: str | Path, scan: ScanResults) -> list[Decision]:
    """Verdicts given on images the current scan no longer compares (another synthetic set, changed files)."""
    return [d for d in decisions(study) if not d.judged(scan.pair_ref(d.synthetic_id, d.train_id))]


AUDIT_HEAD = "audit-head.json"  # the chain's head, kept outside the database it protects


def _write_anchor(study: str | Path, rows: int, head: str) -> str | None:
    """Record the chain's length and head in :data:`AUDIT_HEAD`; returns what it held before (for a rollback).

    Removing the newest rows of the table (after dropping its triggers) leaves a chain that is intact as far as it
    goes; only a record kept elsewhere shows that it went further. The report prints the head as well."""
    path = Path(study) / AUDIT_HEAD
    before = path.read_text(encoding="utf-8") if path.is_file() else None
    atomic_write_text(path, json.dumps({"rows": rows, "head": head, "at": now_utc()}, sort_keys=True) + "\n")
    return before


def _restore_anchor(study: str | Path, before: str | None) -> None:
    path = Path(study) / AUDIT_HEAD
    if before is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_text(path, before)


def anchor_audit(study: str | Path) -> AuditCheck:
    """Record the head of an intact chain that has no anchor yet (verdicts recorded by an older MemoScope), at the
    user's word (``upgrade-study``); an anchored or broken chain is left as it is."""
    check = verify_audit(study)
    if check.anchored or len(check.problems) > check.missing_anchor:  # anchored already, or broken otherwise
        return check
    if check.rows - check.legacy_rows:
        _write_anchor(study, check.rows - check.legacy_rows, check.head)
    return verify_audit(study)


@dataclass(frozen=True)
class AuditCheck:
    """The result of re-walking the audit chain (and comparing it with :data:`AUDIT_HEAD`)."""

    rows: int
    head: str
    problems: tuple[str, ...]
    legacy_rows: int = 0
    anchored: bool = False
    missing_anchor: bool = False  # chained rows but no AUDIT_HEAD (one of ``problems``)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_audit(study: str | Path) -> AuditCheck:
    """Recompute the audit chain row by row and compare its end with :data:`AUDIT_HEAD`: any edited, removed,
    reordered or forged-in-place row shows, and so do removed newest rows."""
    if not Path(study).is_dir():
        raise MemoScopeError(f"{study}: no such study folder; give the folder of a study.")
    rows = [dict(r) for r in _select(study, "SELECT * FROM audit ORDER BY id")]
    problems: list[str] = []
    prev, legacy = "", 0
    last_at = ""
    chain: list[str] = []
    for row in rows:
        if row.get("row_hash") is None:
            legacy += 1  # written by MemoScope 0.1, before the chain
            continue
        if (row.get("prev_hash") or "") != prev:
            problems.append(f"row {row['id']}: does not follow the row before it (a row was removed or replaced)")
        if row_hash(row.get("prev_hash") or "", row) != row["row_hash"]:
            problems.append(f"row {row['id']}: its content was changed after it was written")
        if row["at"] < last_at:
            problems.append(f"row {row['id']}: dated before the row before it")
        prev, last_at = row["row_hash"], row["at"]
        chain.append(str(row["row_hash"]))
    anchor = _read_anchor(study)
    if anchor is None and chain:
        problems.append(
            f"no {AUDIT_HEAD} beside the database: removed newest rows would not show (verdicts recorded by an older "
            f"MemoScope, or the file was deleted); if the trail is as you expect, record its head with "
            f"`python -m core upgrade-study --study {study}`"
        )
    elif anchor is not None:
        n, head = anchor
        if n > len(chain):
            problems.append(
                f"{AUDIT_HEAD} records {n} chained rows ending in {head[:16]}, the table holds {len(chain)}: "
                "the newest rows were removed"
            )
        elif n and chain[n - 1] != head:
            problems.append(f"{AUDIT_HEAD}: its head {head[:16]} is not row {n} of the chain (rows were rewritten)")
    return AuditCheck(
        len(rows),
        prev,
        tuple(problems),
        legacy,
        anchored=anchor is not None,
        missing_anchor=anchor is None and bool(chain),
    )


def _read_anchor(study: str | Path) -> tuple[int, str] | None:
    path = Path(study) / AUDIT_HEAD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return int(data["rows"]), str(data["head"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise MemoScopeError(f"{path}: not a readable audit head ({exc}); restore it from a backup.") from exc


def audit_trail(study: str | Path) -> list[dict[str, Any]]:
    return [dict(row) for row in _select(study, "SELECT * FROM audit ORDER BY id")]


@dataclass(frozen=True)
class StudyThreshold:
    """The threshold a study is judged at: the last one a reviewer saved for this scan, else the scan's own."""

    value: float
    rule: str
    percentile: float | None
    set_by: str | None = None  # None: the scan's calibrated threshold
    set_at: str | None = None
    note: str = ""

    @property
    def label(self) -> str:
        how = f"{self.rule}" + (f", {self.percentile:g}th percentile" if self.percentile is not None else "")
        if self.set_by is None:
            return f"tau {self.value:.3f}, the scan's ({how})"
        return f"tau {self.value:.3f}, saved by {self.set_by} on {(self.set_at or '')[:10]} ({how})"


def save_threshold(
    study: str | Path, reviewer: str, scan: ScanResults, threshold: Threshold, note: str = ""
) -> StudyThreshold:
    """Save ``threshold`` as the study's threshold for this scan (append-only: the history stays)."""
    reviewer = reviewer.strip()
    if not reviewer:
        raise MemoScopeError("Reviewer name: enter your name before saving the study threshold.")
    if not (math.isfinite(threshold.value) and -1.0 <= threshold.value <= 1.0):
        raise MemoScopeError(f"threshold {threshold.value!r} must be a similarity in [-1, 1].")
    at = now_utc()
    with _connect(study) as db:
        db.execute(
            "INSERT INTO thresholds (at, set_by, scan_id, rule, percentile, value, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, reviewer, scan.summary.scan_id, str(threshold.rule), threshold.percentile, threshold.value, note),
        )
    return StudyThreshold(threshold.value, str(threshold.rule), threshold.percentile, reviewer, at, note)


def _thresholds(study: str | Path, where: str = "", args: Sequence[Any] = ()) -> list[sqlite3.Row]:
    """Saved-threshold rows (none in a database from before saved thresholds; reading never creates the table)."""
    if not _select(study, "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'thresholds'"):
        return []
    return _select(study, f"SELECT * FROM thresholds {where}", args)


def study_threshold(study: str | Path, scan: ScanResults) -> StudyThreshold:
    """The saved threshold of this scan, or the scan's own (a rescan starts again from its calibration)."""
    found = _thresholds(study, "WHERE scan_id = ? ORDER BY id DESC LIMIT 1", (scan.summary.scan_id,))
    if found:
        r = found[0]
        if not (isinstance(r["value"], int | float) and math.isfinite(r["value"]) and -1.0 <= r["value"] <= 1.0):
            raise MemoScopeError(
                f"{Path(study) / DB_NAME}: the saved study threshold {r['value']!r} is not a similarity in [-1, 1] "
                "(the database was edited); save the threshold again on Calibrate."
            )
        return StudyThreshold(r["value"], r["rule"], r["percentile"], r["set_by"], r["at"], r["note"])
    th = scan.summary.threshold
    return StudyThreshold(th.value, str(th.rule), th.percentile)


def threshold_history(study: str | Path) -> list[dict[str, Any]]:
    return [dict(r) for r in _thresholds(study, "ORDER BY id")]


def reviewers(study: str | Path) -> list[str]:
    return [row[0] for row in _select(study, "SELECT DISTINCT reviewer FROM audit ORDER BY reviewer")]


def by_reviewer(study: str | Path, mode: str, scan: ScanResults | None = None) -> dict[str, dict[tuple[str, str], str]]:
    """Each reviewer's current verdicts in ``mode``: ``{reviewer: {(synthetic_id, train_id): verdict}}``."""
    grouped: dict[str, dict[tuple[str, str], str]] = {}
    for d in decisions(study, mode=mode, scan=scan):
        grouped.setdefault(d.reviewer, {})[(d.synthetic_id, d.train_id)] = d.verdict
    return dict(sorted(grouped.items()))


def detector_calls(similarities: dict[tuple[str, str], float], tau: float) -> dict[tuple[str, str], str]:
    """The detector as a rater: ``copy`` where the pair's similarity is above ``tau`` (the scan's rule)."""
    return {key: ("copy" if is_copy(value, tau) else "not_copy") for key, value in similarities.items()}


def blinded_sample(
    keys: Sequence[tuple[str, str]], similarities: Sequence[float], n: int, seed: int = 0
) -> list[tuple[str, str]]:
    """``n`` pairs stratified across the similarity range, in a seeded random order.

    The pairs are sorted by similarity and cut into ``n`` strata of (nearly) equal size; one pair
    is drawn from each, and the draw is shuffled so that the order says nothing about similarity.
    """
    if n < 1:
        raise MemoScopeError("the blinded sample needs at least one pair.")
    order = np.argsort(np.asarray(similarities, dtype=np.float64), kind="stable")
    n = min(n, len(order))
    rng = np.random.default_rng(seed)
    picked = [int(rng.choice(stratum)) for stratum in np.array_split(order, n)]
    rng.shuffle(picked)
    return [keys[i] for i in picked]


@dataclass(frozen=True)
class Agreement:
    """Two raters (or the detector and a rater) on the pairs both judged copy or not (``unsure`` left out).

    ``matrix`` is ``[[both not, a not / b copy], [a copy / b not, both copy]]``.
    """

    n: int
    matrix: list[list[int]]
    accuracy: float
    kappa: float
    excluded_unsure: int


def agreement(a: dict[tuple[str, str], str], b: dict[tuple[str, str], str]) -> Agreement:
    """Confusion matrix, raw agreement and Cohen's kappa over the pairs both rated copy/not_copy."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    shared = sorted(set(a) & set(b))
    unsure = sum(1 for k in shared if "unsure" in (a[k], b[k]))
    keys = [k for k in shared if a[k] != "unsure" and b[k] != "unsure"]
    if not keys:
        return Agreement(0, [[0, 0], [0, 0]], float("nan"), float("nan"), unsure)
    ya = [int(a[k] == "copy") for k in keys]
    yb = [int(b[k] == "copy") for k in keys]
    matrix = confusion_matrix(ya, yb, labels=[0, 1]).tolist()
    accuracy = float(np.mean(np.equal(ya, yb)))
    kappa = float(cohen_kappa_score(ya, yb, labels=[0, 1])) if len(set(ya) | set(yb)) > 1 else float("nan")
    return Agreement(len(keys), matrix, accuracy, kappa, unsure)


def precision_recall(
    similarities: Sequence[float], labels: Sequence[bool], thresholds: Sequence[float] | np.ndarray
) -> dict[str, np.ndarray]:
    """The detector's precision and recall against reviewer labels at each threshold (call: ``similarity > tau``).

    Precision is NaN where the detector calls nothing a copy; recall is NaN without any labelled copy.
    """
    s = np.asarray(similarities, dtype=np.float64)[None, :]
    y = np.asarray(labels, dtype=bool)[None, :]
    calls = is_copy(s, np.asarray(thresholds, dtype=np.float64)[:, None])  # type: ignore[arg-type]
    tp = (calls & y).sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(calls.sum(axis=1) > 0, tp / calls.sum(axis=1), np.nan)
        recall = np.where(y.sum() > 0, tp / y.sum(), np.nan)
    return {"tau": np.asarray(thresholds, dtype=np.float64), "precision": precision, "recall": recall}
