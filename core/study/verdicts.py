"""Reviewer verdicts on synthetic/training pairs: an SQLite store with an append-only audit trail,
a blinded sample for the paper's rater check, and agreement statistics.

Verdicts live in the study's ``study.sqlite`` (WAL mode, one transaction per verdict), so several
reviewers in separate processes can record at once and a killed process leaves either the whole
verdict (with its audit row) or nothing.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.common.errors import MemoScopeError
from core.common.provenance import now_utc
from core.detect.metrics import is_copy
from core.study.store import DB_NAME

Verdict = Literal["copy", "not_copy", "unsure"]
Mode = Literal["open", "blinded"]
VERDICTS: tuple[str, ...] = ("copy", "not_copy", "unsure")
MODES: tuple[str, ...] = ("open", "blinded")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    synthetic_id TEXT NOT NULL,
    train_id TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('open', 'blinded')),
    verdict TEXT NOT NULL CHECK (verdict IN ('copy', 'not_copy', 'unsure')),
    note TEXT NOT NULL DEFAULT '',
    decided_at TEXT NOT NULL,
    PRIMARY KEY (synthetic_id, train_id, reviewer, mode)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    synthetic_id TEXT NOT NULL,
    train_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    verdict TEXT NOT NULL,
    note TEXT NOT NULL,
    replaced_verdict TEXT,
    replaced_note TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""


@dataclass(frozen=True)
class Decision:
    """A reviewer's current verdict on one pair."""

    synthetic_id: str
    train_id: str
    reviewer: str
    mode: str
    verdict: str
    note: str
    decided_at: str


@contextlib.contextmanager
def _connect(study: str | Path) -> Iterator[sqlite3.Connection]:
    """A writing connection: WAL, full sync, the verdict tables created if missing."""
    path = Path(study) / DB_NAME
    if not Path(study).is_dir():
        raise MemoScopeError(f"{study}: no such study folder.")
    connection = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.executescript(_SCHEMA)
        yield connection
    finally:
        connection.close()


def _select(study: str | Path, query: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
    """Rows of a read-only query; a study without verdicts yet gives none (reading never writes)."""
    path = Path(study) / DB_NAME
    if not path.is_file():
        return []
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
    try:
        connection.row_factory = sqlite3.Row
        if (
            connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'verdicts'").fetchone()
            is None
        ):
            return []
        return list(connection.execute(query, args))
    finally:
        connection.close()


def record(
    study: str | Path, reviewer: str, synthetic_id: str, train_id: str, verdict: str, note: str = "", mode: str = "open"
) -> None:
    """Store (or replace) ``reviewer``'s verdict on a pair and append the change to the audit trail.

    Both writes happen in one ``BEGIN IMMEDIATE`` transaction: either both land or neither.
    """
    reviewer = reviewer.strip()
    if not reviewer:
        raise MemoScopeError("Reviewer name: enter your name before recording verdicts.")
    if verdict not in VERDICTS:
        raise MemoScopeError(f"verdict {verdict!r} must be one of {VERDICTS}.")
    if mode not in MODES:
        raise MemoScopeError(f"mode {mode!r} must be one of {MODES}.")
    with _connect(study) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            previous = db.execute(
                "SELECT verdict, note FROM verdicts WHERE synthetic_id = ? AND train_id = ? AND reviewer = ? AND mode "
                "= ?",
                (synthetic_id, train_id, reviewer, mode),
            ).fetchone()
            at = now_utc()
            db.execute(
                "INSERT INTO audit (at, reviewer, synthetic_id, train_id, mode, verdict, note, replaced_verdict, "
                "replaced_note) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (at, reviewer, synthetic_id, train_id, mode, verdict, note, *(previous or (None, None))),
            )
            db.execute(
                "INSERT INTO verdicts (synthetic_id, train_id, reviewer, mode, verdict, note, decided_at) VALUES (?, "
                "?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (synthetic_id, train_id, reviewer, mode) DO UPDATE SET verdict = excluded.verdict, note = "
                "excluded.note, "
                "decided_at = excluded.decided_at",
                (synthetic_id, train_id, reviewer, mode, verdict, note, at),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def decisions(study: str | Path, reviewer: str | None = None, mode: str | None = None) -> list[Decision]:
    """Current verdicts, optionally of one reviewer and/or mode."""
    query, args = (
        "SELECT synthetic_id, train_id, reviewer, mode, verdict, note, decided_at FROM verdicts WHERE 1 = 1",
        list[str](),
    )
    if reviewer is not None:
        query, args = query + " AND reviewer = ?", [*args, reviewer]
    if mode is not None:
        query, args = query + " AND mode = ?", [*args, mode]
    return [Decision(*row) for row in _select(study, query + " ORDER BY decided_at, synthetic_id", args)]


def audit_trail(study: str | Path) -> list[dict[str, Any]]:
    return [dict(row) for row in _select(study, "SELECT * FROM audit ORDER BY id")]


def reviewers(study: str | Path) -> list[str]:
    return [row[0] for row in _select(study, "SELECT DISTINCT reviewer FROM verdicts ORDER BY reviewer")]


def by_reviewer(study: str | Path, mode: str) -> dict[str, dict[tuple[str, str], str]]:
    """Each reviewer's current verdicts in ``mode``: ``{reviewer: {(synthetic_id, train_id): verdict}}``."""
    grouped: dict[str, dict[tuple[str, str], str]] = {}
    for d in decisions(study, mode=mode):
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
    similarities: Sequence[float], labels: Sequence[bool], thresholds: Sequence[float]
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
