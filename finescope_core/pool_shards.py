"""A pool that grows by Parquet shards (new data landing in a bucket): its shards, and which of them the pool watcher
has not announced yet."""

from __future__ import annotations

from finescope_core import storage


def shard_uris(pool_uri: str) -> list[str]:
    """The pool's Parquet shards, in name order."""
    shards = storage.listdir(pool_uri, ".parquet")
    if not shards:
        raise FileNotFoundError(f"data.pool={pool_uri!r} holds no Parquet shards; give a folder of *.parquet")
    return shards


def seen_uri(root: str, pool_uri: str) -> str:
    """Where the pool watcher records the shards it has announced."""
    return storage.join(root, "state", f"seen-{storage.fingerprint(pool_uri)}.json")


def unseen_shards(pool_uri: str, seen: str) -> list[str]:
    """The pool's shards not announced before (all of them the first time)."""
    announced = set(storage.read_json(seen)) if storage.exists(seen) else set()
    return [uri for uri in storage.listdir(pool_uri, ".parquet") if uri not in announced]


def mark_seen(seen: str, shards: list[str]) -> None:
    """Record ``shards`` as announced (after their event went out, so a failed announcement is retried)."""
    announced = set(storage.read_json(seen)) if storage.exists(seen) else set()
    storage.write_json(seen, sorted(announced | set(shards)))
