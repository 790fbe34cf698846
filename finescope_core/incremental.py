"""Incremental re-curation over a pool that grows by Parquet shards (new data landing in a bucket).

Each shard is a unit of work: its documents, activation dump and embeddings are stages of their own, so a
re-curation dumps and embeds only the shards it has not seen (the others are reused by content). The SAE is kept
across re-curations unless the new activations drift from those it was fitted on; drift is the SAE's fraction of
variance unexplained (FVU) on the new shards' token sample relative to its FVU at fit time. A refit covers every
shard, and then every shard is embedded again. Selection always ranks the documents of every shard.

The decision's state (which SAE is current and which shards it has covered) is a small JSON under the run root,
keyed by the pool, model and dump/SAE settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

from finescope_core import stages, storage
from finescope_core.activations import layer_rows, vectors
from finescope_core.config import DumpConfig, SAEConfig
from finescope_core.sae import EVAL_TOKENS, load_sae, quality

Ref = dict


@dataclass(frozen=True)
class SaeChoice:
    """The SAE to embed with, and why: fitted (first curation), reused (no drift) or refit (drift)."""

    sae: Ref
    action: Literal["fitted", "reused", "refit"]
    drift: float | None
    new_shards: int


def shard_uris(pool_uri: str) -> list[str]:
    """The pool's Parquet shards, in name order."""
    shards = storage.listdir(pool_uri, ".parquet")
    if not shards:
        raise FileNotFoundError(f"data.pool={pool_uri!r} holds no Parquet shards; give a folder of *.parquet")
    return shards


def state_uri(root: str, pool_uri: str, model: Ref, dump: DumpConfig, sae: SAEConfig) -> str:
    """Where the SAE decision of this pool, model and settings is kept."""
    settings = sae.model_dump(mode="json", exclude={"refit_drift"})
    key = storage.fingerprint(pool_uri, model["fingerprint"], dump.model_dump(mode="json"), settings)
    return storage.join(root, "state", f"incremental-{key}.json")


def drift(sae_ref: Ref, acts: list[Ref], device: str = "cpu") -> float:
    """Relative rise of the SAE's FVU on the token samples of ``acts`` over its FVU at fit time."""
    model, coordinates = load_sae(sae_ref["uri"], device)
    layer = sae_ref["info"]["layer"]
    rows = []
    for ref in acts:
        for shard in storage.listdir(storage.join(ref["uri"], "sample"), ".parquet"):
            rows.append(vectors(layer_rows(storage.read_parquet(shard), layer)))
    tokens = np.concatenate(rows)[:EVAL_TOKENS]
    if coordinates is not None:
        tokens = tokens[:, coordinates]
    fvu = quality(model, torch.from_numpy(np.ascontiguousarray(tokens)).to(device))["fvu"]
    return fvu / max(sae_ref["info"]["fvu"], 1e-12) - 1


def choose_sae(root: str, state: str, acts: list[Ref], cfg: SAEConfig, device: str = "cpu") -> SaeChoice:
    """Fit the SAE on every shard the first time; later, reuse it for new shards unless their drift passes
    ``cfg.refit_drift``, then refit on every shard. Records the choice at ``state``."""
    previous = storage.read_json(state) if storage.exists(state) else None
    covered = set(previous["shards"]) if previous else set()
    new = [ref for ref in acts if ref["fingerprint"] not in covered]
    if previous and storage.is_complete(previous["sae"]["uri"]):
        measured = drift(previous["sae"], new, device) if new else 0.0
        if measured <= cfg.refit_drift:
            choice = SaeChoice(previous["sae"], "reused", measured if new else None, len(new))
        else:
            choice = SaeChoice(stages.sae(root, acts, cfg, device), "refit", measured, len(new))
    else:
        choice = SaeChoice(stages.sae(root, acts, cfg, device), "fitted", None, len(new))
    storage.write_json(state, {"sae": choice.sae, "shards": sorted(covered | {ref["fingerprint"] for ref in acts}),
                               "last": {key: value for key, value in asdict(choice).items() if key != "sae"}})
    return choice


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
