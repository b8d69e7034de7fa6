"""Study database: runs are recorded as done or failed, with their config and summary."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
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
    study.set_inputs(train="t")
    assert study.inputs().train == "t"


def test_create_study_checks_inputs_and_names_the_bad_path(tmp_path: Path, image_folder: Path) -> None:
    from core.common.errors import MemoScopeError
    from core.study.store import create_study

    val = tmp_path / "val"  # other patients, other images (the same folder twice would be a leak)
    (val / "p9").mkdir(parents=True)
    np.save(val / "p9" / "v.npy", np.random.default_rng(9).normal(size=(40, 40)))
    with pytest.raises(MemoScopeError, match="nowhere/train.csv"):
        create_study(tmp_path, "s1", {"train": "nowhere/train.csv", "val": str(val)})
    with pytest.raises(MemoScopeError, match="Study name"):
        create_study(tmp_path, "../escape", {"train": str(image_folder), "val": str(val)})
    with pytest.raises(MemoScopeError, match="no ldm.json"):
        create_study(tmp_path, "s1", {"train": str(image_folder), "val": str(val), "checkpoint": str(tmp_path)})
    assert not (tmp_path / "s1").exists()
    study = create_study(tmp_path, "s1", {"train": str(image_folder), "val": str(val), "synthetic": "", "dims": 2})
    assert study.inputs().train == str(image_folder) and study.inputs().synthetic is None
    with pytest.raises(MemoScopeError, match="already exists"):
        create_study(tmp_path, "s1", {"train": str(image_folder), "val": str(val)})


def test_creating_a_study_catches_leaks_between_training_and_validation(tmp_path: Path) -> None:
    """Shared patients (any case) and byte-identical files are refused when the study is created, not mid-scan."""
    from core.common.errors import MemoScopeError
    from core.study.store import create_study

    rng = np.random.default_rng(0)
    for folder, name in (("train/P1", "a.npy"), ("train/P2", "b.npy"), ("val/V1", "c.npy")):
        (tmp_path / folder).mkdir(parents=True)
        np.save(tmp_path / folder / name, rng.normal(size=(8, 8)))
    inputs = {"train": str(tmp_path / "train"), "val": str(tmp_path / "val")}
    shutil.copy(tmp_path / "train/P1/a.npy", tmp_path / "val/V1/copy.npy")
    with pytest.raises(MemoScopeError, match="byte-identical to training file"):
        create_study(tmp_path / "studies", "leak", inputs)
    (tmp_path / "val/V1/copy.npy").unlink()
    (tmp_path / "val/V1").rename(tmp_path / "val/p1")
    with pytest.raises(MemoScopeError, match=r"appear in both .*without case"):
        create_study(tmp_path / "studies", "leak", inputs)
    assert not (tmp_path / "studies" / "leak").exists()


def test_the_new_study_form_names_patients_by_its_rule_and_checks_leaks_with_it(tmp_path: Path) -> None:
    """Patients from a pattern on flat file names: a patient on both sides is caught only because the pattern
    names it; a pattern that misses a file is refused by name; the rule goes to the study for its scans."""
    from core.common.errors import MemoScopeError
    from core.study.store import create_study, patient_warnings

    rng = np.random.default_rng(1)
    for role, names in (("train", ("sub-01_a", "sub-01_b", "sub-02_a")), ("val", ("sub-03_a", "sub-01_c"))):
        (tmp_path / role).mkdir()
        for name in names:
            np.save(tmp_path / role / f"{name}.npy", rng.normal(size=(8, 8)))
    inputs = {"train": str(tmp_path / "train"), "val": str(tmp_path / "val")}
    guessed = create_study(tmp_path / "studies", "by-file", inputs)  # each file its own patient: no overlap seen
    (warning,) = [w for w in patient_warnings(guessed.inputs()) if w.startswith("train")]
    assert "each file its own patient" in warning and "pattern:REGEX" in warning and "Patients from" in warning
    rule = r"pattern:^(?P<patient>sub-\d+)_"
    with pytest.raises(MemoScopeError, match=r"appear in both .*sub-01"):
        create_study(tmp_path / "studies", "leak", {**inputs, "patients": rule})
    with pytest.raises(MemoScopeError, match=r"does not match 'sub-03_a\.npy'"):
        create_study(tmp_path / "studies", "miss", {**inputs, "patients": r"pattern:^(?P<patient>sub-0[12])_"})
    (tmp_path / "val" / "sub-01_c.npy").unlink()
    study = create_study(tmp_path / "studies", "ok", {**inputs, "patients": rule})
    assert study.inputs().patients == rule and patient_warnings(study.inputs()) == []
    # the app says so before any scan: on the Overview of a study not scanned yet
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.session_state["study"] = str(guessed.path)
    at.run()
    assert not at.exception and any("each file its own patient" in w.value for w in at.warning)
    table = next(d.value for d in at.dataframe if "patients from" in d.value.columns)  # before a scan: as listed
    train = table[table["set"] == "train"].iloc[0]
    assert train["images"] == "3 files" and train["patients"] == 3
    assert train["patients from"] == "each file its own (no patient folders)"
    assert not (tmp_path / "studies" / "leak").exists() and not (tmp_path / "studies" / "miss").exists()


def test_a_killed_run_is_marked_interrupted_when_the_study_is_next_used(tmp_path: Path) -> None:
    import sqlite3

    study = open_study(tmp_path / "s")
    with sqlite3.connect(study.db_path) as db:  # what a SIGKILLed scan leaves: a running row of a dead process
        db.execute(
            "INSERT INTO runs (kind, status, started_at, config_json, pid) VALUES ('scan', 'running', 'x', '{}', ?)",
            (2**22 + 12345,),
        )
    assert study.mark_interrupted() == 1
    (run,) = study.runs()
    assert run["status"] == "failed" and run["error"].startswith("interrupted")


def test_a_committed_demo_study_is_used_through_a_per_user_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reviewing the demo never changes the repository: the app works on a copy in MEMOSCOPE_HOME."""
    from core.study.store import DEMO_MARKER, working_copy

    demo = tmp_path / "repo" / "studies" / "demo"
    demo.mkdir(parents=True)
    (demo / DEMO_MARKER).write_text("demo")
    (demo / "summary.json").write_text('{"scan": 1}')
    (demo / "pseudonyms.csv").write_text("never copied")
    monkeypatch.setenv("MEMOSCOPE_HOME", str(tmp_path / "home"))
    copy = working_copy(demo)
    assert copy == tmp_path / "home" / "studies" / "demo" and (copy / "summary.json").is_file()
    assert not (copy / DEMO_MARKER).exists() and not (copy / "pseudonyms.csv").exists()
    (copy / "verdicts-entered-here").write_text("a reviewer's work")
    assert working_copy(demo) == copy and (copy / "verdicts-entered-here").is_file()  # reused, not recopied
    (demo / "summary.json").write_text('{"scan": 2}')  # the demo was rebuilt
    fresh = working_copy(demo)
    kept = [p for p in (tmp_path / "home" / "studies").iterdir() if p.name.startswith("demo.before-")]
    assert (fresh / "summary.json").read_text() == '{"scan": 2}' and len(kept) == 1
    assert (kept[0] / "verdicts-entered-here").is_file()  # nothing a reviewer entered is lost
    plain = tmp_path / "mine"
    plain.mkdir()
    assert working_copy(plain) == plain


def test_a_session_that_loses_the_race_to_copy_the_demo_uses_the_winners_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sessions open the demo at once: the one whose copy lands second must not fail."""
    from core.study import store

    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / store.DEMO_MARKER).write_text("demo")
    (demo / "summary.json").write_text('{"scan": 1}')
    monkeypatch.setenv("MEMOSCOPE_HOME", str(tmp_path / "home"))
    real_copytree = shutil.copytree

    def copy_while_another_session_finishes_first(src: Path, dst: Path, **kwargs: object) -> Path:
        winner = tmp_path / "home" / "studies" / "demo"
        if not winner.exists():
            real_copytree(src, winner, **kwargs)  # type: ignore[arg-type]
            (winner / "verdict-by-the-winner").write_text("kept")
        return real_copytree(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store.shutil, "copytree", copy_while_another_session_finishes_first)
    copy = store.working_copy(demo)
    assert (copy / "verdict-by-the-winner").is_file()
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
