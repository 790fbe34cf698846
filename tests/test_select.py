"""Selection: cosine to the nearest seed, and the top-ranked documents without duplicates or contamination."""


import numpy as np
import pytest

from finescope_core.embed import l2_normalise
from finescope_core.ngrams import NgramIndex
from finescope_core.select import max_cosine, select_top


def test_max_cosine_is_the_best_seed_cosine():
    rng = np.random.default_rng(0)
    docs, seeds = rng.standard_normal((300, 16)), rng.standard_normal((5, 16))
    expected = (l2_normalise(docs) @ l2_normalise(seeds).T).max(1)
    np.testing.assert_allclose(max_cosine(docs, seeds), expected, atol=1e-6)
    with pytest.raises(ValueError, match="seeds file is empty"):
        max_cosine(docs, seeds[:0])


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
