"""Whether an incrementally curated pool keeps its SAE: the decision and its recorded state.

A pool that grows by Parquet shards is re-curated shard by shard (``stages.shard``): only the shards not seen before
are dumped and embedded. The SAEs (one per captured layer) are kept across re-curations unless the new activations
drift from those they were fitted on; drift is an SAE's fraction of variance unexplained (FVU) on the new shards'
token sample relative to its FVU at fit time, both on tokens it was not trained on (``sae`` holds documents out of
training), and the worst layer's decides. A refit covers every shard, and then every shard is embedded again.

The decision's state (which SAE is current and which shards it has covered) is a small JSON under the run root,
keyed by the pool, model and dump/SAE settings. ``stages.incremental_sae`` applies the decision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch

from finescope_core import storage
from finescope_core.addressing import STAGE_VERSIONS
from finescope_core.config import DumpConfig, SAEConfig
from finescope_core.formats import Ref
from finescope_core.sae import load_saes, quality, sample_tokens


@dataclass(frozen=True)
class SaeChoice:
    """The SAE to embed with, and why: fitted (first curation), reused (no drift) or refit (drift). ``sae`` is
    None until a fitted or refit SAE exists."""

    sae: Ref | None
    action: Literal["fitted", "reused", "refit"]
    drift: float | None
    new_shards: int


def state_uri(root: str, pool_uri: str, model: Ref, dump: DumpConfig, sae: SAEConfig) -> str:
    """Where the SAE decision of this pool, model and settings is kept."""
    settings = sae.model_dump(mode="json", exclude={"refit_drift"})
    key = storage.fingerprint(pool_uri, model["fingerprint"], dump.model_dump(mode="json"), settings,
                              STAGE_VERSIONS["sae"])  # an SAE of an older version is not reused
    return storage.join(root, "state", f"incremental-{key}.json")


def drift(sae_ref: Ref, acts: list[Ref], device: str = "cpu") -> float:
    """Relative rise of the SAEs' FVU on the token samples of ``acts`` (new shards: tokens they have not seen) over
    their FVU on held-out tokens at fit time: the largest over the layers."""
    shards = [shard for ref in acts for shard in storage.listdir(storage.join(ref["uri"], "sample"), ".parquet")]
    rises = []
    for layer, (model, coordinates) in load_saes(sae_ref, device).items():
        tokens = sample_tokens(shards, layer)
        if coordinates is not None:
            tokens = tokens[:, coordinates]
        fvu = quality(model, torch.tensor(tokens, device=device))["fvu"]
        rises.append(fvu / max(sae_ref["info"]["by_layer"][str(layer)]["fvu"], 1e-12) - 1)
    return max(rises)


def decide(state: str, acts: list[Ref], cfg: SAEConfig, device: str = "cpu") -> SaeChoice:
    """Fit the first time; later, reuse the recorded SAE for new shards unless their drift passes
    ``cfg.refit_drift`` (then refit on every shard)."""
    previous = storage.read_json(state) if storage.exists(state) else None
    covered = set(previous["shards"]) if previous else set()
    new = [ref for ref in acts if ref["fingerprint"] not in covered]
    if not (previous and storage.is_complete(previous["sae"]["uri"])):
        return SaeChoice(None, "fitted", None, len(new))
    measured = drift(previous["sae"], new, device) if new else 0.0
    if measured <= cfg.refit_drift:
        return SaeChoice(previous["sae"], "reused", measured if new else None, len(new))
    return SaeChoice(None, "refit", measured, len(new))


def record(state: str, choice: SaeChoice, acts: list[Ref]) -> None:
    """Keep the choice (its SAE now set) as the pool's state: the SAE and every shard it covers."""
    covered = set(storage.read_json(state)["shards"]) if storage.exists(state) else set()
    storage.write_json(state, {"sae": choice.sae, "shards": sorted(covered | {ref["fingerprint"] for ref in acts}),
                               "last": {key: value for key, value in asdict(choice).items() if key != "sae"}})
