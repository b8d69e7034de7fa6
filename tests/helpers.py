"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, *, interval: float = 0.1, fail: bool = True
) -> bool:
    """Poll ``predicate`` every ``interval`` seconds until it is true or ``timeout`` seconds have passed.

    Returns True once it is true. On timeout: an AssertionError saying that ``what`` did not happen in time, or,
    with ``fail=False``, False (for tests that go on either way, e.g. kill a process after at most ``timeout``).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            if fail:
                raise AssertionError(f"{what}: not after {timeout:g} s")
            return False
        time.sleep(interval)
    return True
