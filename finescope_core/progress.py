"""Progress of long loops: a tqdm bar on a terminal, and log lines (which Prefect shows in the UI) everywhere."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
logger = logging.getLogger("finescope_core")
LOG_EVERY_S = 30.0


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` showing a bar on a terminal and logging the count at most every 30 s, and at the end."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    last = start = time.monotonic()
    done = 0
    for done, item in enumerate(tqdm(items, desc=desc, total=total, disable=None), 1):
        yield item
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            logger.info("%s: %d/%s after %.0f s", desc, done, total or "?", now - start)
            last = now
    logger.info("%s: done, %d in %.0f s", desc, done, time.monotonic() - start)
