"""Structured progress: long functions report typed events; the CLI draws bars, the app reads the job file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long function.

    Attributes:
        stage: what runs now (``"load"``, ``"train detector"``, ``"sample"``, ...).
        done, total: progress within the stage, in its own units (sets, epochs, samples).
        message: a line for people (losses, counts); never parsed.
    """

    stage: str
    done: int
    total: int
    message: str = ""


Progress = Callable[[ProgressEvent], None]


def silent(event: ProgressEvent) -> None:
    """A progress sink that drops every event."""


class StageBars:
    """Renders events as one tqdm bar per stage on stderr (the CLI's sink)."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self._bar: tqdm | None = None
        self._stage = ""

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage != self._stage or self._bar is None:
            self.close()
            self._stage = event.stage
            self._bar = tqdm(total=event.total, desc=event.stage, disable=self.disable, leave=True)
        bar = self._bar
        if bar.total != event.total:
            bar.total = event.total
        bar.n = event.done
        if event.message:
            bar.set_postfix_str(event.message, refresh=False)
        bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def logged(logger: logging.Logger, progress: Progress) -> Progress:
    """Pass events on to ``progress`` and log each event's message at INFO."""

    def sink(event: ProgressEvent) -> None:
        if event.message:
            logger.info("%s: %s", event.stage, event.message)
        progress(event)

    return sink
