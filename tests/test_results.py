"""The study's typed results: one copy rule, the nearest pair, schema versions and the upgrade of older studies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.common.errors import MemoScopeError
from core.detect.metrics import is_copy
from core.study.results import SCHEMA_VERSION, ScanResults, copies, nearest_pairs, read_summary, upgrade_study

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "studies" / "demo-2d"


def test_the_copy_rule_is_strictly_above_tau() -> None:
    assert is_copy(np.array([0.5, 0.9, 0.91]), 0.9).tolist() == [False, False, True]


@pytest.mark.skipif(not DEMO.is_dir(), reason="demo not built")
def test_demo_results_read_back_typed_and_consistent() -> None:
    scan = ScanResults.open(DEMO)
    summary = scan.summary
    assert summary.schema_version == SCHEMA_VERSION
    pairs = scan.pairs()
    nearest = nearest_pairs(pairs)
    assert len(nearest) == summary.inputs["synthetic"].n == summary.copies.total
    assert len(copies(pairs, summary.tau)) == summary.copies.count
    cal = scan.calibration()
    assert int(is_copy(cal.synthetic_to_train, summary.tau).sum()) == summary.copies.count


def test_a_study_scanned_before_patients_were_recorded_cannot_use_the_patient_rule_and_says_why() -> None:
    from core.study.results import Calibration

    null = np.linspace(0.1, 0.6, 40)
    old = Calibration(np.zeros(3), null, np.zeros(3), np.zeros(3))  # neighbors.npz without val_patient_group
    with pytest.raises(MemoScopeError, match="Rescan the study"):
        old.threshold("heldout-patient")
    assert old.threshold("heldout").value == pytest.approx(float(np.percentile(null, 95)))
    new = Calibration(np.zeros(3), null, np.zeros(3), np.zeros(3), val_groups=np.arange(40) % 4)
    assert new.threshold("heldout-patient").value > null.max()


def _v1(summary: dict) -> dict:
    """The same scan as MemoScope 0.1 wrote it (flat keys, ``threshold`` a number)."""
    return {
        **{
            k: v
            for k, v in summary.items()
            if k
            not in ("threshold", "memorized", "copies", "expected_fpr_copy", "expected_fpr_memorized", "schema_version")
        },
        "threshold": summary["threshold"]["value"],
        "rule": summary["threshold"]["rule"],
        "percentile": summary["threshold"]["percentile"],
        "memorized_training_fraction": summary["memorized"],
        "copy_fraction": summary["copies"],
        "expected_false_positive_rate": {
            "copy": summary["expected_fpr_copy"],
            "memorized": summary["expected_fpr_memorized"],
        },
        "counts": {"train": summary["inputs"]["train"]["n"], "val": summary["inputs"]["val"]["n"]},
    }


@pytest.mark.skipif(not DEMO.is_dir(), reason="demo not built")
def test_an_older_study_is_refused_with_the_upgrade_command_and_upgrades_exactly(tmp_path: Path) -> None:
    study = tmp_path / "old"
    shutil.copytree(DEMO, study)
    current = json.loads((study / "summary.json").read_text())
    (study / "summary.json").write_text(json.dumps(_v1(current)))
    with pytest.raises(MemoScopeError, match="upgrade-study"):
        read_summary(study)
    assert upgrade_study(study) is True and upgrade_study(study) is False
    upgraded, original = read_summary(study), read_summary(DEMO)
    # everything a schema-1 summary held comes back exactly (it had no copy-call method, notes or scan id)
    kept = ("inputs", "preprocessing", "detector", "versions", "finished_at", "slices", "k", "seed", "checkpoint_hash")
    kept += ("generations", "memorized", "copies", "expected_fpr_copy", "expected_fpr_memorized")
    assert {f: getattr(upgraded, f) for f in kept} == {f: getattr(original, f) for f in kept}
    t, o = upgraded.threshold, original.threshold
    assert (t.rule, t.percentile, t.value) == (o.rule, o.percentile, o.value)


def test_a_newer_study_asks_for_a_newer_memoscope(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(MemoScopeError, match="newer MemoScope"):
        read_summary(tmp_path)


@pytest.mark.skipif(not DEMO.is_dir(), reason="demo not built")
def test_a_half_committed_rescan_is_refused(tmp_path: Path) -> None:
    """A rescan killed after pairs.csv was replaced leaves new pairs beside the old summary: refused everywhere."""
    from core.study.release import release
    from core.study.report import write_report

    study = tmp_path / "study"
    shutil.copytree(DEMO, study)
    lines = (study / "pairs.csv").read_text().splitlines()
    (study / "pairs.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")  # another scan's rows
    for attempt in (
        lambda: ScanResults.open(study),
        lambda: write_report(study, tmp_path / "r.html"),
        lambda: release(study, tmp_path / "release"),
    ):
        with pytest.raises(MemoScopeError, match="does not belong to scan"):
            attempt()
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "release").exists()


def test_skipped_files_round_trip_as_typed_records() -> None:
    """A summary's skipped files are SkippedFile records (they were dicts read by key), written as the same JSON."""
    from core.io.load import SkippedFile
    from core.study.results import InputSet

    given = InputSet("data/x", 3, 2, "abc", (SkippedFile("data/x/bad.png", "cannot identify image file"),))
    data = json.loads(json.dumps(given.to_dict()))
    assert data["skipped"] == [{"path": "data/x/bad.png", "reason": "cannot identify image file"}]
    back = InputSet.from_dict(data)
    assert back == given and back.skipped[0].path == "data/x/bad.png"
