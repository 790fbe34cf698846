"""What the benchmarks share: the curation stages for one demo domain, run without Prefect."""

from __future__ import annotations

import json
from pathlib import Path

from finescope_core import curation, stages, storage
from finescope_core.config import RunConfig

REPO = Path(__file__).resolve().parent.parent


def domain_config(config: RunConfig, domain: str) -> RunConfig:
    """``config`` with the seeds of ``domain`` (``seeds/DOMAIN.jsonl``)."""
    seeds = str(REPO / "seeds" / f"{domain}.jsonl")
    return config.model_copy(update={"select": config.select.model_copy(update={"seeds": seeds})})


def curated_refs(config: RunConfig, domain: str) -> tuple[dict, dict, dict]:
    """(model, corpus, refs) for ``domain``: the curation chain without Prefect, cached under the run root.
    ``refs`` holds "curated" (the configured selection), "generic" (the pool) and what a selection by another method
    needs ("seeds", "vectors"), and what ``curation.calibration_text`` reads ("pool", "corpus")."""
    refs = curation.curate(domain_config(config, domain))
    root, device = config.output, config.model.device
    vectors = refs["vectors"] | {"pool_sentences": stages.sentences(root, refs["pool"], device),
                                 "seed_sentences": stages.sentences(root, refs["seeds"], device)}  # for minilm
    shared = {"generic": refs["pool"], "pool": refs["pool"], "corpus": refs["corpus"], "seeds": refs["seeds"],
              "vectors": vectors, "curated": refs["curated"]}
    return refs["model"], refs["corpus"], shared


def selection(config: RunConfig, domain: str, corpus: dict, refs: dict, method: str) -> dict:
    """The domain's documents selected from the pool by ``method`` (hybrid, sae, minilm, raw_act, random) at the
    config's budget."""
    select = domain_config(config, domain).select.model_copy(update={"method": method})
    return stages.curated(config.output, refs["generic"], refs["seeds"], refs["vectors"], corpus["eval_sets"], select)


def cached(path: Path, compute, *args):
    """``compute(*args)``, computed once and kept as JSON (written atomically), so an interrupted bench resumes."""
    if path.is_file():
        return json.loads(path.read_text())
    value = compute(*args)
    storage.write_json(str(path), value)
    return value
