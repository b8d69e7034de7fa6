"""README numbers come from commands: every generated block equals the file its benchmark wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import readme_tables

REPO = Path(__file__).resolve().parents[1]


def test_readme_tables_are_the_benchmark_files() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = readme_tables.BLOCK.findall(readme)
    assert len(blocks) >= 2, "the README should include the benchmark tables"
    assert readme_tables.pasted(readme) == readme, "run `python -m tools.readme_tables` after a benchmark"


def test_the_paste_bites(tmp_path: Path) -> None:
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    readme_tables.write_result("t", readme_tables.markdown_table(["a", "b"], [[1, 2]]), "cmd", root=tmp_path)
    stale = "x\n<!-- generated: benchmarks/results/t.md -->\n| a | b |\n| typed by hand |\n<!-- end generated -->\n"
    fresh = readme_tables.pasted(stale, root=tmp_path)
    assert "typed by hand" not in fresh and "| 1 | 2 |" in fresh and "`cmd`" in fresh
    with pytest.raises(FileNotFoundError):
        readme_tables.pasted("<!-- generated: benchmarks/results/none.md -->\n<!-- end generated -->", root=tmp_path)
