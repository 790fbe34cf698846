"""The curation flow: activation dump -> SAE fit -> embed -> select, for a pool and a seeds file."""

from __future__ import annotations

from finescope.flows.shards import dump_shards, embed_shard_sentences, embed_shards, with_runner
from finescope.tasks.naming import domain, flow_run_name
from finescope.tasks.stages import (
    build_corpus,
    choose_sae,
    curate_documents,
    dump_acts,
    embed_documents,
    embed_sentences,
    list_shards,
    load_seeds,
    merge_shards,
    read_shard,
    resolve_model,
    sample_pool,
    train_sae,
)
from prefect import flow

from finescope_core import curation
from finescope_core.config import RunConfig
from finescope_core.embed import token_pooling


@flow(name="curate", flow_run_name=flow_run_name("curate", domain), log_prints=True)
def curate(config: RunConfig, model: dict | None = None, corpus: dict | None = None) -> dict:
    """Select the pool documents most like the seeds; returns references to every artifact made on the way.

    ``model`` and ``corpus``: the references of those stages when the calling flow has resolved them already."""
    if (config.data.pool or config.data.dataset) and config.data.incremental:
        return curate_shards(config, model, corpus)
    tasks = curation.CurationSteps(model_ref=resolve_model, corpus=build_corpus, pool=sample_pool, seeds=load_seeds,
                                   acts=dump_acts, sae=train_sae, embeddings=embed_documents,
                                   sentences=embed_sentences, curated=curate_documents)
    return curation.curate(config, tasks, model, corpus)


def curate_shards(config: RunConfig, model: dict | None = None, corpus: dict | None = None) -> dict:
    """Curation of a user's pool shard by shard: only shards not seen before are dumped and embedded (by the SAE,
    and by the sentence embedder where the method reads it), and the SAE is reused unless the new shards'
    activations drift (``finescope_core.sae_reuse``)."""
    root, device = config.output, config.model.device
    if config.select.method == "raw_act":
        raise ValueError("select.method=raw_act is not available with incremental curation: use sae, hybrid, "
                         "minilm or random, or set data.incremental=false")
    model = model or resolve_model(config.model)
    corpus = corpus or build_corpus(root, config.data)
    pool_uri = corpus["pool"]  # data.pool, or data.dataset written as shards
    shards = [read_shard(root, uri) for uri in list_shards(pool_uri)]
    acts = with_runner(config.runner, dump_shards)(root, model, shards, config.dump, config.model)
    sae = choose_sae(root, model, acts, config.dump, config.sae, pool_uri, device)
    pooling = token_pooling(config.select.pooling)
    embeddings = with_runner(config.runner, embed_shards)(root, acts, sae, pooling, device)
    sentences = (with_runner(config.runner, embed_shard_sentences)(root, shards, device)
                 if config.select.uses_sentence_embedder else None)
    pool = merge_shards(root, shards, embeddings, sentences)
    seeds = load_seeds(root, config.select.seeds)
    seed_acts = dump_acts(root, model, seeds, config.dump, config.model)
    vectors = {"pool_emb": pool, "seed_emb": embed_documents(root, seed_acts, sae, pooling, device)}
    if sentences:
        vectors |= {"pool_sentences": pool, "seed_sentences": embed_sentences(root, seeds, device)}
    curated = curate_documents(root, pool, seeds, vectors, corpus["eval_sets"], config.select)
    return {"model": model, "corpus": corpus, "pool": pool, "seeds": seeds, "acts": acts, "sae": sae,
            "embeddings": embeddings, "curated": curated, "vectors": vectors}
