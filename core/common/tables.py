"""The one CSV writer and reader of MemoScope: UTF-8, a header row, LF line ends, atomic, and no cell a spreadsheet
would run as a formula.

A patient ID or file name such as ``=cmd|' /C calc'!A0`` or ``+HYPERLINK(...)`` would run when a CSV is opened in a
spreadsheet. Following OWASP's CSV-injection guidance, a text cell that starts with ``= + - @``, a tab or a carriage
return is written with a leading apostrophe (spreadsheets show it as text); a cell that already starts with an
apostrophe gets one more, so :func:`read_csv` (and the manifest reader) take exactly one off and read back what was
written. Numbers are written as they are.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from typing import Any

from core.common.provenance import atomic_write_text

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def escape_cell(value: Any) -> Any:
    """A cell as written: text that a spreadsheet would run as a formula gets a leading apostrophe (a number
    written as text, such as ``-0.25``, does not)."""
    if not isinstance(value, str) or not value.startswith((*FORMULA_STARTS, QUOTE)) or _is_number(value):
        return value
    return QUOTE + value


def unescape_cell(text: str) -> str:
    """The value :func:`escape_cell` was given."""
    if text.startswith(QUOTE) and text[1:].startswith((*FORMULA_STARTS, QUOTE)) and not _is_number(text[1:]):
        return text[1:]
    return text


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document: ``header`` then ``rows``, every line ending in LF, formula-like text escaped."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([escape_cell(h) for h in header])
    writer.writerows([escape_cell(v) for v in row] for row in rows)
    return buffer.getvalue()


def write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write :func:`csv_text` atomically to ``path`` (a reader never sees half a file)."""
    atomic_write_text(path, csv_text(header, rows))


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts keyed by its header, with :func:`escape_cell`'s apostrophes taken off."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: unescape_cell(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]
