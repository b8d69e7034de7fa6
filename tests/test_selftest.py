"""The self-test on a copy of the committed 2D demo: planted copies are found, unseen patients are counted, the
result belongs to its scan, and a study with one validation patient is refused with what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.common.errors import MemoScopeError
from core.study.results import read_summary
from core.study.selftest import SelfTestConfig, _split_patients, read_selftest, run_selftest

DEMO = Path(__file__).resolve().parents[1] / "studies" / "demo-2d"


@pytest.mark.slow
@pytest.mark.skipif(not DEMO.is_dir(), reason="demo not built")
def test_selftest_finds_exact_copies_and_belongs_to_its_scan(tmp_path: Path) -> None:
    study = tmp_path / "study"
    shutil.copytree(DEMO, study)
    scan_id = read_summary(study).scan_id
    result = run_selftest(SelfTestConfig(str(study), per_kind=4, levels=(1, 3)))
    assert result.scan_id == scan_id and result.method == read_summary(study).method
    assert (result.recall["exact@1"].count, result.recall["exact@1"].total) == (4, 4)  # unchanged copies: all
    # level 3 (6 px shifts, sigma-2 blur) is beyond what level 1 finds (deterministic: seeded per level)
    found = {level: sum(result.recall[f"{k}@{level}"].count for k in ("blur", "shift", "mixed")) for level in (1, 3)}
    assert found[3] <= found[1]
    assert result.unseen_fpr.total > 0 and 0 <= result.unseen_fpr.count <= result.unseen_fpr.total
    assert 0.5 < result.auroc <= 1.0 and result.calibration_patients + result.unseen_patients == 3
    assert read_selftest(study, scan_id) == result
    assert read_selftest(study, "a-later-scan") is None  # a rescan makes the self-test stale
    assert [row["change"] for row in result.recall_table()][:2] == ["exact", "noise"]


def test_one_validation_patient_is_refused_with_what_to_do() -> None:
    with pytest.raises(MemoScopeError, match="at least 2 patients"):
        _split_patients(["p1", "p1", "p1"], seed=0)
    calib, unseen = _split_patients(["a", "b", "b", "c"], seed=0)
    assert sorted([*calib, *unseen]) == [0, 1, 2, 3] and len(calib) and len(unseen)
    # the patient bound calibrates on two patients at least: three patients give two and one
    calib, unseen = _split_patients(["a", "b", "c"], seed=0, calibrate=2)
    assert (len(calib), len(unseen)) == (2, 1)
    with pytest.raises(MemoScopeError, match="at least 3 patients"):
        _split_patients(["a", "b"], seed=0, calibrate=2)


def test_bad_levels_are_refused_by_name() -> None:
    with pytest.raises(MemoScopeError, match="levels"):
        SelfTestConfig("s", levels=(4,))
