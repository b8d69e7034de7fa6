"""Background jobs whose state lives on disk in the study folder.

The app never runs long work in a page script: :func:`start_job` writes ``jobs/<id>.json`` and
starts ``python -m core run-job <file>`` as a separate process, which updates that file
(atomically) as it goes. Any page, after any click, reload or app restart, reads the file back
with :func:`read_job`. One job at a time per study.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from core.common.config import Config
from core.common.errors import MemoScopeError
from core.common.processes import process_alive
from core.common.progress import Progress, ProgressEvent
from core.common.provenance import atomic_write_json, now_utc
from core.detect.record import TrainDetectorConfig
from core.generative.sample import GenerateConfig
from core.io.preprocessing import config_from_options
from core.study.privacy import STAGES as PRIVACY_STAGES
from core.study.privacy import PrivacyConfig
from core.study.scan import STAGES as SCAN_STAGES
from core.study.scan import ScanConfig
from core.study.selftest import STAGES as SELFTEST_STAGES
from core.study.selftest import SelfTestConfig

JOBS_DIR = "jobs"


class JobStatus(StrEnum):
    """queued -> running -> done | failed (a job file stores the text)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass
class Job:
    """One background job and its progress.

    Attributes:
        id, kind, params: what runs (params: the job kind's config, as :meth:`Config.to_dict` wrote it).
        status: queued -> running -> done | failed.
        stage, stages: the current stage of the kind's ordered stages.
        done, total: progress within the stage, in its own units (samples, epochs, sets).
        message: the latest progress line; log: the last lines.
        started, updated, stage_started: ``time.time()`` stamps, for the rate and the ETA.
    """

    id: str
    kind: str
    params: dict[str, Any]
    study: str
    status: str = JobStatus.QUEUED
    created_at: str = field(default_factory=now_utc)
    finished_at: str | None = None
    pid: int | None = None
    stage: str = ""
    stages: list[str] = field(default_factory=list)
    done: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    started: float | None = None
    updated: float | None = None
    stage_started: float | None = None
    log: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Overall progress: finished stages plus the share of the current one."""
        within = min(1.0, self.done / self.total) if self.total else 0.0
        if self.status == JobStatus.DONE:
            return 1.0
        if self.stage in self.stages:
            return (self.stages.index(self.stage) + within) / len(self.stages)
        return within

    @property
    def active(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.RUNNING)

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left at the overall rate so far (``None`` until some progress is made)."""
        share = self.fraction
        if self.status != JobStatus.RUNNING or not self.started or share <= 0:
            return None
        elapsed = (now or time.time()) - self.started
        return max(0.0, elapsed / share * (1.0 - share))

    def rate(self, now: float | None = None) -> float | None:
        """Units of the current stage (samples, epochs, pairs) per second since the stage began."""
        if not self.stage_started or not self.done:
            return None
        elapsed = (now or time.time()) - self.stage_started
        return self.done / elapsed if elapsed > 0 else None

    def progress_line(self, now: float | None = None) -> str:
        """``stage done/total · rate · ETA`` for a progress bar."""
        parts = [f"{self.stage or self.kind} {self.done}/{self.total}" if self.total else (self.stage or self.kind)]
        rate = self.rate(now)
        if rate is not None:
            parts.append(f"{rate:.2f}/s" if rate < 10 else f"{rate:.0f}/s")
        eta = self.eta_seconds(now)
        parts.append("ETA " + ("estimating" if eta is None else clock(eta)))
        return " · ".join(parts)


def clock(seconds: float) -> str:
    """``mm:ss``, or ``hh:mm:ss`` from an hour on."""
    return time.strftime("%H:%M:%S" if seconds >= 3600 else "%M:%S", time.gmtime(seconds))


def job_file(study: str | Path, job_id: str) -> Path:
    return Path(study) / JOBS_DIR / f"{job_id}.json"


def _write(path: Path, job: Job) -> None:
    atomic_write_json(path, asdict(job))


def read_job(path: str | Path) -> Job:
    """Read a job back; a 'running' job whose process has gone is reported as failed."""
    path = Path(path)
    try:
        job = Job(**json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise MemoScopeError(f"{path}: not a readable job record ({exc}).") from exc
    if job.active and job.pid is not None and not process_alive(job.pid):
        try:  # the worker may have finished between the two reads
            job = Job(**json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            pass
        if job.active:
            job.status, job.error, job.finished_at = (
                JobStatus.FAILED.value,
                "the worker process ended without finishing (killed?)",
                now_utc(),
            )
            _write(path, job)
    return job


def list_jobs(study: str | Path) -> list[Job]:
    """All jobs of a study, newest first."""
    folder = Path(study) / JOBS_DIR
    jobs = [read_job(p) for p in folder.glob("*.json")] if folder.is_dir() else []
    return sorted(jobs, key=lambda j: j.created_at, reverse=True)


def active_job(study: str | Path) -> Job | None:
    return next((j for j in list_jobs(study) if j.active), None)


def start_job(study: str | Path, kind: str, options: dict[str, Any]) -> Job:
    """Check the options, record a job and start its worker process; refuses while another job of the study runs.

    ``options`` are flat (as the CLI's flags): they become the kind's config here, so a bad value
    is reported now, on the page, before any process starts.
    """
    if kind not in KINDS:
        raise MemoScopeError(f"job kind {kind!r} must be one of {tuple(KINDS)}.")
    params = config_from_options(KINDS[kind].config, options).to_dict()
    study = Path(study)
    running = active_job(study)
    if running is not None:
        raise MemoScopeError(f"{study}: a {running.kind} job is still running; wait for it or let it fail first.")
    job = Job(
        id=time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6],
        kind=kind,
        params=params,
        study=str(study),
        stages=list(KINDS[kind].stages),
    )
    path = job_file(study, job.id)
    _write(path, job)
    package_root = str(Path(__file__).resolve().parents[2])  # `core` importable from any working folder
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with open(path.with_suffix(".log"), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "core", "run-job", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    job.pid = process.pid
    current = read_job(path)
    if current.status == JobStatus.QUEUED:  # the worker may already have moved it on
        current.pid = process.pid
        _write(path, current)
    return job


class _Reporter:
    """The worker's progress sink: takes :class:`ProgressEvent` s, writes the job file (throttled, atomic)."""

    def __init__(self, path: Path, job: Job) -> None:
        self.path, self.job, self.last = path, job, 0.0

    def __call__(self, event: ProgressEvent) -> None:
        job = self.job
        new_stage = event.stage != job.stage
        if new_stage:
            job.stage_started = time.time()
        job.stage, job.done, job.total = event.stage, event.done, event.total
        if event.message:
            job.message = event.message
            job.log = [*job.log[-49:], f"{event.stage}: {event.message}"]
        self.flush(force=new_stage)

    def flush(self, force: bool = False) -> None:
        self.job.updated = time.time()
        if force or self.job.updated - self.last > 0.5:
            self.last = self.job.updated
            _write(self.path, self.job)


def run_job(path: str | Path) -> Job:
    """The worker: run the job described in ``path`` and record its outcome there."""
    path = Path(path)
    job = read_job(path)
    job.status, job.pid, job.started = JobStatus.RUNNING.value, os.getpid(), time.time()
    reporter = _Reporter(path, job)
    reporter(ProgressEvent(job.stages[0] if job.stages else job.kind, 0, 1, f"{job.kind} started"))
    try:
        kind = KINDS[job.kind]
        job.result = kind.run(kind.config.from_dict(job.params, source=f"{path} params"), reporter)
        job.status = JobStatus.DONE.value
        outcome = "; ".join(f"{k.replace('_', ' ')} {_short(v)}" for k, v in job.result.items())
        reporter(ProgressEvent(job.stage, job.total or 1, job.total or 1, outcome or "done"))
    except BaseException as exc:  # noqa: BLE001 - every failure must be recorded for the page
        job.status = JobStatus.FAILED.value
        job.error = str(exc) if isinstance(exc, MemoScopeError) else f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    job.finished_at = now_utc()
    reporter.flush(force=True)
    return job


def _short(value: Any) -> str:
    return (
        f"{value:.3g}"
        if isinstance(value, float)
        else (value[:12] if isinstance(value, str) and len(value) == 64 else str(value))
    )


def _run_generate(config: Any, progress: Progress) -> dict[str, Any]:
    from core.generative.sample import generate

    result = generate(config, progress)
    return {"out": str(result.out), "written": result.n_written, "skipped": result.n_skipped, "seconds": result.seconds}


def _run_train_detector(config: Any, progress: Progress) -> dict[str, Any]:
    from core.detect.detector import train_from_sources

    detector = train_from_sources(config, progress)
    return {"detector": config.out, "hash": detector.detector_hash, "best_epoch": detector.best_epoch + 1}


def _run_scan(config: Any, progress: Progress) -> dict[str, Any]:
    from core.study.scan import run_scan

    summary = run_scan(config, progress)
    return {"threshold": summary.tau, "copies": summary.copies.count, "memorized": summary.memorized.count}


def _run_selftest(config: Any, progress: Progress) -> dict[str, Any]:
    from core.study.selftest import run_selftest

    result = run_selftest(config, progress)
    return {"unseen_flagged": result.unseen_fpr.count, "f1": round(result.f1, 3), "auroc": round(result.auroc, 3)}


def _run_privacy(config: Any, progress: Progress) -> dict[str, Any]:
    from core.common.devices import resolve_device
    from core.study.privacy import run_privacy

    report = run_privacy(config.study, config.membership(), str(resolve_device(config.device)), progress)
    auroc = None if report.membership is None else round(report.membership.auroc, 3)
    return {"ct": None if report.ct is None else round(report.ct.value, 2), "membership_auroc": auroc}


@dataclass(frozen=True)
class JobKind:
    """A kind of background job: its config class, its ordered stages (for the bar) and its runner."""

    config: type[Config]
    stages: tuple[str, ...]
    run: Callable[[Any, Progress], dict[str, Any]]


KINDS: dict[str, JobKind] = {
    "generate": JobKind(GenerateConfig, ("sample",), _run_generate),
    "train-detector": JobKind(TrainDetectorConfig, ("train detector",), _run_train_detector),
    "scan": JobKind(ScanConfig, SCAN_STAGES, _run_scan),
    "selftest": JobKind(SelfTestConfig, SELFTEST_STAGES, _run_selftest),
    "privacy": JobKind(PrivacyConfig, PRIVACY_STAGES, _run_privacy),
}
