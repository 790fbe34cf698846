"""Checks that run before any work, so a bad run fails in seconds with a message naming the field, and writes nothing.

Order matters: everything that can be checked without writing is checked before the output location is probed.
"""

from __future__ import annotations

from finescope_core import storage
from finescope_core.config import RunConfig
from finescope_core.models import resolve
from finescope_core.stages import read_seeds


def check_run(config: RunConfig, needs_eval: bool = True, needs_seeds: bool = True) -> None:
    """Raise a ValueError/FileNotFoundError/PermissionError naming the field if ``config`` cannot run."""
    if needs_seeds:
        read_seeds(config.select.seeds)
    if config.data.pool and not storage.listdir(config.data.pool, ".parquet"):
        raise FileNotFoundError(f"data.pool={config.data.pool!r} holds no Parquet shards; give a folder of *.parquet")
    if needs_eval and config.data.pool and not config.data.eval_sets:
        raise ValueError("data.eval_sets is required with data.pool: give eval/<domain>/{mc,text}.parquet sets")
    resolve(config.model.name)
    try:
        storage.check_writable(config.output)
    except PermissionError as exc:
        raise PermissionError(
            f"output={config.output!r} is not writable ({exc.__cause__}); choose another location"
        ) from None
