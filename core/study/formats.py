"""The formats a study's documents are written in (an option set of its own, so that the CLI can offer them
without loading the report's machinery)."""

from __future__ import annotations

from enum import StrEnum


class ReportFormat(StrEnum):
    HTML = "html"  # self-contained: images and the figure inline
    PDF = "pdf"  # the HTML printed by the system's Chromium
