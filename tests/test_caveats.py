"""Caveats are computed from the study: each appears exactly when its number says so."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.detect.metrics import Fraction, Threshold, ThresholdRule
from core.study.caveats import caveats
from core.study.results import Pair, ScanResults
from core.study.review import ANATOMY_FLOOR, metrics_at, sample_quality

DEMO = Path(__file__).resolve().parents[1] / "studies" / "demo-2d"


@pytest.mark.skipif(not DEMO.is_dir(), reason="demo not built")
def test_the_demo_gets_the_caveats_its_numbers_call_for() -> None:
    scan = ScanResults.open(DEMO)
    summary, pairs = scan.summary, scan.pairs()
    at = metrics_at(scan, summary.tau, summary.threshold.rule, summary.threshold.percentile)
    keys = {c.key for c in caveats(summary, at, pairs)}
    # 3 validation patients, the verified call; 59 null values allow p < 0.05
    assert keys - {"high_fpr", "threshold_transfer"} == {"few_patients"}
    assert ("high_fpr" in keys) == (at.expected_fpr_copy > 0.10)
    unseen = summary.fpr_unseen
    assert ("threshold_transfer" in keys) == (unseen is not None and unseen.value > 0.10)

    # a verified scan of many patients, with a small null, a poor transfer and flagged pairs the pixels do not confirm
    val = dataclasses.replace(summary.inputs["val"], n_patients=12)
    verified = summary.replace(
        method="verified",
        inputs={**summary.inputs, "val": val},
        fpr_unseen=Fraction(6, 30, 0.2, 0.1, 0.37, "leave-one-patient-out over 12 patients"),
    )
    small = dataclasses.replace(at, threshold=Threshold(ThresholdRule.HELDOUT, 95.0, summary.tau, 15))
    unlike = [dataclasses.replace(p, pixel_corr=0.1) if p.nearest else p for p in pairs]
    found = {c.key: c.text for c in caveats(verified, small, unlike)}
    assert set(found) >= {"threshold_transfer", "p_values", "pixel_disagrees", "not_anatomy"}
    assert "median pixel correlation with the nearest training scan is 0.10" in found["not_anatomy"]
    assert "few_patients" not in found and "paper_method" not in found
    assert "smallest possible p-value is 0.06" in found["p_values"]
    assert "20%" in found["threshold_transfer"]


@pytest.mark.skipif(not DEMO.is_dir(), reason="demo not built")
def test_no_caveat_without_its_cause() -> None:
    scan = ScanResults.open(DEMO)
    summary = scan.summary
    at = metrics_at(scan, summary.tau, summary.threshold.rule, summary.threshold.percentile)
    val = dataclasses.replace(summary.inputs["val"], n_patients=40)
    clean = summary.replace(method="verified", inputs={**summary.inputs, "val": val}, fpr_unseen=None)
    quiet = dataclasses.replace(at, expected_fpr_copy=0.01)
    pairs: list[Pair] = [p for p in scan.pairs() if p.pixel_corr > 0.9]
    assert caveats(clean, quiet, pairs) == []


@pytest.mark.skipif(not DEMO.is_dir(), reason="demo not built")
def test_the_report_carries_the_same_caveats(tmp_path: Path) -> None:
    import shutil

    from core.study.report import build_report

    study = tmp_path / "study"
    shutil.copytree(DEMO, study)
    scan = ScanResults.open(study)
    at = metrics_at(scan, scan.summary.tau, scan.summary.threshold.rule, scan.summary.threshold.percentile)
    html = build_report(study, top=1)
    assert "Before relying on these numbers" in html
    for caveat in caveats(scan.summary, at, scan.pairs()):
        assert caveat.text.split(":")[0].replace("'", "&#x27;") in html


@pytest.mark.skipif(not (DEMO.parent / "demo-3d").is_dir(), reason="demo not built")
@pytest.mark.parametrize("name", ["demo-2d-noaug-early", "demo-2d", "demo-3d-early", "demo-3d"])
def test_samples_that_are_not_anatomy_come_with_the_warning_and_only_they(name: str) -> None:
    """A stage whose samples do not resemble any training scan is called too poor to judge; one whose samples do
    is not (issue 14: the first 3D demo's noise blobs were reported as copies)."""
    scan = ScanResults.open(DEMO.parent / name)
    summary = scan.summary
    at = metrics_at(scan, summary.tau, summary.threshold.rule, summary.threshold.percentile)
    quality = sample_quality(scan.pairs())
    assert quality is not None
    warned = "not_anatomy" in {c.key for c in caveats(summary, at, scan.pairs())}
    assert warned == (quality < ANATOMY_FLOOR), (name, quality)


@pytest.mark.skipif(not (DEMO.parent / "demo-3d-early").is_dir(), reason="demo not built")
def test_samples_not_called_copies_yet_nearer_than_any_new_scan_are_named(tmp_path: Path) -> None:
    """The early 3D stage has no copy above its cautious threshold, but most of its samples are nearer to a training
    head than any validation head is: a board must not read 'no copies' as 'new anatomy' (issue 14)."""
    import shutil

    from core.study.report import build_report
    from core.study.review import nearer_than_heldout

    scan = ScanResults.open(DEMO.parent / "demo-3d-early")
    summary, pairs = scan.summary, scan.pairs()
    at = metrics_at(scan, summary.tau, summary.threshold.rule, summary.threshold.percentile)
    beyond = nearer_than_heldout(scan)
    assert at.copies.count == 0 and beyond.clearly_above_expected
    found = {c.key: c.text for c in caveats(summary, at, pairs, beyond)}
    nearest = [p for p in pairs if p.nearest]
    between = sum(beyond.heldout_max < p.similarity <= summary.tau for p in nearest)
    assert between > 0.1 * len(nearest)
    assert f"{between} of {len(nearest)} samples are not called copies" in found["not_new"]
    assert "not_new" not in {c.key for c in caveats(summary, at, pairs)}  # only with the held-out comparison
    # a stage whose samples are as far from training as the held-out scans are gets no such caveat
    far = dataclasses.replace(beyond, share=Fraction(0, 16, 0.0, 0.0, 0.19, "wilson"))
    assert "not_new" not in {c.key for c in caveats(summary, at, pairs, far)}
    study = tmp_path / "study"
    shutil.copytree(scan.folder, study)
    html = build_report(study, top=1)
    assert "are not called copies, yet they are nearer to a training scan" in html
    assert "No sample is called a copy, but many are nearer" in html
