"""The app opens the committed demo study (AppTest, no browser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")


def test_without_studies_the_app_says_how_to_make_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "make demo" in at.info[0].value


@pytest.mark.skipif(not (REPO / "studies" / "demo-2d" / "summary.json").is_file(), reason="demo not built (make demo)")
def test_opens_the_demo_study_with_its_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.sidebar.selectbox[0].value.name == "demo-2d"
    summary = json.loads((REPO / "studies" / "demo-2d" / "summary.json").read_text())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Threshold"] == f"{summary['threshold']:.3f}"
    assert metrics["Synthetic copies"] == f"{summary['copy_fraction']['value']:.1%}"
    at.sidebar.selectbox[0].select_index(0).run()
    assert not at.exception
