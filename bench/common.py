"""What the benchmarks share: the curation stages for one demo domain, run without Prefect."""

from __future__ import annotations

import json
from pathlib import Path

from finescope_core import stages, storage
from finescope_core.config import RunConfig
from finescope_core.embed import token_pooling

REPO = Path(__file__).resolve().parent.parent


def curated_refs(config: RunConfig, domain: str) -> tuple[dict, dict, dict]:
    """(model, corpus, refs) for ``domain``: the curation stages without Prefect (as flows/curate.py chains them),
    cached under the run root. ``refs`` holds "curated" (SAE selection), "generic" (the pool) and what a selection
    by another method needs ("seeds", "vectors")."""
    root, device = config.output, config.model.device
    model = stages.model_ref(config.model)
    corpus = stages.corpus(root, config.data)
    pool = stages.pool(root, corpus, config.data)
    seeds = stages.seeds(root, str(REPO / "seeds" / f"{domain}.jsonl"))
    pool_acts = stages.dump(root, model, pool, config.dump, config.model)
    seed_acts = stages.dump(root, model, seeds, config.dump, config.model)
    sae = stages.sae(root, pool_acts, config.sae, device)
    pooling = token_pooling(config.select.pooling)
    vectors = {"pool_acts": pool_acts, "seed_acts": seed_acts,
               "pool_emb": stages.embeddings(root, pool_acts, sae, pooling, device),
               "seed_emb": stages.embeddings(root, seed_acts, sae, pooling, device)}
    refs = {"generic": pool, "seeds": seeds, "vectors": vectors}
    return model, corpus, {**refs, "curated": selection(config, domain, corpus, refs, "sae")}


def selection(config: RunConfig, domain: str, corpus: dict, refs: dict, method: str) -> dict:
    """The domain's documents selected from the pool by ``method`` (sae, minilm, raw_act, random) at the config's
    budget."""
    select = config.select.model_copy(update={"seeds": str(REPO / "seeds" / f"{domain}.jsonl"), "method": method})
    return stages.curated(config.output, refs["generic"], refs["seeds"], refs["vectors"], corpus["eval_sets"], select)


def cached(path: Path, compute, *args):
    """``compute(*args)``, computed once and kept as JSON (written atomically), so an interrupted bench resumes."""
    if path.is_file():
        return json.loads(path.read_text())
    value = compute(*args)
    storage.write_json(str(path), value)
    return value
