"""Shared page helpers: the open study, cached reads of its files, job progress. UI only; all work is in ``core``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import streamlit as st

from core.common.errors import MemoScopeError
from core.detect.diagnostics import CalibrationDiagnostics
from core.detect.metrics import BeyondHeldout, MemorizationMetrics
from core.io.load import source_of
from core.study import jobs, results, verdicts
from core.study.caveats import caveats
from core.study.compare import StudyRow, compare_studies
from core.study.pseudonyms import Pseudonyms
from core.study.results import Calibration, Pair, ScanResults, ScanSummary
from core.study.review import (
    ByPatient,
    by_patient,
    diagnostics_at,
    metrics_at,
    nearer_than_heldout,
    sample_conditioning,
)
from core.study.store import Study, StudyInputs, working_copy

STUDIES = Path("studies")
CHECKPOINTS = Path("checkpoints")


def code(value: object) -> str:
    """``value`` as Markdown inline code that nothing in it can leave: a patient ID or file name with backticks
    (`` x` ![a](https://…) ``) would otherwise close the code span and show a live remote image or link. The fence is
    one backtick longer than any run inside (CommonMark), and line breaks become spaces."""
    text = " ".join(str(value).split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def current_study() -> Path | None:
    """The study chosen in the sidebar (``app.py`` keeps it in the session)."""
    value = st.session_state.get("study")
    return Path(value) if value else None


def require_study() -> Path:
    study = current_study()
    if study is None:
        st.info("Open or create a study in the sidebar first.")
        st.stop()
    return study


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


@st.cache_data(max_entries=32, show_spinner=False)
def _scan(study: str, mtime: float) -> ScanResults:
    return ScanResults.open(study)  # checks every result file against the summary


@st.cache_data(max_entries=32, show_spinner=False)
def _calibration(study: str, mtime: float) -> Calibration:
    return _scan(study, mtime).calibration()


@st.cache_data(max_entries=32, show_spinner=False)
def _pairs(study: str, mtime: float) -> list[Pair]:
    return _scan(study, mtime).pairs()


@st.cache_data(max_entries=32, show_spinner=False)
def _by_patient(study: str, mtime: float, tau: float) -> ByPatient:
    return by_patient(_scan(study, mtime), tau)


@st.cache_data(max_entries=32, show_spinner=False)
def _nearer_than_heldout(study: str, mtime: float) -> BeyondHeldout:
    return nearer_than_heldout(_scan(study, mtime), _pairs(study, mtime))  # the pairs the pages already hold


def beyond_heldout(study: Path) -> BeyondHeldout:
    """How many samples are nearer to training than any held-out scan (cached until the study is rescanned)."""
    return _nearer_than_heldout(str(study), _scan_mtime(study))


@st.cache_data(max_entries=32, show_spinner=False)
def _conditioning(study: str, mtime: float) -> dict[str, dict[str, float]]:
    return sample_conditioning(_scan(study, mtime).summary)


def conditioning(study: Path) -> dict[str, dict[str, float]]:
    """Each synthetic sample's conditioning values (conditional LDMs), by synthetic ID; empty otherwise."""
    return _conditioning(str(study), _scan_mtime(study))


def conditioning_text(study: Path, synthetic_id: str) -> str:
    """``generated with gender 0 · age 0.41`` for a sample of a conditional LDM, else empty."""
    values = conditioning(study).get(source_of(synthetic_id))
    return "generated with " + " · ".join(f"{k} {v:g}" for k, v in values.items()) if values else ""


def patient_level(study: Path, tau: float) -> ByPatient:
    """The study's numbers with patients as the unit, at ``tau`` (cached until the study is rescanned)."""
    return _by_patient(str(study), _scan_mtime(study), tau)


def _scan_mtime(study: Path) -> float:
    return _mtime(study / results.SUMMARY)  # the summary is written last: it changes with every rescan


def scan(study: Path) -> ScanResults | None:
    """The study's scan results, or ``None`` before the first scan (cached until the study is rescanned).

    A damaged or half-written study is shown as a message naming the file and what to do, and the page stops.
    """
    if not results.is_scanned(study):
        return None
    try:
        return _scan(str(study), _scan_mtime(study))
    except MemoScopeError as exc:
        st.error(str(exc))
        st.stop()


def summary(study: Path) -> ScanSummary | None:
    """The study's scan summary, or ``None`` before the first scan."""
    found = scan(study)
    return found.summary if found else None


def require_summary(study: Path) -> ScanSummary:
    """The study's scan summary; without one, say where to scan and stop the page."""
    found = summary(study)
    if found is None:
        st.info("This study has not been scanned yet: embed and scan it on the Detector page first.")
        st.page_link("views/detector.py", label="Go to Detector")
        st.stop()
    return found


def calibration(study: Path) -> Calibration:
    return _calibration(str(study), _scan_mtime(study))


def pairs(study: Path) -> list[Pair]:
    return _pairs(str(study), _scan_mtime(study))


@st.cache_data(max_entries=32, show_spinner=False)
def _pseudonyms(study: str, mtime: float) -> Pseudonyms:
    return Pseudonyms.of(_pairs(study, mtime))


@st.cache_data(max_entries=8, show_spinner="Reading the studies...")
def _compare_rows(folders: tuple[str, ...], mtimes: tuple[float, ...]) -> list[StudyRow]:
    return compare_studies(list(folders))


def scanned_studies() -> list[str]:
    """The names of the scanned studies under ``studies/``."""
    if not STUDIES.is_dir():
        return []
    return sorted(p.name for p in STUDIES.iterdir() if p.is_dir() and results.is_scanned(p))


def study_dims(name: str) -> int:
    """2 or 3: the spatial dimensions a scanned study under ``studies/`` was scanned in."""
    folder = STUDIES / name
    return _study_dims(str(folder), _scan_mtime(folder))


@st.cache_data(max_entries=64, show_spinner=False)
def _study_dims(folder: str, mtime: float) -> int:
    return results.read_summary(folder).preprocessing.spatial_dims


def compare_rows(names: tuple[str, ...]) -> list[StudyRow]:
    """The studies ``names`` (under ``studies/``; a demo study through its working copy, where its saved threshold
    lives) as comparison rows; cached until one is rescanned or its threshold is saved."""
    folders = tuple(working_copy(STUDIES / n) for n in names)
    mtimes = tuple(m for f in folders for m in (_scan_mtime(f), _mtime(f / "study.sqlite"), _mtime(f / "privacy.json")))
    return _compare_rows(tuple(str(f) for f in folders), mtimes)


def presenting() -> bool:
    """Presentation mode (the sidebar switch): training scans and patients under pseudonyms everywhere."""
    return bool(st.session_state.get("presentation"))


def shown_scan(study: Path, train_id: str) -> str:
    """A training scan's ID as the app shows it: its report pseudonym in presentation mode."""
    return _pseudonyms(str(study), _scan_mtime(study)).scans.get(train_id, "train-?") if presenting() else train_id


def shown_patient(study: Path, patient_id: str) -> str:
    """A patient ID as the app shows it: its report pseudonym in presentation mode."""
    names = _pseudonyms(str(study), _scan_mtime(study))
    return names.patients.get(patient_id, "patient-?") if presenting() else patient_id


SCAN_COLUMNS = ("train_id", "nearest_training")
PATIENT_COLUMNS = ("patient_id", "nearest_patient")


def shown_rows(study: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows as the app shows them: in presentation mode every training-scan and patient column under its
    report pseudonym (tables are drawn on a canvas, where a file name is as visible as in text)."""
    if not presenting():
        return rows
    return [
        {
            key: shown_scan(study, value)
            if key in SCAN_COLUMNS and isinstance(value, str)
            else shown_patient(study, value)
            if key in PATIENT_COLUMNS and isinstance(value, str)
            else value
            for key, value in row.items()
        }
        for row in rows
    ]


def inputs(study: Path) -> StudyInputs:
    return Study(study).inputs()  # reading does not touch the database


@st.cache_data(show_spinner="Computing the intervals...", max_entries=256)
def _metrics(study: str, mtime: float, tau: float, rule: str, percentile: float | None) -> MemorizationMetrics:
    return metrics_at(_scan(study, mtime), tau, rule, percentile)


def metrics(study: Path, tau: float, rule: str, percentile: float | None) -> MemorizationMetrics:
    """Both fractions at ``tau`` with the scan's own interval methods (the same numbers the Overview, Compare and
    the report show at that threshold), cached per threshold."""
    return _metrics(str(study), _scan_mtime(study), float(tau), rule, percentile)


def study_threshold(study: Path) -> verdicts.StudyThreshold:
    """The threshold the study is judged at: the last one saved on Calibrate for this scan, else the scan's."""
    scanned = require_scan(study)
    return verdicts.study_threshold(study, scanned)


@st.cache_data(show_spinner=False, max_entries=64)
def _diagnostics(study: str, mtime: float, tau: float) -> CalibrationDiagnostics:
    return diagnostics_at(_scan(study, mtime), tau)


def diagnostics(study: Path, tau: float) -> CalibrationDiagnostics:
    """Where ``tau`` sits in the study's synthetic scores, and the gap rule's second opinion."""
    return _diagnostics(str(study), _scan_mtime(study), float(tau))


def show_caveats(study: Path, collapsed: bool = False) -> None:
    """The study's caveats at its threshold: a warning box (Overview), or a collapsed expander (Review)."""
    scanned = require_scan(study)
    chosen = study_threshold(study)
    at = metrics_at(scanned, chosen.value, chosen.rule, chosen.percentile)
    found = caveats(scanned.summary, at, pairs(study), beyond_heldout(study), diagnostics(study, chosen.value))
    if not found:
        return
    text = "\n".join(f"- {c.text}" for c in found)
    if collapsed:
        with st.expander(f"{len(found)} caveat(s) about these numbers"):
            st.markdown(text)
    else:
        st.warning("**Before relying on these numbers**\n\n" + text)


def require_scan(study: Path) -> ScanResults:
    found = scan(study)
    if found is None:
        require_summary(study)  # says where to scan and stops
        raise AssertionError("unreachable")
    return found


def compute_inputs(key: str) -> dict[str, str]:
    """Device and precision pickers for a job's form (inside the form); the job records what it ran on."""
    from core.common.devices import device_choices, device_description, precision_choices, resolve_device

    best = resolve_device("auto")
    cols = st.columns(2)
    device = cols[0].selectbox(
        "Device",
        device_choices(),
        key=f"{key}_device",
        help=f"auto: CUDA, then MPS, then CPU (here: {device_description(best)}). A seed gives the same result on any.",
    )
    precision = cols[1].selectbox(
        "Precision",
        precision_choices(best),
        key=f"{key}_precision",
        help="fp32, or mixed precision (bf16, fp16 on a GPU) where the benchmarks show it is faster: "
        "`bash benchmarks/gpu_check.sh` measures it on your GPU. On a CPU keep fp32.",
    )
    return {"device": device, "precision": precision}


def start(study: Path, kind: str, options: dict[str, Any]) -> bool:
    """Start a background job from a form's options; a bad option is shown, nothing starts."""
    try:
        jobs.start_job(study, kind, options)
    except MemoScopeError as exc:
        st.error(str(exc))
        return False
    return True


def job_panel(study: Path, kind: str) -> jobs.Job | None:
    """Progress of the study's latest ``kind`` job, polled every second while it runs.

    The job lives on disk, so the bar survives widget clicks, page changes and reloads.
    """

    @st.fragment(run_every=1.0)
    def _panel() -> None:
        latest = next((j for j in jobs.list_jobs(study) if j.kind == kind), None)
        if latest is None:
            return
        if latest.active:
            st.progress(latest.fraction, text=f"{latest.kind}: {latest.progress_line()}")
            if latest.message:
                st.caption(latest.message)
        elif latest.status == jobs.JobStatus.DONE:
            took = f" in {jobs.clock(latest.updated - latest.started)}" if latest.updated and latest.started else ""
            when = (latest.finished_at or "")[:19].replace("T", " ")
            st.success(f"{latest.kind} finished{took} ({when} UTC): {latest.message}")
            if st.session_state.get(f"seen::{latest.id}") is None:
                st.session_state[f"seen::{latest.id}"] = True
                st.rerun(scope="app")  # refresh the page's results once
        else:
            st.error(f"{latest.kind} failed: {latest.error}")
        with st.expander("job log"):
            st.code("\n".join(latest.log[-20:]) or "(empty)")

    _panel()
    return next((j for j in jobs.list_jobs(study) if j.kind == kind), None)
