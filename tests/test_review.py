"""Reading a study back for review: live counts equal the scan's, work-list order and grouping, units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.common.errors import MemoScopeError
from core.io.preprocessing import PreprocessSpec
from core.study.results import Calibration, Pair, ScanResults, read_summary
from core.study.review import (
    blinded_rows,
    display_units,
    group_by_training,
    live_metrics,
    threshold_curve,
    worklist,
)

REPO = Path(__file__).resolve().parents[1]


def _cal() -> Calibration:
    return Calibration(
        np.sort(np.array([0.1, 0.2, 0.3, 0.9])),
        np.sort(np.array([0.2, 0.4, 0.6])),
        np.sort(np.array([0.5, 0.95, 0.99, 0.2])),
        np.sort(np.array([0.3, 0.97, 0.5])),
    )


def test_live_metrics_count_strictly_above() -> None:
    m = live_metrics(_cal(), 0.5)
    assert (m.memorized, m.n_train, m.copies, m.n_synthetic) == (2, 4, 1, 3)
    assert m.fpr_copy == pytest.approx(1 / 3) and m.fpr_memorized == pytest.approx(1 / 4)
    low, high = m.copy_interval
    assert low < m.copy_fraction < high


def test_threshold_curve_is_monotone() -> None:
    curve = threshold_curve(_cal(), 50)
    for key in ("copy_fraction", "memorized_fraction", "expected_fpr_copy"):
        assert np.all(np.diff(curve[key]) <= 0)


def test_threshold_rules_from_calibration() -> None:
    assert _cal().threshold("fixed", fixed=0.42).value == 0.42
    with pytest.raises(MemoScopeError, match="validation set has 3"):
        _cal().threshold("paper", 95)


def test_worklist_sorts_flags_and_groups() -> None:
    pairs = [
        Pair("s1", 1, "t1", "p1", 0.9, 0.01, 0.8, None),
        Pair("s1", 2, "t2", "p1", 0.5, 0.3, 0.1, None),
        Pair("s2", 1, "t1", "p1", 0.95, 0.01, 0.9, None),
        Pair("s3", 1, "t3", "p2", 0.4, 0.5, 0.0, None),
    ]
    rows = worklist(pairs, 0.8)
    assert [r.pair.synthetic_id for r in rows] == ["s2", "s1", "s3"]
    assert [r.copy for r in rows] == [True, True, False] and rows[0].group_size == 2
    assert rows[0].pair is pairs[2]  # the row carries its pair: the page never searches the list for it
    assert [r.pair.synthetic_id for r in worklist(pairs, 0.8, only_copies=True)] == ["s2", "s1"]
    grouped = group_by_training(rows)
    assert [(g.pair.train_id, g.samples) for g in grouped] == [("t1", 2), ("t3", 1)]
    # the table: "your verdict" first (on screen at any width), the same columns in every row of a list
    table = [g.columns("copy" if i == 0 else "") for i, g in enumerate(grouped)]
    assert list(table[0])[0] == "your verdict" and table[0]["your verdict"] == "copy"
    assert list(table[0]) == list(table[1]) and table[0]["samples"] == 2 and "similarity" in table[0]
    blinded = blinded_rows(pairs, [("s3", "t3"), ("s2", "t1")])
    assert [b.columns() for b in blinded] == [  # no similarity and no call in the blinded check
        {"your verdict": "", "item": 1, "synthetic_id": "s3", "train_id": "t3", "patient_id": "p2"},
        {"your verdict": "", "item": 2, "synthetic_id": "s2", "train_id": "t1", "patient_id": "p1"},
    ]


def test_ct_images_go_back_to_hounsfield_units() -> None:
    spec = PreprocessSpec((8, 8), intensity="ct", ct_window=(-1000.0, 1000.0))
    hu, unit = display_units(np.array([-1.0, 0.0, 1.0]), spec)
    assert unit == "HU" and hu.tolist() == [-1000.0, 0.0, 1000.0]
    assert display_units(np.zeros(2), PreprocessSpec((8, 8)))[1] == "a.u."


@pytest.mark.skipif(not (REPO / "studies" / "demo-2d" / "neighbors.npz").is_file(), reason="demo not built")
@pytest.mark.parametrize("name", ["demo-2d", "demo-3d"])
def test_live_counts_at_the_scan_threshold_equal_the_scan(name: str) -> None:
    study = REPO / "studies" / name
    summary = read_summary(study)
    cal = ScanResults.open(study).calibration()
    m = live_metrics(cal, summary.tau)
    assert (m.memorized, m.copies) == (summary.memorized.count, summary.copies.count)
    assert m.fpr_copy == pytest.approx(summary.expected_fpr_copy)
    assert cal.threshold(summary.threshold.rule, summary.threshold.percentile).value == pytest.approx(summary.tau)


def test_the_worklist_says_which_samples_resemble_a_training_patient_without_changing_the_copy_call() -> None:
    from core.study.results import PatientRow

    pairs = [
        Pair("s1", 1, "t1", "p1", 0.95, 0.01, 0.9, None),
        Pair("s2", 1, "t2", "p2", 0.50, 0.40, 0.2, None),
    ]
    patients = {"s1": PatientRow("s1", "p1", 0.9, False), "s2": PatientRow("s2", "p2", 0.8, True)}
    rows = {r.pair.synthetic_id: r for r in worklist(pairs, 0.8, patients=patients)}
    assert rows["s2"].resembles_patient and not rows["s2"].copy
    assert rows["s1"].copy and not rows["s1"].resembles_patient
    assert "resembles_patient" not in worklist(pairs, 0.8)[0].columns()


@pytest.mark.skipif(not (REPO / "studies" / "demo-2d" / "summary.json").is_file(), reason="demo not built")
def test_intervals_take_the_training_patients_as_the_unit() -> None:
    from core.detect.metrics import fraction_with_ci, is_copy
    from core.study.review import by_patient, metrics_at

    scan = ScanResults.open(REPO / "studies" / "demo-2d")
    rows = scan.train_rows()
    tau = scan.summary.tau
    found = by_patient(scan, tau)
    patients = {r.patient_id for r in rows}
    hit = {r.patient_id for r in rows if r.similarity > tau}
    assert (found.patients_memorized.count, found.patients_memorized.total) == (len(hit), len(patients))
    assert f"of {len(patients)} training patients" in found.describe()
    # the scan's own interval and one recomputed at another threshold both resample the 3 patients: 147 slices
    # treated as independent would give a far narrower interval
    for at, memorized in (
        (tau, scan.summary.memorized),
        (tau - 0.2, metrics_at(scan, tau - 0.2, "fixed", None).memorized),
    ):
        assert f"{len(patients)} patients" in memorized.method
        assert memorized.total == len(rows)
        naive = fraction_with_ci(is_copy([r.similarity for r in rows], at))
        if 0 < memorized.count < memorized.total:
            assert memorized.high - memorized.low > 3 * (naive.high - naive.low)
    # each 2D sample is its own draw: the copy interval is the plain one
    assert "patients" not in scan.summary.copies.method and "volumes" not in scan.summary.copies.method


@pytest.mark.skipif(not (REPO / "studies" / "demo-3d" / "summary.json").is_file(), reason="demo not built")
def test_the_interval_note_says_slices_for_slices_and_patients_for_volumes() -> None:
    from core.study.review import interval_note, metrics_at

    for name, says, never in (
        ("demo-2d", "resamples training patients", "one scan"),
        ("demo-3d", "Each training patient has one scan", "slices"),
    ):
        scan = ScanResults.open(REPO / "studies" / name)
        note = interval_note(scan, metrics_at(scan, scan.summary.tau, scan.summary.threshold.rule, None))
        assert says in note and never not in note and scan.summary.memorized.method in note
