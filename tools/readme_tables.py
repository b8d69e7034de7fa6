"""Benchmark tables in the README come from files that benchmark commands write, never from typing.

A benchmark calls :func:`write_result` with its markdown table and the command that produced it;
the file lands in ``benchmarks/results/<name>.md``. The README marks where each goes::

    <!-- generated: benchmarks/results/planted_copies.md -->
    ...pasted here by `python -m tools.readme_tables`...
    <!-- end generated -->

``python -m tools.readme_tables`` pastes every marked file; ``--check`` fails when the README and
the files disagree (a test runs it).
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from core.common.provenance import atomic_write_text, now_utc, versions

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks") / "results"
BLOCK = re.compile(r"(<!-- generated: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_result(name: str, table: str, command: str, notes: str = "", root: Path = REPO) -> Path:
    """Write ``benchmarks/results/<name>.md``: the table, the command, when, on what (the README pastes it)."""
    v = versions()
    cpu = platform.processor() or platform.machine()
    text = (
        f"{table}\n`{command}`, {now_utc()[:10]}, {cpu}, torch {v.get('torch', '?')}, monai {v.get('monai', '?')}."
        + (f" {notes}" if notes else "")
        + "\n"
    )
    path = root / RESULTS / f"{name}.md"
    atomic_write_text(path, text)
    return path


def pasted(readme: str, root: Path = REPO) -> str:
    """``readme`` with every generated block replaced by its file's current content."""

    def fill(match: re.Match[str]) -> str:
        path = root / match["path"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run the benchmark that writes it.")
        return match.group(1) + path.read_text(encoding="utf-8") + match.group(4)

    return BLOCK.sub(fill, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.readme_tables", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the result files")
    args = parser.parse_args(argv)
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = pasted(text)
    if args.check:
        if new != text:
            print(
                "README.md is out of date with benchmarks/results: run `python -m tools.readme_tables`", file=sys.stderr
            )
            return 1
        return 0
    if new != text:
        atomic_write_text(readme, new)
    print(f"README.md: {len(BLOCK.findall(text))} generated block(s) pasted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
