"""The one CSV writer and reader of MemoScope: UTF-8, a header row, LF line ends, atomic."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from typing import Any

from core.common.provenance import atomic_write_text


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document: ``header`` then ``rows``, every line ending in LF."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write :func:`csv_text` atomically to ``path`` (a reader never sees half a file)."""
    atomic_write_text(path, csv_text(header, rows))


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts keyed by its header."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
