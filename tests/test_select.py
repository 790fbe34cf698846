"""Selection: cosine to the nearest seed, and the top-ranked documents without duplicates or contamination."""


import numpy as np
import pytest

from finescope_core.embed import l2_normalise
from finescope_core.ngrams import NgramIndex
from finescope_core.select import combined_scores, feedback_scores, max_cosine, max_jaccard, select_top


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
    lifted = feedback_scores(docs, seed, top=1)
    assert lifted[1] > lifted[2] and np.argmax(lifted) == 0
    assert np.allclose(feedback_scores(docs, seed, top=0), plain)


def test_combined_scores_weigh_methods_equally_whatever_their_scale():
    a, b = np.array([0.1, 0.2, 0.3]), np.array([300.0, 100.0, 200.0])
    combined = combined_scores(a, b)
    assert np.allclose(combined, combined_scores(a * 10, b / 7)) and np.isclose(combined.mean(), 0)
    assert np.argmax(combined) == 2
