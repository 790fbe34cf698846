"""Incremental curation: per-shard stages, the SAE's reuse-or-refit decision, selection over every shard."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from finescope_core import pool_shards, sae_reuse, stages, storage
from finescope_core.config import DumpConfig, ModelConfig, SAEConfig, SelectConfig
from finescope_core.embed import embed_with_sae, read_embeddings
from finescope_core.formats import EMBEDDINGS_FILE, SENTENCES_FILE
from finescope_core.sae import load_saes

SAE = SAEConfig(expansion=2, k=4, training_tokens=4000, batch_size=256)


def per_shard(root: str, model: dict, pool: Path, dump: DumpConfig) -> tuple[list[dict], list[dict]]:
    shards = [stages.shard(root, uri) for uri in pool_shards.shard_uris(str(pool))]
    return shards, [stages.acts(root, model, shard, dump, ModelConfig(name="tiny-random-llama")) for shard in shards]


def test_new_shards_alone_are_dumped_and_the_sae_reused_below_the_drift(tiny_model: Path, tmp_path: Path,
                                                                        monkeypatch, write_shard, tiny_dump):
    root, pool = str(tmp_path / "run"), tmp_path / "pool"
    model = stages.model_ref(ModelConfig(name="tiny-random-llama"))
    state = sae_reuse.state_uri(root, str(pool), model, tiny_dump, SAE)
    for index in range(2):
        write_shard(pool, index)
    _, acts = per_shard(root, model, pool, tiny_dump)
    first = stages.incremental_sae(root, state, acts, SAE)
    assert first.action == "fitted" and first.new_shards == 2

    write_shard(pool, 2)
    shards, acts = per_shard(root, model, pool, tiny_dump)
    assert [ref.get("reused", False) for ref in acts] == [True, True, False]  # only the new shard is dumped
    monkeypatch.setattr(sae_reuse, "drift", lambda sae, new, device="cpu": 0.1)
    reused = stages.incremental_sae(root, state, acts, SAE.model_copy(update={"refit_drift": 0.2}))
    assert reused.action == "reused" and reused.sae["fingerprint"] == first.sae["fingerprint"]
    assert reused.new_shards == 1 and reused.drift == 0.1
    embeddings = [stages.embeddings(root, ref, reused.sae, "max", "cpu") for ref in acts]
    merged = stages.merged(root, shards, embeddings)
    assert merged["info"] == {"n_docs": 36, "shards": 3}

    write_shard(pool, 3)
    _, acts = per_shard(root, model, pool, tiny_dump)
    refit = stages.incremental_sae(root, state, acts, SAE.model_copy(update={"refit_drift": 0.05}))
    assert refit.action == "refit" and refit.sae["fingerprint"] != first.sae["fingerprint"]
    assert storage.read_json(state)["shards"] == sorted(ref["fingerprint"] for ref in acts)
    again = stages.incremental_sae(root, state, acts, SAE)
    assert again.action == "reused" and again.new_shards == 0 and again.sae["fingerprint"] == refit.sae["fingerprint"]


def test_drift_is_near_zero_on_the_fitted_activations(tiny_model: Path, tmp_path: Path, write_shard, tiny_dump):
    root, pool = str(tmp_path / "run"), tmp_path / "pool"
    write_shard(pool, 0, n_docs=20)
    model = stages.model_ref(ModelConfig(name="tiny-random-llama"))
    _, acts = per_shard(root, model, pool, tiny_dump)
    sae = stages.sae(root, acts, SAE, "cpu")
    assert abs(sae_reuse.drift(sae, acts)) < 0.05


def test_every_captured_layer_gets_an_sae_and_a_block_of_the_merged_embeddings(tiny_model: Path, tmp_path: Path,
                                                                                 write_shard, tiny_dump):
    root, pool = str(tmp_path / "run"), tmp_path / "pool"
    for index in range(2):
        write_shard(pool, index)
    model = stages.model_ref(ModelConfig(name="tiny-random-llama"))
    shards, acts = per_shard(root, model, pool, tiny_dump.model_copy(update={"layers": [1, 0]}))
    sae = stages.sae(root, acts, SAE, "cpu")
    assert sae["info"]["layers"] == [0, 1] and set(sae["info"]["by_layer"]) == {"0", "1"}
    merged = stages.merged(root, shards, [stages.embeddings(root, ref, sae, "mean", "cpu") for ref in acts])
    ids, joined, blocks = read_embeddings(storage.join(merged["uri"], EMBEDDINGS_FILE))
    width = sae["info"]["by_layer"]["1"]["d_sae"]
    assert joined.shape == (len(ids), 2 * width) and blocks == 2
    layer_one, _ = load_saes(sae)[1]
    first_ids, codes = embed_with_sae(storage.join(acts[0]["uri"], "tokens"), 1, layer_one, "mean")
    assert ids[: len(first_ids)] == first_ids
    np.testing.assert_allclose(joined[: len(first_ids), width:], codes, rtol=1e-5)  # layer 1's own codes, second


def test_incremental_selection_ranks_every_shard(tiny_model: Path, tmp_path: Path, repo: Path, write_shard,
                                                 tiny_dump):
    root, pool = str(tmp_path / "run"), tmp_path / "pool"
    for index in range(3):
        write_shard(pool, index)
    model = stages.model_ref(ModelConfig(name="tiny-random-llama"))
    shards, acts = per_shard(root, model, pool, tiny_dump)
    sae = stages.sae(root, acts, SAE, "cpu")
    merged = stages.merged(root, shards, [stages.embeddings(root, ref, sae, "max", "cpu") for ref in acts],
                           [stages.sentences(root, ref) for ref in shards])
    seeds = stages.seeds(root, str(repo / "seeds" / "medicine.jsonl"))
    seed_emb = stages.embeddings(root, stages.acts(root, model, seeds, tiny_dump, ModelConfig()), sae, "max", "cpu")
    vectors = {"pool_emb": merged, "seed_emb": seed_emb, "pool_sentences": merged,
               "seed_sentences": stages.sentences(root, seeds)}
    curated = stages.curated(root, merged, seeds, vectors, None,
                             SelectConfig(budget=30, decontaminate=False, near_duplicate_cosine=1.0))
    chosen = storage.read_parquet(storage.join(curated["uri"], "curated.parquet"))["doc_id"].to_pylist()
    assert len(chosen) == 30 and {doc_id.split("-")[0] for doc_id in chosen} == {"s0", "s1", "s2"}


def test_sentence_embeddings_are_made_once_per_shard_and_merged_in_pool_order(tmp_path: Path, monkeypatch,
                                                                               write_shard):
    """The hybrid's sentence embedder runs on each shard once: a re-curation embeds only the new shard, and the
    merged pool holds the same vectors as embedding every document at once."""
    from finescope_core import embed

    root, pool = str(tmp_path / "run"), tmp_path / "pool"
    embedded: list[int] = []
    real = embed.minilm_embeddings

    def counted(texts: list[str], device: str = "cpu"):
        embedded.append(len(texts))
        return real(texts, device)

    monkeypatch.setattr(embed, "minilm_embeddings", counted)

    def curate_sentences() -> dict:
        shards = [stages.shard(root, uri) for uri in pool_shards.shard_uris(str(pool))]
        return stages.merged(root, shards, [], [stages.sentences(root, ref) for ref in shards])

    for index in range(2):
        write_shard(pool, index)
    curate_sentences()
    write_shard(pool, 2, n_docs=5)
    merged = curate_sentences()
    assert embedded == [12, 12, 5]  # the third run's two old shards were not embedded again

    ids, matrix, _ = read_embeddings(storage.join(merged["uri"], SENTENCES_FILE))
    docs = storage.read_parquet(storage.join(merged["uri"], "docs.parquet"))
    assert ids == docs["doc_id"].to_pylist() and len(ids) == 29
    np.testing.assert_allclose(matrix, embed.minilm_embeddings(docs["text"].to_pylist()), atol=1e-4)


def test_a_shard_without_text_is_named(tmp_path: Path):
    uri = str(tmp_path / "pool" / "bad.parquet")
    storage.write_parquet(pa.table({"doc_id": ["a"]}), uri)
    with pytest.raises(ValueError, match=r"bad\.parquet: lacks column\(s\) \['text'\]"):
        stages.shard(str(tmp_path / "run"), uri)
    with pytest.raises(FileNotFoundError, match="holds no Parquet shards"):
        pool_shards.shard_uris(str(tmp_path / "empty"))
