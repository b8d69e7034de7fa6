"""A study's privacy tests beyond copies: membership through the checkpoint, and the distribution-level tests.

``python -m core privacy --study S`` (and the app) runs them on a scanned study: the distribution tests on the
scan's embeddings (training, validation as the held-out reference, synthetic), the membership test through the
study's checkpoint when it has one (its training and validation scans, in the checkpoint's own preprocessing).
The result is ``privacy.json`` (:class:`PrivacyReport`, with versions, settings, device and input hashes) and
``privacy_patients.csv`` (each patient's membership score under a pseudonym; the key to the pseudonyms stays in
``privacy_key.csv`` in the study folder). Denoising errors are cached per chunk of scans, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from core.common.config import Config
from core.common.errors import MemoScopeError
from core.common.progress import Progress, ProgressEvent, silent
from core.common.provenance import atomic_path, atomic_write_json, now_utc, read_json_record, sha256_json, versions
from core.common.tables import write_csv
from core.io.load import ImageSet
from core.privacy.distribution import CTResult, ShareResult, authenticity, ct_test, nearest_record_share
from core.privacy.membership import (
    DEFAULT_TIMESTEPS,
    MembershipConfig,
    MembershipResult,
    denoising_errors,
    membership_test,
)
from core.study.results import read_embeddings, read_summary
from core.study.store import open_study

logger = logging.getLogger(__name__)

PRIVACY = "privacy.json"
PRIVACY_PATIENTS = "privacy_patients.csv"
PRIVACY_KEY = "privacy_key.csv"
NO_CHECKPOINT = (
    "Membership through the weights: not tested, because this study records no checkpoint (its samples were brought "
    "in); give the checkpoint to the scan to answer it."
)
SEVERAL_CHECKPOINTS = (
    "Membership through the weights: not tested, because this study's samples came from several checkpoints; "
    "scan each checkpoint's samples in its own study to test it."
)
CHUNK = 256  # scans whose denoising errors are computed, then cached, at a time (the unit of resumption)


STAGES = ("distribution tests", "membership")


@dataclass(frozen=True)
class PrivacyConfig(Config):
    """A privacy run (the CLI's flags, the app's job): the study, the membership test's settings, the device."""

    study: str
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        self.membership()  # the timesteps are checked where the test is set up

    def membership(self) -> MembershipConfig:
        return MembershipConfig(timesteps=tuple(self.timesteps), seed=self.seed)


@dataclass(frozen=True)
class PrivacyReport(Config):
    """``privacy.json``: the three answers and how they were reached.

    Attributes:
        ct, authenticity, authenticity_heldout, nearest_record: the distribution-level tests on the scan's
            embeddings (see :mod:`core.privacy.distribution`); ``ct`` is ``None`` when the sets are too small to
            rank (``notes`` says why).
        membership: the membership test through the checkpoint; ``None`` when the study has no checkpoint
            (``membership_note`` says why).
        scan_id: the scan whose embeddings were used; checkpoint_hash: the checkpoint tested.
        inputs: content hash of each set used.
        timings: seconds of each stage (``distribution tests``, ``membership``; denoising errors read from the
            cache cost nothing, so a resumed or repeated run is faster than a first one).
    """

    ct: CTResult | None
    authenticity: ShareResult
    authenticity_heldout: float
    nearest_record: ShareResult
    membership: MembershipResult | None
    membership_note: str
    membership_config: MembershipConfig
    scan_id: str
    checkpoint_hash: str | None
    inputs: dict[str, str]
    device: str
    versions: dict[str, str]
    finished_at: str
    seed: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    timings: dict[str, float] = field(default_factory=dict)

    def sentences(self) -> list[str]:
        """The three answers in plain language, membership first."""
        first = self.membership.sentence() if self.membership else self.membership_note
        auth, near = self.authenticity, self.nearest_record
        return [
            first,
            self.ct.sentence() if self.ct else f"C_T: not tested ({self.ct_note}).",
            f"Authenticity: {auth.value:.0%} of samples are farther from their nearest training scan than that scan "
            f"is from its own nearest neighbour (95 % interval {auth.low:.0%}-{auth.high:.0%}); real new scans: "
            f"{self.authenticity_heldout:.0%} (p = {auth.p_value:.2g} for a difference). Lower than real scans means "
            "samples hug training scans.",
            f"Nearest record: {near.value:.0%} of samples are nearer a training scan than a held-out scan, with the "
            f"two sets the same size (95 % interval {near.low:.0%}-{near.high:.0%}; about 50 % when samples are as "
            f"new to training as held-out scans; p = {near.p_value:.2g}).",
        ]

    @property
    def ct_note(self) -> str:
        """Why C_T was not computed (empty when it was)."""
        return next((n.removeprefix("C_T: ").rstrip(".") for n in self.notes if n.startswith("C_T: ")), "")


def read_privacy(folder: str | Path) -> PrivacyReport | None:
    """The study's privacy results, or ``None`` when the tests have not been run."""
    path = Path(folder) / PRIVACY
    if not path.is_file():
        return None
    data = read_json_record(path, "privacy record", "rerun `python -m core privacy --study`")
    return PrivacyReport.from_dict(data, source=str(path))


def current_privacy(folder: str | Path, scan_id: str) -> PrivacyReport | None:
    """The study's privacy results when they belong to scan ``scan_id``; ``None`` when not run, or run on an
    earlier scan (whose embeddings, and perhaps checkpoint, were others)."""
    report = read_privacy(folder)
    return report if report is not None and report.scan_id == scan_id else None


def _cache_dir() -> Path:
    return Path(os.environ.get("MEMOSCOPE_CACHE_DIR") or Path.home() / ".cache" / "memoscope") / "privacy"


def cached_errors(
    ldm: Any,
    images: ImageSet,
    config: MembershipConfig,
    device: str,
    progress: Progress = silent,
    what: str = "scans",
) -> npt.NDArray[np.float64]:
    """Denoising errors of every scan (``(N, T)``), computed ``CHUNK`` scans at a time and cached after each
    chunk under a key of the checkpoint, the images and the settings: a second run reads them, an interrupted one
    resumes after its last chunk."""
    key = sha256_json(
        {
            "checkpoint": ldm.checkpoint_hash,
            "images": images.content_hash,
            "timesteps": config.timesteps,
            "seed": config.seed,
        }
    )
    path = _cache_dir() / f"{key}.npz"
    done = np.zeros((0, len(config.timesteps)), np.float64)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                done = np.asarray(stored["errors"], np.float64)
        except (OSError, ValueError, KeyError) as exc:  # a damaged cache is recomputed, never trusted
            logger.warning("%s: an unreadable cache of denoising errors (%s); recomputing", path, type(exc).__name__)
        if done.ndim != 2 or done.shape[1] != len(config.timesteps) or len(done) > len(images):
            done = np.zeros((0, len(config.timesteps)), np.float64)
    while len(done) < len(images):
        progress(ProgressEvent("membership", len(done), len(images), f"denoising {what}"))
        chunk = images.images[len(done) : len(done) + CHUNK]
        done = np.concatenate([done, denoising_errors(ldm, np.asarray(chunk), config, device)])
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, errors=done)
    progress(ProgressEvent("membership", len(images), len(images), f"denoised {what}"))
    return done


def _membership(
    folder: Path, summary: Any, config: MembershipConfig, device: str, progress: Progress
) -> tuple[MembershipResult | None, str, list[tuple[str, str, float]], dict[str, str]]:
    """The membership result (or why none), each patient's (id, set, mean denoising error), the sets' hashes."""
    from core.generative.ldm import load_ldm
    from core.io.discover import Role
    from core.io.load import load_set
    from core.io.preprocessing import PreprocessSpec
    from core.study.store import open_study

    if not summary.checkpoint:
        return None, NO_CHECKPOINT, [], {}
    if not isinstance(summary.checkpoint, str):
        return None, SEVERAL_CHECKPOINTS, [], {}
    ldm = load_ldm(summary.checkpoint)
    if isinstance(summary.checkpoint_hash, str) and ldm.checkpoint_hash != summary.checkpoint_hash:
        raise MemoScopeError(
            f"{summary.checkpoint}: its weights (hash {ldm.checkpoint_hash[:12]}) are not the ones that made this "
            f"study's samples ({str(summary.checkpoint_hash)[:12]}); restore that checkpoint, or rescan with samples "
            "of this one."
        )
    spec = PreprocessSpec.from_dict(ldm.config.preprocessing) if ldm.config.preprocessing else summary.preprocessing
    patients = open_study(folder).inputs().patients or "auto"
    sets = {
        str(role): load_set(summary.inputs[role].source, spec, role=role, slices=summary.slices, patients=patients)
        for role in (Role.TRAIN, Role.VAL)
    }
    errors = {role: cached_errors(ldm, s, config, device, progress, f"{role} scans") for role, s in sets.items()}
    result, by_patient = membership_test(
        -errors["train"].mean(1), sets["train"].patient_ids, -errors["val"].mean(1), sets["val"].patient_ids, config
    )
    sides = {p: "training" for p in sets["train"].patient_ids} | {p: "held-out" for p in sets["val"].patient_ids}
    rows = [(patient, sides[patient], -score) for patient, score in by_patient.items()]
    return result, "", rows, {role: s.content_hash for role, s in sets.items()}


def run_privacy(
    folder: str | Path, config: MembershipConfig | None = None, device: str = "cpu", progress: Progress = silent
) -> PrivacyReport:
    """Run the three tests on a scanned study and write ``privacy.json`` and the per-patient table into it, holding
    the study (a scan or another privacy run started meanwhile, from the app or the command line, is refused)."""
    with open_study(folder).exclusive("privacy"):
        return _run_privacy(Path(folder), config or MembershipConfig(), device, progress)


def _run_privacy(folder: Path, config: MembershipConfig, device: str, progress: Progress) -> PrivacyReport:
    """:func:`run_privacy` inside the study's lock."""
    summary = read_summary(folder)
    start = time.perf_counter()
    vectors = {role: read_embeddings(folder, role)[1] for role in ("train", "val", "synthetic")}
    progress(ProgressEvent("distribution tests", 0, 3, "C_T"))
    notes: list[str] = []
    try:  # a set too small to rank leaves C_T out, said; the other two tests still answer
        ct: CTResult | None = ct_test(vectors["train"], vectors["val"], vectors["synthetic"], seed=config.seed)
    except MemoScopeError as exc:
        ct = None
        notes.append(f"C_T: {str(exc).removeprefix('C_T: ')}")
    progress(ProgressEvent("distribution tests", 1, 3, "authenticity"))
    auth, auth_real = authenticity(vectors["train"], vectors["val"], vectors["synthetic"])
    progress(ProgressEvent("distribution tests", 2, 3, "nearest record"))
    near = nearest_record_share(vectors["train"], vectors["val"], vectors["synthetic"], seed=config.seed)
    progress(ProgressEvent("distribution tests", 3, 3, "done"))
    timings = {"distribution tests": time.perf_counter() - start}
    start = time.perf_counter()
    membership, note, patient_rows, hashes = _membership(folder, summary, config, device, progress)
    timings["membership"] = time.perf_counter() - start
    report = PrivacyReport(
        ct=ct,
        authenticity=auth,
        authenticity_heldout=auth_real,
        nearest_record=near,
        membership=membership,
        membership_note=note,
        membership_config=config,
        scan_id=summary.scan_id,
        checkpoint_hash=str(summary.checkpoint_hash) if summary.checkpoint_hash else None,
        inputs={
            **{f"{role} embeddings": summary.inputs[role].content_hash for role in ("train", "val", "synthetic")},
            **{f"{role} scans (checkpoint preprocessing)": h for role, h in hashes.items()},
        },
        device=device,
        versions=versions(),
        finished_at=now_utc(),
        seed=config.seed,
        notes=tuple(notes),
        timings={k: round(v, 3) for k, v in timings.items()},
    )
    _write_patients(folder, patient_rows)
    atomic_write_json(folder / PRIVACY, report.to_dict())
    return report


def _write_patients(folder: Path, patient_rows: list[tuple[str, str, float]]) -> None:
    """Each patient's mean denoising error under a pseudonym (``privacy_patients.csv``); the key stays beside it."""
    rows, key = [], []
    counters = {"training": 0, "held-out": 0}
    for patient, side, error in patient_rows:
        counters[side] += 1
        name = f"{side}-{counters[side]:04d}"
        rows.append([name, side, f"{error:.6g}"])
        key.append([name, patient])
    write_csv(folder / PRIVACY_PATIENTS, ["pseudonym", "set", "mean_denoising_error"], rows)
    write_csv(folder / PRIVACY_KEY, ["pseudonym", "patient_id"], key)
