"""Study database: runs are recorded as done or failed, with their config and summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.study import open_study


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
