"""User-facing error type: every message names the file or field and says what to do."""

from __future__ import annotations


class MemoScopeError(Exception):
    """An error caused by the user's input (a file, a folder, a field), not by a bug.

    The CLI prints these without a traceback; the app shows them as messages.
    """
