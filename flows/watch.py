"""The pool watcher: announces new Parquet shards under the pool prefix as a Prefect event.

Run on a short schedule (see ``deployments/prefect.yaml``); the ``curate`` deployment's trigger starts a
re-curation for each announcement, and incremental curation then dumps and embeds only the new shards.
"""

from __future__ import annotations

from finescope.tasks.caching import io_task
from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from finescope_core import pool_shards, storage

SHARDS_ARRIVED = "finescope.pool.shards-arrived"


@io_task
def find_new_shards(pool: str, seen: str) -> list[str]:
    return pool_shards.unseen_shards(pool, seen)


@task
def announce(pool: str, shards: list[str], seen: str) -> None:
    """Emit the event, then record the shards as seen."""
    emit_event(event=SHARDS_ARRIVED, payload={"pool": pool, "shards": shards},
               resource={"prefect.resource.id": f"finescope.pool.{storage.fingerprint(pool)}", "finescope.pool": pool})
    pool_shards.mark_seen(seen, shards)
    get_run_logger().info("announced %d new shard(s) under %s", len(shards), pool)


@flow(name="watch-pool")
def watch_pool(pool: str, output: str) -> list[str]:
    """Announce the shards under ``pool`` not announced before; ``output`` is the run root that keeps the record."""
    seen = pool_shards.seen_uri(output, pool)
    shards = find_new_shards(pool, seen)
    if shards:
        announce(pool, shards, seen)
    return shards
