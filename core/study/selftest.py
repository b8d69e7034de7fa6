"""What this detector catches on *your* data: plant changed copies of the study's training scans and call them.

The self-test splits the study's validation patients in two (seeded). One part calibrates the threshold
exactly as the scan did (same copy call, rule and percentile; about half the patients, and at least two for
the ``heldout-patient`` rule); the other part plays the part of patients the threshold has never seen.
Copies of random training scans, changed as a generator changes what it copies (:mod:`core.detect.planted`:
noise, blur, intensity, shift, rotation, elastic warp, mixed; at strength levels), are planted among those
unseen patients' real scans, and the same detector, retrieval and verification run on the mixture. A copy
counts as found only when it is flagged and its nearest training scan is its source. ``selftest.json`` in
the study keeps recall per change and level, the unseen-patient false-positive rate, precision, F1 and
AUROC, with intervals, and the scan it belongs to (a rescan makes it stale).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.common.config import Config, check_range
from core.common.devices import Precision, check_precision, resolve_device
from core.common.errors import MemoScopeError
from core.common.progress import Progress, ProgressEvent, silent
from core.common.provenance import atomic_write_json, now_utc, versions
from core.detect.metrics import Fraction, ThresholdRule, calibrate, is_copy, min_null_size, wilson_interval
from core.detect.planted import CHANGES, LEVELS, plant_copies
from core.detect.verify import MatchMethod, VerifyConfig, best_match
from core.io.preprocessing import resize_images
from core.study.results import ScanResults
from core.study.review import load_study_set
from core.study.store import check_writable

logger = logging.getLogger(__name__)
SELFTEST = "selftest.json"
STAGES = ("load", "embed", "score", "write")


@dataclass(frozen=True)
class SelfTestConfig(Config):
    """A self-test of a scanned study: ``per_kind`` copies of each change at each of ``levels``, embedded and
    verified on ``device`` (``auto``: CUDA, then MPS, then CPU)."""

    study: str
    per_kind: int = 10
    levels: tuple[int, ...] = (1, 2)
    seed: int = 0
    device: str = "auto"
    precision: Precision = Precision.FP32

    def validate(self) -> None:
        check_range("per_kind", self.per_kind, 1, 1000)
        if not self.levels or any(level not in LEVELS for level in self.levels):
            raise MemoScopeError(f"levels {list(self.levels)} must be a non-empty subset of {list(LEVELS)}.")


def _rate(count: int, total: int, method: str = "wilson") -> Fraction:
    low, high = wilson_interval(count, total)
    return Fraction(count, total, count / total if total else float("nan"), low, high, method)


@dataclass(frozen=True)
class SelfTest(Config):
    """A self-test's results (``selftest.json``).

    Attributes:
        scan_id: the scan whose detector and settings were tested.
        method, rule, percentile, tau: the copy call and the threshold calibrated on the calibration half.
        calibration_patients, unseen_patients: how many validation patients each half had.
        recall: per change and level (``"blur@1"``), copies found / planted.
        unseen_fpr: the unseen patients' real scans called copies.
        precision, f1, auroc: at level 1 (copies against the unseen patients' scans).
    """

    scan_id: str
    method: MatchMethod
    rule: ThresholdRule
    percentile: float | None
    tau: float
    calibration_patients: int
    unseen_patients: int
    recall: dict[str, Fraction]
    unseen_fpr: Fraction
    precision: float
    f1: float
    auroc: float
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    finished_at: str = ""

    def recall_table(self) -> list[dict[str, Any]]:
        """One row per change, one column per level (for a page or the report)."""
        levels = sorted({int(key.split("@")[1]) for key in self.recall})
        return [
            {"change": kind, **{f"level {lv}": _cell(self.recall.get(f"{kind}@{lv}")) for lv in levels}}
            for kind in CHANGES
        ]


def _cell(fraction: Fraction | None) -> str:
    return "" if fraction is None else f"{fraction.count}/{fraction.total}"


def _split_patients(patients: list[str], seed: int, calibrate: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Validation scans split by patient into calibration and unseen halves (rows of each); the calibration half
    keeps at least ``calibrate`` patients (the rule's need), the unseen half at least one."""
    names = sorted(set(patients))
    if len(names) < calibrate + 1:
        raise MemoScopeError(
            f"the self-test needs validation scans of at least {calibrate + 1} patients ({calibrate} to calibrate "
            f"the threshold rule, one unseen); the study has {len(names)}. Add another patient's scans to the "
            "validation set and rescan."
        )
    order = np.random.default_rng(seed).permutation(len(names))
    unseen = {names[i] for i in order[: min(len(names) // 2, len(names) - calibrate)]}
    held = np.array([p in unseen for p in patients])
    return np.flatnonzero(~held), np.flatnonzero(held)


def run_selftest(config: SelfTestConfig, progress: Progress = silent) -> SelfTest:
    """Run the self-test on a scanned study and write ``selftest.json`` into it.

    One function: planting, embedding and calling share the split of the validation patients into calibration and
    planting halves.
    """
    from sklearn.metrics import roc_auc_score

    from core.detect.detector import embed, load_detector

    scan = ScanResults.open(config.study)
    check_writable(config.study, f"{SELFTEST} into the study")  # before the work, not at its end
    summary = scan.summary
    rule = ThresholdRule(summary.threshold.rule)
    if rule.spec.null is None or summary.threshold.percentile is None:
        rule, percentile = ThresholdRule.PAPER if summary.method == MatchMethod.PAPER else ThresholdRule.HELDOUT, 95.0
    else:
        percentile = summary.threshold.percentile
    progress(ProgressEvent("load", 0, 1, "loading the training and validation scans"))
    train, val = load_study_set(summary, "train", embedding=True), load_study_set(summary, "val", embedding=True)
    calib, unseen = _split_patients(val.patient_ids, config.seed, rule.calibration_patients)
    calib_patients = [val.patient_ids[i] for i in calib]
    needed = min_null_size(percentile, rule)
    null_n = len(calib) if rule.uses_heldout_null else len(train)
    if null_n < needed:
        raise MemoScopeError(
            f"the self-test calibrates on part of the validation patients ({len(calib)} scans); the {rule} rule at "
            f"percentile {percentile:g} needs {needed}. Add validation scans, or rescan with a lower --percentile."
        )
    detector = load_detector(scan.detector_folder)
    device = resolve_device(config.device)
    mixed = check_precision(device, config.precision)  # the forward passes' dtype (``precision`` is a metric here)
    progress(ProgressEvent("load", 1, 1, f"{len(calib)} calibration and {len(unseen)} unseen-patient scans"))
    # copies are planted on the grid the scan verifies on, and seen by the detector as a loaded scan would be
    x_train, x_cal, x_unseen = train.compared, val.compared[calib], val.compared[unseen]
    planted = {
        level: plant_copies(x_train, x_unseen, config.per_kind, seed=config.seed + level, level=level)
        for level in config.levels
    }

    def embedded(images: np.ndarray) -> np.ndarray:
        if summary.verification is not None:
            images = resize_images(images, summary.preprocessing)
        return embed(detector.model, images, device=device, precision=mixed)

    progress(ProgressEvent("embed", 0, 1, "embedding"))
    v_train = embed(detector.model, train.images, device=device, precision=mixed)
    v_cal = embed(detector.model, val.images[calib], device=device, precision=mixed)
    v_planted = {level: embedded(p.images) for level, p in planted.items()}
    progress(ProgressEvent("embed", 1, 1, "embedded"))
    verify_config = summary.verify or VerifyConfig()

    def nearest(
        q_vec: np.ndarray, q_img: np.ndarray, db_vec: np.ndarray, db_img: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        found = best_match(summary.method, q_vec, db_vec, q_img, db_img, verify_config, str(device))
        return found.best, found.index[:, 0]

    progress(ProgressEvent("score", 0, len(planted) + 1, "calibrating on part of the validation patients"))
    cal_to_train, _ = nearest(v_cal, x_cal, v_train, x_train)
    train_to_cal = nearest(v_train, x_train, v_cal, x_cal)[0] if rule.spec.null == "train_to_val" else cal_to_train
    tau = calibrate(rule, train_to_cal, cal_to_train, percentile, val_patients=calib_patients).value
    recall: dict[str, Fraction] = {}
    precision = f1 = auroc = float("nan")
    fpr = _rate(0, 0)
    for i, (level, p) in enumerate(planted.items()):
        progress(ProgressEvent("score", i + 1, len(planted) + 1, f"scoring level {level}"))
        best, index = nearest(v_planted[level], p.images, v_train, x_train)
        flagged = is_copy(best, tau)
        found = flagged & (index == p.source_index)
        kinds = np.array(p.kind)
        for kind in CHANGES:
            recall[f"{kind}@{level}"] = _rate(int(found[kinds == kind].sum()), int((kinds == kind).sum()))
        if level == min(planted):
            fpr = _rate(int((flagged & ~p.is_copy).sum()), int((~p.is_copy).sum()), "wilson; unseen patients")
            precision = float(found.sum() / max(int(flagged.sum()), 1))
            hit = float(found.sum() / int(p.is_copy.sum()))
            f1 = 2 * precision * hit / max(precision + hit, 1e-12)
            auroc = float(roc_auc_score(p.is_copy, best))
    result = SelfTest(
        scan_id=summary.scan_id,
        method=summary.method,
        rule=rule,
        percentile=percentile,
        tau=tau,
        calibration_patients=len({val.patient_ids[i] for i in calib}),
        unseen_patients=len({val.patient_ids[i] for i in unseen}),
        recall=recall,
        unseen_fpr=fpr,
        precision=precision,
        f1=f1,
        auroc=auroc,
        config=config.to_dict(),
        versions=versions(),
        finished_at=now_utc(),
    )
    progress(ProgressEvent("write", 0, 1, "writing selftest.json"))
    atomic_write_json(Path(config.study) / SELFTEST, result.to_dict())
    progress(
        ProgressEvent(
            "write",
            1,
            1,
            f"unseen-patient scans flagged {fpr.count}/{fpr.total}; F1 {f1:.2f}; AUROC {auroc:.3f}",
        )
    )
    return result


def read_selftest(study: str | Path, scan_id: str) -> SelfTest | None:
    """The study's self-test of scan ``scan_id``, or ``None`` (none run, or run on an earlier scan)."""
    path = Path(study) / SELFTEST
    if not path.is_file():
        return None
    try:
        result = SelfTest.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))
    except json.JSONDecodeError as exc:
        raise MemoScopeError(f"{path}: not valid JSON ({exc}); run the self-test again.") from exc
    return result if result.scan_id == scan_id else None
