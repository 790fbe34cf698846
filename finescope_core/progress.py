"""Progress of long loops: a tqdm bar on a terminal, log lines everywhere, and a reporter that an orchestration layer
installs to show progress in its UI (the task layer's Prefect progress artifacts), so this library imports none."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
logger = logging.getLogger("finescope_core")
LOG_EVERY_S = 30.0
REPORT_EVERY_S = 5.0

Reporter = Callable[[str, int, int], None]  # (what the loop does, items done, items in all)
_reporter: Reporter | None = None


def report_to(reporter: Reporter | None) -> None:
    """Have every loop of known length also call ``reporter(desc, done, total)``: at its start, at most every 5 s,
    and at its end. None stops the reports."""
    global _reporter
    _reporter = reporter


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` showing a bar on a terminal, logging the count at most every 30 s and at the end, and
    telling the installed reporter (``report_to``) when the length is known."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    reporter = _reporter if total else None
    last = reported = start = time.monotonic()
    done = 0
    if reporter:
        reporter(desc, 0, total)
    for done, item in enumerate(tqdm(items, desc=desc, total=total, disable=None), 1):
        yield item
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            logger.info("%s: %d/%s after %.0f s", desc, done, total or "?", now - start)
            last = now
        if reporter and done < total and now - reported >= REPORT_EVERY_S:  # the end is reported below
            reporter(desc, done, total)
            reported = now
    if reporter:
        reporter(desc, done, total)
    logger.info("%s: done, %d in %.0f s", desc, done, time.monotonic() - start)
