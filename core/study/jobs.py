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
from pathlib import Path
from typing import Any, Literal

from core.common.errors import MemoScopeError
from core.common.provenance import atomic_write_json, now_utc

JOBS_DIR = "jobs"
JobKind = Literal["generate", "train-detector", "scan"]
JobStatus = Literal["queued", "running", "done", "failed"]
KINDS: tuple[str, ...] = ("generate", "train-detector", "scan")


@dataclass
class Job:
    """One background job and its progress.

    Attributes:
        id, kind, params: what runs (params are the keyword arguments of the core function).
        status: queued -> running -> done | failed.
        done, total: progress in the job's own units (samples, epochs, stages).
        message: the latest progress line; log: the last lines.
        started, updated: ``time.time()`` stamps, for the ETA.
    """

    id: str
    kind: str
    params: dict[str, Any]
    study: str
    status: JobStatus = "queued"
    created_at: str = field(default_factory=now_utc)
    finished_at: str | None = None
    pid: int | None = None
    done: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    started: float | None = None
    updated: float | None = None
    log: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left at the rate so far (``None`` until there is a rate)."""
        if self.status != "running" or not self.started or not self.done or not self.total:
            return None
        elapsed = (now or time.time()) - self.started
        return max(0.0, elapsed / self.done * (self.total - self.done))


def job_file(study: str | Path, job_id: str) -> Path:
    return Path(study) / JOBS_DIR / f"{job_id}.json"


def _write(path: Path, job: Job) -> None:
    atomic_write_json(path, asdict(job))


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (reaps it first if it is our own finished child)."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_job(path: str | Path) -> Job:
    """Read a job back; a 'running' job whose process has gone is reported as failed."""
    path = Path(path)
    try:
        job = Job(**json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise MemoScopeError(f"{path}: not a readable job record ({exc}).") from exc
    if job.active and job.pid is not None and not _alive(job.pid):
        try:  # the worker may have finished between the two reads
            job = Job(**json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            pass
        if job.active:
            job.status, job.error, job.finished_at = "failed", "the worker process ended without finishing (killed?)", now_utc()
            _write(path, job)
    return job


def list_jobs(study: str | Path) -> list[Job]:
    """All jobs of a study, newest first."""
    folder = Path(study) / JOBS_DIR
    jobs = [read_job(p) for p in folder.glob("*.json")] if folder.is_dir() else []
    return sorted(jobs, key=lambda j: j.created_at, reverse=True)


def active_job(study: str | Path) -> Job | None:
    return next((j for j in list_jobs(study) if j.active), None)


def start_job(study: str | Path, kind: str, params: dict[str, Any]) -> Job:
    """Record a job and start its worker process; refuses while another job of the study runs."""
    if kind not in KINDS:
        raise MemoScopeError(f"job kind {kind!r} must be one of {KINDS}.")
    study = Path(study)
    running = active_job(study)
    if running is not None:
        raise MemoScopeError(f"{study}: a {running.kind} job is still running; wait for it or let it fail first.")
    job = Job(id=time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6], kind=kind, params=params, study=str(study))
    path = job_file(study, job.id)
    _write(path, job)
    package_root = str(Path(__file__).resolve().parents[1])  # `core` importable from any working folder
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with open(path.with_suffix(".log"), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "core", "run-job", str(path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
        )
    job.pid = process.pid
    current = read_job(path)
    if current.status == "queued":  # the worker may already have moved it on
        current.pid = process.pid
        _write(path, current)
    return job


class _Reporter:
    """Progress callbacks for a worker: throttled, atomic writes of the job file."""

    def __init__(self, path: Path, job: Job) -> None:
        self.path, self.job, self.last = path, job, 0.0

    def update(self, done: int | None = None, total: int | None = None, message: str | None = None, force: bool = False) -> None:
        job = self.job
        if done is not None:
            job.done = done
        if total is not None:
            job.total = total
        if message:
            job.message = message
            job.log = [*job.log[-49:], message]
        job.updated = time.time()
        if force or job.updated - self.last > 0.5:
            self.last = job.updated
            _write(self.path, job)


def run_job(path: str | Path) -> Job:
    """The worker: run the job described in ``path`` and record its outcome there."""
    path = Path(path)
    job = read_job(path)
    job.status, job.pid, job.started = "running", os.getpid(), time.time()
    reporter = _Reporter(path, job)
    reporter.update(message=f"{job.kind} started", force=True)
    try:
        job.result = _RUNNERS[job.kind](job.params, reporter)
        job.status = "done"
        reporter.update(done=job.total or 1, total=job.total or 1, message=f"{job.kind} finished")
    except BaseException as exc:  # noqa: BLE001 - every failure must be recorded for the page
        job.status = "failed"
        job.error = str(exc) if isinstance(exc, MemoScopeError) else f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    job.finished_at = now_utc()
    reporter.update(force=True)
    return job


def _spec(params: dict[str, Any]):  # noqa: ANN202 - PreprocessSpec
    from core.io.preprocessing import PreprocessSpec

    return PreprocessSpec.for_dims(int(params.get("dims", 2)), params.get("size"), resize=params.get("resize", "resize"),
                                   intensity=params.get("intensity", "minmax"))


def _run_generate(params: dict[str, Any], report: _Reporter) -> dict[str, Any]:
    from core.generative.sample import generate

    result = generate(
        params["checkpoint"], params["out"], int(params["n"]), int(params.get("steps", 50)), params.get("scheduler", "ddim"),
        int(params.get("batch_size", 8)), int(params.get("seed", 0)), params.get("device", "auto"), params.get("precision", "fp32"),
        params.get("format", "png16"), progress=lambda done, n: report.update(done, n, f"{done}/{n} samples"), show_bar=False,
    )
    return {"out": str(result.out), "written": result.n_written, "skipped": result.n_skipped, "seconds": result.seconds}


def _run_train_detector(params: dict[str, Any], report: _Reporter) -> dict[str, Any]:
    from core.detect.detector import train_from_sources

    report.update(0, 1, "loading images")
    overrides = {k: params[k] for k in ("arch", "epochs", "augmentation", "batch_size") if params.get(k) is not None}
    detector, digest = train_from_sources(
        params["train"], params["val"], _spec(params), params["out"], params.get("slices"), seed=int(params.get("seed", 0)),
        overrides=overrides, overwrite=True, progress=lambda r: report.update(
            r["epoch"], r["epochs"], f"epoch {r['epoch']}/{r['epochs']}: train {r['train_loss']:.4f} val {r['val_loss']:.4f}"))
    return {"detector": params["out"], "hash": digest, "best_epoch": detector.best_epoch + 1}


SCAN_STAGES = ("loaded", "training a detector", "threshold", "wrote")


def _run_scan(params: dict[str, Any], report: _Reporter) -> dict[str, Any]:
    from core.study.scan import ScanConfig, run_scan

    config = ScanConfig(
        spec=_spec(params), slices=params.get("slices"), threshold_rule=params.get("threshold_rule", "paper"),
        percentile=float(params.get("percentile", 95.0)), k=int(params.get("k", 5)), seed=int(params.get("seed", 0)),
        detector=params.get("detector"), detector_overrides=params.get("detector_overrides", {}),
    )
    stage = {"n": 0}

    def log(line: str) -> None:
        if any(line.startswith(s) for s in SCAN_STAGES):
            stage["n"] += 1
        report.update(stage["n"], len(SCAN_STAGES), line.strip())

    summary = run_scan(params["train"], params["val"], params["synthetic"], params["out"], config, log=log)
    return {"threshold": summary["threshold"], "copies": summary["counts"]["copies"], "memorized": summary["counts"]["memorized"]}


_RUNNERS: dict[str, Callable[[dict[str, Any], _Reporter], dict[str, Any]]] = {
    "generate": _run_generate,
    "train-detector": _run_train_detector,
    "scan": _run_scan,
}
