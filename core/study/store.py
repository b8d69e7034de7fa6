"""Study folders: input references, outputs and a SQLite record of every run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.common.config import Config
from core.common.errors import MemoScopeError
from core.common.home import user_home
from core.common.processes import process_alive
from core.common.provenance import atomic_write_json, atomic_write_text, now_utc, read_json_record
from core.io.discover import discover, discover_patients
from core.io.patients import PatientGrouping, doubt_message
from core.io.splits import check_record_leaks

DB_NAME = "study.sqlite"
DEMO_MARKER = ".memoscope-demo"  # in a committed demo study: the app works on a per-user copy of it
DEMO_MARKER_TEXT = (
    "A committed MemoScope demo study. The app works on a per-user copy of it (MEMOSCOPE_HOME),\n"
    "so reviewing, reporting or saving a threshold never changes this folder.\n"
)


def mark_demo(folder: str | Path) -> None:
    """Mark ``folder`` as a committed demo study: the app then works on a per-user copy (see :func:`working_copy`)."""
    atomic_write_text(Path(folder) / DEMO_MARKER, DEMO_MARKER_TEXT)


STUDY_FILE = "study.json"
LOCK_FILE = ".memoscope.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    config_json TEXT NOT NULL,
    summary_json TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS summaries (
    scan_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class StudyInputs(Config):
    """``study.json``: what a study works on before and between scans (a scan's summary records what it used).

    Attributes:
        train, val, synthetic: folders or CSV manifests; ``checkpoint``: the LDM that made the samples;
            ``detector``: a trained detector folder to reuse.
        dims, size, slices: the preprocessing the "New study" form chose (2D/3D, size per axis, slicing axis).
        patients: the ``--patients`` rule.
        patient_groupings: what that rule found in each set when the study was created (before any scan).
        updated_at: when the inputs last changed.
    """

    train: str | None = None
    val: str | None = None
    synthetic: str | None = None
    checkpoint: str | None = None
    detector: str | None = None
    dims: int | None = None
    size: int | None = None
    slices: str | None = None
    patients: str | None = None
    patient_groupings: dict[str, PatientGrouping] = field(default_factory=dict)
    updated_at: str | None = None

    def source(self, role: str) -> str | None:
        """The folder or manifest of ``role`` (``train``, ``val`` or ``synthetic``)."""
        return {"train": self.train, "val": self.val, "synthetic": self.synthetic}[role]


@dataclass(frozen=True)
class Study:
    """A study folder: ``study.json`` (inputs), outputs, and ``study.sqlite`` (runs)."""

    path: Path

    @property
    def db_path(self) -> Path:
        return self.path / DB_NAME

    def connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(self.db_path, timeout=30)
            connection.execute("PRAGMA journal_mode=DELETE")  # see verdicts._connect
            connection.executescript(_SCHEMA)
            if "pid" not in {row[1] for row in connection.execute("PRAGMA table_info(runs)")}:
                connection.execute("ALTER TABLE runs ADD COLUMN pid INTEGER")  # studies from MemoScope 0.1
        except sqlite3.DatabaseError as exc:
            raise MemoScopeError(
                f"{self.db_path}: not a readable study database ({exc}); restore it from a backup or start a new study."
            ) from exc
        return connection

    def inputs(self) -> StudyInputs:
        """What ``study.json`` says the study works on (all empty for a study without one)."""
        path = self.path / STUDY_FILE
        if not path.is_file():
            return StudyInputs()
        data = read_json_record(path, "record of the study's inputs", "fix or delete it")
        return StudyInputs.from_dict(data, source=str(path))

    def set_inputs(self, **changes: Any) -> StudyInputs:
        """Change some of the inputs (a field not named keeps its value; an unknown one is refused by name)."""
        updated = StudyInputs.from_dict({**self.inputs().to_dict(), **changes, "updated_at": now_utc()})
        atomic_write_json(self.path / STUDY_FILE, {k: v for k, v in updated.to_dict().items() if v not in (None, {})})
        return updated

    @contextlib.contextmanager
    def run(self, kind: str, config: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Record a run: 'running' now, then 'done' with the summary put in the yielded dict, or 'failed'."""
        result: dict[str, Any] = {}
        self.mark_interrupted()
        with contextlib.closing(self.connect()) as db, db:
            run_id = db.execute(
                "INSERT INTO runs (kind, status, started_at, config_json, pid) VALUES (?, 'running', ?, ?, ?)",
                (kind, now_utc(), json.dumps(config, sort_keys=True, default=str), os.getpid()),
            ).lastrowid
        try:
            yield result
        except BaseException as exc:
            self._finish(run_id, "failed", None, f"{type(exc).__name__}: {exc}")
            raise
        self._finish(run_id, "done", result, None)

    def _finish(self, run_id: int | None, status: str, summary: dict[str, Any] | None, error: str | None) -> None:
        with contextlib.closing(self.connect()) as db, db:
            db.execute(
                "UPDATE runs SET status = ?, finished_at = ?, summary_json = ?, error = ? WHERE id = ?",
                (
                    status,
                    now_utc(),
                    json.dumps(summary, sort_keys=True, default=str) if summary is not None else None,
                    error,
                    run_id,
                ),
            )

    @contextlib.contextmanager
    def exclusive(self, kind: str) -> Iterator[None]:
        """Hold the study for one writing run (a scan): a second one started meanwhile, from any process, is refused
        by name before any work (two scans into one folder once both exited 0 and the first was silently replaced).
        The operating system releases the lock when the process ends, however it ends, so a killed scan never
        blocks the next; the next then removes what the killed one left half written (``.scan-*.tmp``)."""
        import fcntl

        path = self.path / LOCK_FILE
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise MemoScopeError(
                    f"{self.path}: {holder} is writing this study; wait for it to finish (or stop it), or give "
                    "another --out."
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"a {kind} (process {os.getpid()}, since {now_utc()})")
            handle.flush()
            for left in [*self.path.glob(".scan-*.tmp"), *self.path.glob(".*.old")]:  # a killed run's leftovers
                shutil.rmtree(left, ignore_errors=True)
            yield
        finally:
            handle.close()  # releases the lock

    def mark_interrupted(self) -> int:
        """Mark runs whose process has ended without finishing (killed) as failed; returns how many."""
        with contextlib.closing(self.connect()) as db, db:
            stale = [
                run_id
                for run_id, pid in db.execute("SELECT id, pid FROM runs WHERE status = 'running'")
                if pid is None or not process_alive(int(pid))
            ]
            for run_id in stale:
                db.execute(
                    "UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                    (now_utc(), "interrupted: the process ended without finishing (killed?)", run_id),
                )
        return len(stale)

    def runs(self) -> list[dict[str, Any]]:
        with contextlib.closing(self.connect()) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM runs ORDER BY id")]


def anchor_summary(folder: str | Path, scan_id: str, digest: str) -> None:
    """Record the hash of a scan's ``summary.json`` (its canonical form) in ``study.sqlite``: every reader checks
    the file against it, so an edit to the summary (a threshold set to 0.99, a count) shows."""
    with contextlib.closing(Study(Path(folder)).connect()) as db, db:
        db.execute(
            "INSERT OR REPLACE INTO summaries (scan_id, sha256, recorded_at) VALUES (?, ?, ?)",
            (scan_id, digest, now_utc()),
        )


def summary_anchor(folder: str | Path, scan_id: str) -> str | None:
    """The summary hash recorded for ``scan_id``, or ``None`` (no database, no record); opened read-only, so a
    study on a read-only disk can still be read."""
    path = Path(folder) / DB_NAME
    if not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as db:
            row = db.execute("SELECT sha256 FROM summaries WHERE scan_id = ?", (scan_id,)).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise MemoScopeError(f"{path}: cannot read the study database ({exc}).") from exc
    except sqlite3.DatabaseError as exc:
        raise MemoScopeError(f"{path}: not a readable study database ({exc}); restore it from a backup.") from exc
    return str(row[0]) if row else None


def check_writable(folder: str | Path, what: str = "the study folder") -> None:
    """Refuse, before any work, a folder that cannot be written (read-only, no permission, no space for a file)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise MemoScopeError(f"{folder}: cannot write {what} ({exc.strerror}); choose a writable folder.") from exc


def open_study(path: str | Path) -> Study:
    """Open or create the study folder at ``path`` (a file, or a folder we cannot write, is refused by name)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise MemoScopeError(f"{folder}: is a file; give a folder for the study (new or existing).")
    check_writable(folder)
    study = Study(folder)
    with contextlib.closing(study.connect()):
        pass
    return study


def patient_warnings(inputs: StudyInputs) -> list[str]:
    """Before any scan: a warning for each set whose patients the rule only guessed (each file its own patient),
    from what :func:`create_study` recorded (a scan's summary then carries the caveat)."""
    return [
        doubt_message(role, str(inputs.source(role)), g) for role, g in inputs.patient_groupings.items() if g.doubtful
    ]


def create_study(root: str | Path, name: str, inputs: dict[str, Any]) -> Study:
    """Create ``root/name`` from checked inputs (what the app's "New study" form submits).

    ``inputs``: ``train`` and ``val`` (folder or manifest, required), ``synthetic`` and
    ``checkpoint`` (optional), ``dims``, ``size``, ``slices``, ``patients`` (the ``--patients`` rule, default
    ``auto``). Each source is listed the way a scan will list it, patients named by that rule, so a bad path or a
    pattern that misses a file is reported now, by name, and nothing is created.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise MemoScopeError("Study name: use letters, digits, '-', '_' or '.', starting with a letter or digit.")
    folder = Path(root) / name
    if folder.exists():
        raise MemoScopeError(f"{folder} already exists; open it instead or choose another name.")
    given = StudyInputs.from_dict({key: value or None for key, value in inputs.items()}, source="the new study")
    records, groupings = {}, {}
    for label, role in (("Training", "train"), ("Validation", "val")):
        source = given.source(role)
        if not source:
            raise MemoScopeError(f"{label} images: enter a folder or a CSV manifest.")
        records[role], groupings[role] = discover_patients(source, role, given.patients or "auto")  # type: ignore[arg-type]
    check_record_leaks(records["train"], records["val"], str(given.train), str(given.val))
    if given.synthetic:
        discover(given.synthetic)
    if given.checkpoint and not (Path(given.checkpoint) / "ldm.json").is_file():
        raise MemoScopeError(f"{given.checkpoint}: not a checkpoint folder (no ldm.json).")
    study = open_study(folder)
    study.set_inputs(**{**given.to_dict(), "patient_groupings": {r: g.to_dict() for r, g in groupings.items()}})
    return study


def working_copy(folder: str | Path) -> Path:
    """The folder to work in for ``folder``: itself, or for a committed demo study a per-user copy of it.

    Verdicts, reports, keys and thresholds then land in the copy, so using the app never changes the
    repository. The copy is refreshed when the demo is rebuilt (another ``summary.json``); the old copy,
    with whatever reviewers entered in it, is kept beside it under a dated name.
    """
    folder = Path(folder)
    if not (folder / DEMO_MARKER).is_file():
        return folder
    target = user_home() / "studies" / folder.name
    summary = folder / "summary.json"
    if target.is_dir() and (target / "summary.json").read_bytes() == summary.read_bytes():
        return target
    if target.exists():
        with contextlib.suppress(FileNotFoundError):  # another session may have moved it already
            os.replace(target, target.with_name(f"{target.name}.before-{now_utc()[:19].replace(':', '')}"))
    skip = shutil.ignore_patterns("jobs", "report.*", "pseudonyms.csv", "*.sqlite-wal", "*.sqlite-shm", DEMO_MARKER)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=target.parent))
    try:
        shutil.copytree(folder, staging / folder.name, ignore=skip)
        try:
            os.replace(staging / folder.name, target)
        except OSError:  # another session made the copy meanwhile: use it if it is of this demo
            if (
                not (target / "summary.json").is_file()
                or (target / "summary.json").read_bytes() != summary.read_bytes()
            ):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
