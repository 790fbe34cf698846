"""The curation chain, written once: pool -> activations -> SAE -> embeddings (and, for a selection that reads a
sentence embedder, its vectors) -> selection against the seeds.

The chain is given its steps: the core stages themselves (benches, scripts) or the Prefect tasks that wrap them (the
flows), so that orchestration adds caching, retries and logs without restating the order of the work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from finescope_core import stages
from finescope_core.config import RunConfig
from finescope_core.embed import token_pooling
from finescope_core.formats import CURATED_FILE, DOCS_FILE, Ref


@dataclass(frozen=True)
class CurationSteps:
    """One callable per stage, each with the signature of the ``finescope_core.stages`` function it stands for."""

    model_ref: Callable = stages.model_ref
    corpus: Callable = stages.corpus
    pool: Callable = stages.pool
    seeds: Callable = stages.seeds
    acts: Callable = stages.acts
    sae: Callable = stages.sae
    embeddings: Callable = stages.embeddings
    sentences: Callable = stages.sentences
    curated: Callable = stages.curated


def curate(config: RunConfig, steps: CurationSteps = CurationSteps(), model: dict | None = None,
           corpus: dict | None = None) -> dict:
    """References to every artifact of a curation of ``config``'s pool by its seeds: model, corpus, pool, seeds,
    acts (the pool's), sae, embeddings (the pool's), curated, and the vectors selection read (``vectors``: the
    pool's and seeds' activations and embeddings, and their sentence embeddings where the method reads them, which a
    selection by another method reuses).

    ``model`` and ``corpus`` are the references of those stages when the caller has them already, so that a user's
    model and pool are not resolved and fingerprinted a second time."""
    root, device = config.output, config.model.device
    model = model or steps.model_ref(config.model)
    corpus = corpus or steps.corpus(root, config.data)
    pool = steps.pool(root, corpus, config.data)
    seeds = steps.seeds(root, config.select.seeds)
    pool_acts = steps.acts(root, model, pool, config.dump, config.model)
    seed_acts = steps.acts(root, model, seeds, config.dump, config.model)
    sae = steps.sae(root, pool_acts, config.sae, device)
    pooling = token_pooling(config.select.pooling)
    vectors = {"pool_acts": pool_acts, "seed_acts": seed_acts,
               "pool_emb": steps.embeddings(root, pool_acts, sae, pooling, device),
               "seed_emb": steps.embeddings(root, seed_acts, sae, pooling, device)}
    if config.select.uses_sentence_embedder:
        vectors |= {"pool_sentences": steps.sentences(root, pool, device),
                    "seed_sentences": steps.sentences(root, seeds, device)}
    curated = steps.curated(root, pool, seeds, vectors, corpus["eval_sets"], config.select)
    return {"model": model, "corpus": corpus, "pool": pool, "seeds": seeds, "acts": pool_acts, "sae": sae,
            "embeddings": vectors["pool_emb"], "curated": curated, "vectors": vectors}


def calibration_text(config: RunConfig, refs: dict, curated_step: Callable = stages.curated) -> tuple[Ref, str]:
    """The text ``config.prune.calibration`` names, as a reference and file name, from a curation's ``refs`` (those
    :func:`curate` returns): the pool (generic); or the curation's selection, made again at
    ``prune.calibration_breadth`` times its budget (at most the pool), without its graph re-ranking for
    curated_first_pass. That selection is made by ``curated_step`` from the vectors the curation stored, unless it is
    the curation's own."""
    if config.prune.calibration == "generic":
        return refs["pool"], DOCS_FILE
    budget = min(round(config.prune.calibration_breadth * config.select.budget), refs["pool"]["info"]["n_docs"])
    select = config.select.model_copy(update={"budget": budget})
    if config.prune.calibration == "curated_first_pass" and select.reranks:
        select = select.model_copy(update={"manifold_alpha": 0.0})
    if select == config.select:
        return refs["curated"], CURATED_FILE
    return curated_step(config.output, refs["pool"], refs["seeds"], refs["vectors"], refs["corpus"]["eval_sets"],
                        select), CURATED_FILE
