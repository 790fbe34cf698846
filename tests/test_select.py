"""Selection: cosine to the nearest seed, and the top-ranked documents without duplicates or contamination."""


import numpy as np
import pyarrow as pa
import pytest

from finescope_core.embed import l2_normalise
from finescope_core.ngrams import NgramIndex
from finescope_core.select import combined_scores, max_cosine, max_jaccard, seed_scores, select_top


def test_max_cosine_is_the_best_seed_cosine():
    rng = np.random.default_rng(0)
    docs, seeds = rng.standard_normal((300, 16)), rng.standard_normal((5, 16))
    expected = (l2_normalise(docs) @ l2_normalise(seeds).T).max(1)
    np.testing.assert_allclose(max_cosine(docs, seeds), expected, atol=1e-6)
    with pytest.raises(ValueError, match="seeds file is empty"):
        max_cosine(docs, seeds[:0])


def test_max_jaccard_is_the_best_seed_overlap_of_sum_normalised_codes():
    rng = np.random.default_rng(0)
    docs, seeds = np.maximum(rng.standard_normal((300, 16)), 0), np.maximum(rng.standard_normal((5, 16)), 0)
    p, q = docs / docs.sum(1, keepdims=True), seeds / seeds.sum(1, keepdims=True)
    expected = [max(np.minimum(d, s).sum() / np.maximum(d, s).sum() for s in q) for d in p]
    np.testing.assert_allclose(max_jaccard(docs, seeds), expected, atol=1e-6)
    assert np.allclose(max_jaccard(docs * 7, seeds), max_jaccard(docs, seeds), atol=1e-6)  # length does not count
    seed = np.array([[2.0, 1.0, 0.0, 0.0]])
    assert np.allclose(max_jaccard(np.array([[4.0, 2.0, 0, 0], [0, 0, 1.0, 3.0]]), seed), [1.0, 0.0])
    with pytest.raises(ValueError, match="seeds file is empty"):
        max_jaccard(docs, seeds[:0])


def test_select_top_skips_duplicates_and_contamination():
    texts = ["alpha beta gamma", "Alpha  beta gamma", "delta epsilon", "leaked eval question words here " * 3, "zeta"]
    vectors = np.eye(5, 8)
    vectors[2] = vectors[0] + 1e-3  # near duplicate of document 0
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    index = NgramIndex(["intro " + "leaked eval question words here " * 3])
    chosen = select_top(scores, vectors, texts, budget=2, contamination=index)
    assert chosen.indices == [0, 4]
    assert chosen.skipped == {"below_threshold": 0, "exact_duplicate": 1, "near_duplicate": 1, "contaminated": 1}
    assert select_top(scores, vectors, texts, budget=5, threshold=0.65).indices == [0]
    with pytest.raises(ValueError, match=r"select\.budget=9 is larger than the pool"):
        select_top(scores, vectors, texts, budget=9)


def test_feedback_reaches_documents_near_the_top_ranked_ones():
    """A seed close to one pool document only: feedback from that document lifts its neighbours above a document
    that is as close to the seed but unlike the top of the ranking."""
    seed = np.array([[1.0, 0.0, 0.0]])
    docs = np.array([[0.9, 0.44, 0.0], [0.5, 0.86, 0.0], [0.5, 0.0, 0.86], [0.0, 0.0, 1.0]])
    plain = max_cosine(docs, seed)
    assert np.isclose(plain[1], plain[2])
    lifted = seed_scores(docs, seed, feedback_docs=1)
    assert lifted[1] > lifted[2] and np.argmax(lifted) == 0
    assert np.allclose(seed_scores(docs, seed), plain)
    codes = np.abs(docs)  # the same under the generalised Jaccard, on non-negative codes
    jaccard = max_jaccard(codes, seed)
    assert np.isclose(jaccard[1], jaccard[2])
    lifted = seed_scores(codes, seed, "jaccard", feedback_docs=1)
    assert lifted[1] > lifted[2] and np.argmax(lifted) == 0


def test_combined_scores_weigh_methods_by_their_weights_whatever_their_scale():
    a, b = np.array([0.1, 0.2, 0.3]), np.array([300.0, 100.0, 200.0])
    combined = combined_scores(a, b)
    assert np.allclose(combined, combined_scores(a * 10, b / 7)) and np.isclose(combined.mean(), 0)
    assert np.argmax(combined) == 2
    assert np.argmax(combined_scores(a, b, weights=(0.9, 0.1))) == 2
    assert np.argmax(combined_scores(a, b, weights=(0.1, 0.9))) == 0


def test_the_curated_stage_scores_by_the_configured_similarity_and_method(tmp_path, monkeypatch):
    """Document a shares the seed's one large latent, document b its many small ones: the cosine keeps a, the
    generalised Jaccard b. The hybrid adds a sentence embedder's view, which sees that only c is about the seed's
    subject, although a's and b's SAE codes are nearer the seed's."""
    from finescope_core import embed, stages, storage
    from finescope_core.config import SelectConfig
    from finescope_core.embed import minilm_embeddings, write_embeddings
    from finescope_core.formats import DOCS_FILE, EMBEDDINGS_FILE

    texts = {"a": "The match ended two nil after a late goal from the striker in the second half of play.",
             "b": "Tickets for the final home game of the football season go on sale at the stadium on Monday.",
             "c": "Insulin lowers blood glucose; a patient with type 1 diabetes needs it every day to survive.",
             **{k: f"Club news {k}: the coach named an unchanged side for the away fixture." for k in "def"}}
    root, seeds_file = str(tmp_path / "run"), tmp_path / "seeds.jsonl"
    rows = [{"doc_id": k, "text": t, "domain": None} for k, t in texts.items()]
    storage.write_parquet(pa.Table.from_pylist(rows), str(tmp_path / "pool" / DOCS_FILE))
    seeds_file.write_text('{"text": "People with diabetes inject insulin to keep their blood sugar in range."}\n')
    pool = {"uri": str(tmp_path / "pool"), "fingerprint": "pool"}
    seeds = stages.seeds(root, str(seeds_file))
    seed_ids = storage.read_parquet(storage.join(seeds["uri"], DOCS_FILE))["doc_id"].to_pylist()
    codes = {"a": [10.0, 0, 0, 0, 0], "b": [4.0, 1, 1, 1, 1], "c": [2.0, 1, 1, 1, 1], "d": [0, 0, 0, 0, 1.0],
             "e": [0, 0, 0, 1.0, 0], "f": [0, 0, 1.0, 0, 0]}
    write_embeddings(list(codes), np.array(list(codes.values())), str(tmp_path / "pool_emb" / EMBEDDINGS_FILE))
    write_embeddings(seed_ids, np.array([[10.0, 1, 1, 1, 1]]), str(tmp_path / "seed_emb" / EMBEDDINGS_FILE))
    refs = {"pool_emb": {"uri": str(tmp_path / "pool_emb"), "fingerprint": "p"},
            "seed_emb": {"uri": str(tmp_path / "seed_emb"), "fingerprint": "s"},
            "pool_sentences": stages.sentences(root, pool), "seed_sentences": stages.sentences(root, seeds)}
    # selection reads the stored sentence embeddings: it never runs the embedder itself
    monkeypatch.setattr(embed, "minilm_embeddings", lambda *args: pytest.fail("selection embedded texts again"))

    def first(**settings) -> str:
        cfg = SelectConfig(**{"method": "sae", "budget": 1, "decontaminate": False, "power": 1.0, "pooling": "mean",
                              "feedback_docs": 0, "manifold_alpha": 0, **settings})
        curated = stages.curated(root, pool, seeds, refs, None, cfg)
        return storage.read_parquet(storage.join(curated["uri"], "curated.parquet"))["doc_id"][0].as_py()

    assert [first(), first(similarity="jaccard"), first(method="hybrid")] == ["a", "b", "c"]
    # the weight moves the hybrid between its two views: nearly all SAE keeps the SAE's choice
    assert [first(method="hybrid", hybrid_weight=0.99), first(method="hybrid", hybrid_weight=0.01)] == ["a", "c"]
    with pytest.raises(ValueError, match=r"select\.similarity='jaccard' compares non-negative SAE codes"):
        SelectConfig(method="minilm", similarity="jaccard")

    # feedback belongs to the SAE score: a baseline keeps its plain max cosine whatever feedback_docs says
    baseline = SelectConfig(budget=len(texts), decontaminate=False, near_duplicate_cosine=1.0, method="minilm",
                            feedback_docs=3)
    chosen = storage.read_parquet(storage.join(stages.curated(root, pool, seeds, refs, None, baseline)["uri"],
                                               "curated.parquet"))
    seed_text = storage.read_parquet(storage.join(seeds["uri"], DOCS_FILE))["text"].to_pylist()
    plain = dict(zip(texts, max_cosine(minilm_embeddings(list(texts.values())), minilm_embeddings(seed_text))))
    np.testing.assert_allclose(chosen["score"].to_numpy(), [plain[d] for d in chosen["doc_id"].to_pylist()],
                               atol=1e-5)
