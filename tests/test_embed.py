"""Document embeddings from SAE codes: token pooling, idf weighting and power normalisation."""


import numpy as np

from finescope_core.embed import idf_weights, pool_codes, selection_vectors
from finescope_core.select import max_cosine


def test_pooling_and_idf():
    codes = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 0.0]])
    np.testing.assert_allclose(pool_codes(codes, np.array([0, 2]), "mean"), [[2.0, 1.0], [5.0, 0.0]])
    np.testing.assert_allclose(pool_codes(codes, np.array([0, 2]), "max"), [[3.0, 2.0], [5.0, 0.0]])
    weights = idf_weights(np.array([[1.0, 0.0], [1.0, 1.0]]))
    assert weights[1] > weights[0]


def test_power_normalisation_lets_many_shared_latents_outweigh_one_dominant_latent():
    seed = np.array([[9.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    one_big = np.array([9.0, 0.0, 0.0, 0.0, 0.0, 3.0])  # shares only the dominant latent
    many_small = np.array([0.5, 1.0, 1.0, 1.0, 1.0, 0.0])  # shares the seed's whole pattern, weakly
    docs = np.stack([one_big, many_small])
    plain = max_cosine(*selection_vectors(docs, seed, "mean", 1.0))
    powered = max_cosine(*selection_vectors(docs, seed, "mean", 0.5))
    assert plain[0] > plain[1] and powered[1] > powered[0]
    assert np.allclose(selection_vectors(docs, seed, "mean", 1.0)[0], docs)
