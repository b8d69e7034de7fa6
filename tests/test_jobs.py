"""Background jobs: run in their own process, report progress on disk, record failures, detect dead workers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from core.common.errors import MemoScopeError
from core.generative.ldm import build_autoencoder, build_unet, default_config, save_ldm
from core.study import jobs
from core.study.results import ScanResults
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    config = default_config(2, (16, 16))
    torch.manual_seed(0)
    save_ldm(tmp_path / "ldm", config, build_autoencoder(config), build_unet(config))
    return tmp_path / "ldm"


def _wait(study: Path, job_id: str, timeout: float = 120.0) -> jobs.Job:
    def finished() -> bool:
        return not jobs.read_job(jobs.job_file(study, job_id)).active

    wait_until(finished, timeout, f"job {job_id} still running", interval=0.2)
    return jobs.read_job(jobs.job_file(study, job_id))


@pytest.mark.slow
def test_generate_job_runs_in_the_background_and_finishes(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # the worker runs `python -m core` from the working folder
    study = tmp_path / "study"
    job = jobs.start_job(
        study,
        "generate",
        {
            "checkpoint": str(checkpoint),
            "out": str(study / "synthetic"),
            "n": 3,
            "steps": 2,
            "batch_size": 2,
            "device": "cpu",
        },
    )
    assert job.pid and job.pid != os.getpid()
    with pytest.raises(MemoScopeError, match="still running"):
        jobs.start_job(study, "generate", {"checkpoint": str(checkpoint), "out": str(study / "other"), "n": 1})
    done = _wait(study, job.id)
    assert done.status == "done", done.error
    assert (done.done, done.total, done.fraction) == (3, 3, 1.0)
    assert done.result["written"] == 3 and len(list((study / "synthetic").glob("*.png"))) == 3
    assert jobs.active_job(study) is None and jobs.list_jobs(study)[0].id == job.id


def test_a_failing_job_records_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    study = tmp_path / "study"
    job = jobs.start_job(study, "generate", {"checkpoint": str(tmp_path / "missing"), "out": str(study / "s"), "n": 1})
    done = _wait(study, job.id)
    assert done.status == "failed" and "missing" in (done.error or "")


def test_a_killed_worker_is_reported_failed(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    study = tmp_path / "study"
    job = jobs.start_job(
        study,
        "generate",
        {
            "checkpoint": str(checkpoint),
            "out": str(study / "s"),
            "n": 5000,
            "steps": 50,
            "batch_size": 1,
            "device": "cpu",
        },
    )
    wait_until(
        lambda: jobs.read_job(jobs.job_file(study, job.id)).status == "running", 60, "job running", fail=False
    )  # killed after at most a minute whatever its state
    os.kill(job.pid, signal.SIGKILL)  # type: ignore[arg-type]
    done = _wait(study, job.id, 30)
    assert done.status == "failed" and "ended without finishing" in (done.error or "")


def test_eta_and_fraction() -> None:
    job = jobs.Job(
        id="x", kind="generate", params={}, study="s", status="running", done=25, total=100, started=time.time() - 10
    )
    assert job.fraction == 0.25
    eta = job.eta_seconds(now=job.started + 10)  # a stated clock: a slow or loaded machine changes nothing
    assert eta == pytest.approx(30)
    assert jobs.Job(id="y", kind="scan", params={}, study="s").eta_seconds() is None


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MemoScopeError, match="job kind"):
        jobs.start_job(tmp_path, "format-disk", {})


@pytest.mark.slow
def test_train_detector_job_saves_a_detector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    study = tmp_path / "study"
    manifest = "data/demo/2d/manifest.csv"
    job = jobs.start_job(
        study,
        "train-detector",
        {
            "train": manifest,
            "val": manifest,
            "dims": 2,
            "size": 32,
            "out": str(study / "detector"),
            "overwrite": True,
            "overrides": {"arch": "convres", "epochs": 1},
        },
    )
    done = _wait(study, job.id, 300)
    assert done.status == "done", done.error
    assert done.done == done.total >= 1 and len(done.result["hash"]) == 64  # progress counts training steps
    assert (study / "detector" / "detector.json").is_file()

    # the scan job with that detector: stages advance in order, results land in the study
    synthetic = str(REPO / "studies" / "demo-2d" / "synthetic")
    job = jobs.start_job(
        study,
        "scan",
        {
            "train": manifest,
            "val": manifest,
            "synthetic": synthetic,
            "out": str(study),
            "dims": 2,
            "size": 32,
            "detector": str(study / "detector"),
            "percentile": 90.0,
            "k": 2,
            "privacy": False,  # the samples name the demo checkpoint; its privacy step is tested in test_cli_e2e
        },
    )
    assert job.params["spec"]["spatial_size"] == [32, 32]  # the options became a validated config
    done = _wait(study, job.id, 300)
    assert done.status == "done", done.error
    assert done.stage == "write" and done.fraction == 1.0 and done.stages[0] == "load"
    logged_stages = [line.split(":")[0] for line in done.log]
    assert logged_stages.index("load") < logged_stages.index("embed") < logged_stages.index("write")
    summary = ScanResults.open(study).summary
    assert done.result["copies"] == summary.copies.count and summary.inputs["synthetic"].n == 128


def test_a_bad_option_is_refused_before_a_job_starts(tmp_path: Path) -> None:
    with pytest.raises(MemoScopeError, match="percentile 150"):
        jobs.start_job(
            tmp_path, "scan", {"train": "t", "val": "v", "synthetic": "s", "out": str(tmp_path), "percentile": 150}
        )
    assert not (tmp_path / "jobs").exists()


@pytest.mark.slow
def test_a_finished_job_says_what_it_did(tmp_path: Path, checkpoint: Path) -> None:
    study = tmp_path / "study"
    job = jobs.start_job(
        study,
        "generate",
        {"checkpoint": str(checkpoint), "out": str(tmp_path / "g"), "n": 2, "steps": 1, "device": "cpu"},
    )
    done = _wait(study, job.id)
    assert done.status == "done" and "written 2" in done.message and "generate" not in done.message


def test_progress_line_has_count_rate_and_an_eta_from_the_first_finished_stage() -> None:
    now = time.time()
    job = jobs.Job(
        id="x",
        kind="scan",
        params={},
        study="s",
        status="running",
        stage="embed",
        stages=["load", "embed"],
        done=0,
        total=3,
        started=now - 20,
        stage_started=now - 1,
    )
    assert job.fraction == 0.5 and job.rate(now) is None
    assert job.progress_line(now) == "embed 0/3 · ETA 00:20"  # one of two stages done in 20 s
    job.done = 2
    line = job.progress_line(now)
    assert line.startswith("embed 2/3 · 2.00/s · ETA ") and "estimating" not in line
