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
