"""Study database: runs are recorded as done or failed, with their config and summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.study.store import open_study


def test_runs_are_recorded(tmp_path: Path) -> None:
    study = open_study(tmp_path / "s")
    with study.run("scan", {"k": 5}) as result:
        result["threshold"] = 0.9
    with pytest.raises(ValueError), study.run("scan", {"k": 1}):
        raise ValueError("bad input")
    runs = study.runs()
    assert [r["status"] for r in runs] == ["done", "failed"]
    assert '"threshold": 0.9' in runs[0]["summary_json"] and "bad input" in runs[1]["error"]
    study.set_inputs({"train": "t"})
    assert study.inputs()["train"] == "t"


def test_create_study_checks_inputs_and_names_the_bad_path(tmp_path: Path, image_folder: Path) -> None:
    from core.common.errors import MemoScopeError
    from core.study.store import create_study

    with pytest.raises(MemoScopeError, match="nowhere/train.csv"):
        create_study(tmp_path, "s1", {"train": "nowhere/train.csv", "val": str(image_folder)})
    with pytest.raises(MemoScopeError, match="Study name"):
        create_study(tmp_path, "../escape", {"train": str(image_folder), "val": str(image_folder)})
    with pytest.raises(MemoScopeError, match="no ldm.json"):
        create_study(
            tmp_path, "s1", {"train": str(image_folder), "val": str(image_folder), "checkpoint": str(tmp_path)}
        )
    assert not (tmp_path / "s1").exists()
    study = create_study(
        tmp_path, "s1", {"train": str(image_folder), "val": str(image_folder), "synthetic": "", "dims": 2}
    )
    assert study.inputs()["train"] == str(image_folder) and study.inputs()["synthetic"] is None
    with pytest.raises(MemoScopeError, match="already exists"):
        create_study(tmp_path, "s1", {"train": str(image_folder), "val": str(image_folder)})
