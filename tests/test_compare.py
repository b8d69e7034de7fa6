"""Compare: the committed demo studies side by side, read from their own files, matching each study's summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.common.errors import MemoScopeError
from core.study.compare import compare_studies, fractions_by_epochs
from core.study.results import read_summary

ROOT = Path(__file__).resolve().parents[1]
DEMOS = sorted(p for p in (ROOT / "studies").iterdir() if p.name.startswith("demo-2d-"))


@pytest.mark.skipif(not DEMOS, reason="the committed demo studies are needed")
def test_rows_carry_each_studys_own_numbers_and_training_length() -> None:
    rows = compare_studies(DEMOS)
    assert {r.study for r in rows} == {p.name for p in DEMOS}
    for row in rows:
        summary = read_summary(ROOT / "studies" / row.study)
        assert row.copies.count == summary.copies.count and row.memorized.count == summary.memorized.count
        assert row.tau == pytest.approx(summary.tau)
        assert row.unet_epochs is not None and row.augmentation == ("-aug-" in row.study)
    epochs = [r.unet_epochs for r in rows if r.augmentation]
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)  # ordered by training length
    figure = fractions_by_epochs(rows)
    assert len(figure.data) == 4  # copies and memorized, with and without augmentation
    table = rows[0].table_row()
    assert table["memorized training"].count("%") == 3  # value and both ends of its interval
    for row in rows:  # 59 validation slices: samples as new as new patients' scans would lie above all 59 in 1 of 60
        assert row.beyond_heldout is not None and row.beyond_heldout.expected == pytest.approx(1 / 60)
        assert row.table_row()["nearer than any held-out scan"].endswith("(new: ~2%)")


@pytest.mark.skipif(not DEMOS, reason="the committed demo studies are needed")
def test_rows_carry_the_privacy_answers_of_their_own_scan_only(tmp_path: Path) -> None:
    """Each demo study's privacy.json belongs to its scan, so its row shows it; a privacy.json of another scan (a
    rescan since) is not shown as this scan's."""
    import shutil

    from core.study.privacy import read_privacy

    rows = {r.study: r for r in compare_studies(DEMOS)}
    for name, row in rows.items():
        report = read_privacy(ROOT / "studies" / name)
        assert report is not None and row.privacy == report
        assert report.membership is not None and report.ct is not None
        cells = row.privacy_columns()
        assert cells["membership AUROC"].startswith(f"{report.membership.auroc:.2f} (no interval")  # 3 + 3 subjects
        assert cells["C_T"] == f"{report.ct.value:.1f}"
    early, over = rows["demo-2d-aug-early"].privacy, rows["demo-2d-aug-overtrained"].privacy
    assert early is not None and over is not None and early.ct is not None and over.ct is not None
    assert early.ct.value > -3 > over.ct.value  # the samples hug training only after long training
    stale = tmp_path / "demo-2d"
    shutil.copytree(ROOT / "studies" / "demo-2d", stale)
    text = (stale / "privacy.json").read_text()
    scan_id = read_summary(stale).scan_id
    (stale / "privacy.json").write_text(text.replace(scan_id, "20000101-000000-00000000"))
    (row,) = compare_studies([stale])
    assert row.privacy is None and set(row.privacy_columns().values()) == {"not run"}
    # a damaged privacy.json leaves the study's copy numbers in the comparison and says how to mend it
    (stale / "privacy.json").write_text(text[: len(text) // 2])
    (row,) = compare_studies([stale])
    assert row.privacy is None and "privacy.json" in row.privacy_error and row.copies.total > 0
    assert set(row.privacy_columns().values()) == {"unreadable: rerun `python -m core privacy --study demo-2d`"}


def test_an_unscanned_study_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "fresh").mkdir()
    with pytest.raises(MemoScopeError, match="cannot compare fresh"):
        compare_studies([tmp_path / "fresh"])


def test_stages_that_make_no_anatomy_are_marked_too_poor_to_judge() -> None:
    rows = {r.study: r for r in compare_studies(DEMOS)}
    early = [r for name, r in rows.items() if name.endswith("-early")]
    later = [r for name, r in rows.items() if not name.endswith("-early")]
    assert early and all(r.too_poor_to_judge and "too poor to judge" in r.table_row()["sample quality"] for r in early)
    assert later and not any(r.too_poor_to_judge for r in later)


@pytest.mark.skipif(not DEMOS, reason="the committed demo studies are needed")
def test_compare_answers_the_augmentation_question_in_words_with_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    """ "Does augmentation reduce memorization in this demo?" once had to be read off a plot; stages too poor to
    judge were plotted at 0 %, a saved threshold was not marked, and a missing self-test read "None"."""
    from streamlit.testing.v1 import AppTest

    from core.study.compare import augmentation_sentence

    rows = compare_studies(DEMOS)
    sentence = augmentation_sentence(rows)
    assert sentence is not None and sentence.startswith("Copy fraction with vs without augmentation: ")
    assert "training patients)" in sentence and "So augmentation" in sentence
    assert "25 epochs: too poor to judge, left out" in sentence  # the early stages make no anatomy
    figure = fractions_by_epochs(rows)
    plotted = {int(x) for trace in figure.data for x in trace.x}
    assert plotted == {r.unet_epochs for r in rows if not r.too_poor_to_judge}
    assert all(r.table_row()["self-test F1"] in ("not run",) or "." in r.table_row()["self-test F1"] for r in rows)
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["study"] = str(DEMOS[0])
    at.run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, at.exception
    assert any(m.value.startswith("**Does augmentation reduce memorization here?**") for m in at.markdown)


@pytest.mark.skipif(not DEMOS, reason="the committed demo studies are needed")
def test_studies_at_different_thresholds_are_marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from streamlit.testing.v1 import AppTest

    from core.detect.metrics import Threshold, ThresholdRule
    from core.study import verdicts
    from core.study.results import ScanResults

    for demo in DEMOS[:2]:
        shutil.copytree(demo, tmp_path / "studies" / demo.name)
    saved = tmp_path / "studies" / DEMOS[0].name
    scan = ScanResults.open(saved)
    verdicts.save_threshold(saved, "ana", scan, Threshold(ThresholdRule.FIXED, None, 0.456, 0))
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["study"] = str(saved)
    at.run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, at.exception
    (warning,) = [w.value for w in at.warning if "different thresholds" in w.value]
    assert f"{DEMOS[0].name} at 0.456" in warning and "saved by ana" in warning
    table = at.dataframe[0].value
    assert list(table.columns[:2]) == ["study", "threshold"]  # in view, not off-screen at the right
