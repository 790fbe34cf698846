"""The curation flow: activation dump -> SAE fit -> embed -> select, for a pool and a seeds file."""

from __future__ import annotations

from prefect import flow

from finescope_core.config import RunConfig
from tasks.stages import (
    build_corpus,
    dump_activations,
    embed_documents,
    fit_sae,
    load_seeds,
    resolve_model,
    sample_pool,
    select_documents,
)


@flow(name="curate", log_prints=True)
def curate(config: RunConfig) -> dict:
    """Select the pool documents most like the seeds; returns references to every artifact made on the way."""
    root, device = config.output, config.model.device
    model = resolve_model(config.model)
    corpus = build_corpus(root, config.data)
    pool = sample_pool(root, corpus, config.data)
    seeds = load_seeds(root, config.select.seeds)
    pool_acts = dump_activations(root, model, pool, config.dump, config.model)
    seed_acts = dump_activations(root, model, seeds, config.dump, config.model)
    sae = fit_sae(root, pool_acts, config.sae, device)
    pooling = "max" if config.select.pooling == "max" else "mean"
    vectors = {
        "pool_acts": pool_acts,
        "seed_acts": seed_acts,
        "pool_emb": embed_documents(root, pool_acts, sae, pooling, device),
        "seed_emb": embed_documents(root, seed_acts, sae, pooling, device),
    }
    curated = select_documents(root, pool, seeds, vectors, corpus["eval"], config.select)
    return {"model": model, "corpus": corpus, "pool": pool, "seeds": seeds, "acts": pool_acts, "sae": sae,
            "embeddings": vectors["pool_emb"], "curated": curated}
