"""README numbers come from commands: every generated block equals the file its benchmark wrote."""

from __future__ import annotations

import re
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


def guarantee_tests(readme: str) -> list[tuple[str, str | None]]:
    """``(test file, test name or None)`` for every test the README's guarantees table names; ``::name`` continues
    the file named before it in the same cell."""
    section = readme.split("## What MemoScope guarantees", 1)[1].split("\n## ", 1)[0]
    named = []
    for row in (line for line in section.splitlines() if line.startswith("| ") and "`" in line):
        current = None
        for ref in re.findall(r"`([^`]+)`", row.rsplit("|", 2)[-2]):
            path, _, name = ref.partition("::")
            current = path or current
            assert current, f"{ref!r} names no test file"
            named.append((current, name.split("[")[0] or None))
    return named


def test_every_guarantee_names_a_test_that_exists() -> None:
    named = guarantee_tests((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(named) >= 10
    missing = [
        f"{path}::{name}"
        for path, name in named
        if not (REPO / path).is_file()
        or (name and not re.search(rf"^\s*def {re.escape(name)}\(", (REPO / path).read_text(), re.MULTILINE))
    ]
    assert missing == [], "the README's guarantees name tests that do not exist"
    assert guarantee_tests("## What MemoScope guarantees\n| a | `tests/x.py::test_gone` |\n") == [
        ("tests/x.py", "test_gone")
    ]
