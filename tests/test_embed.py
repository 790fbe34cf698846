"""Document embeddings: from SAE codes (token pooling, idf weighting, power normalisation, joined layers) and from
the sentence embedder."""


import numpy as np
import pytest

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


def test_joined_layers_count_alike_whatever_the_scale_of_their_codes():
    rng = np.random.default_rng(0)
    low, high = rng.random((5, 6)), 100 * rng.random((5, 6))
    seed_low, seed_high = rng.random((1, 6)), 100 * rng.random((1, 6))
    docs, seeds = selection_vectors(np.hstack([low, high]), np.hstack([seed_low, seed_high]), "mean", 1.0, blocks=2)
    per_layer = (max_cosine(low, seed_low) + max_cosine(high, seed_high)) / 2
    np.testing.assert_allclose(max_cosine(docs, seeds), per_layer, rtol=1e-5)
    unjoined = max_cosine(np.hstack([low, high]), np.hstack([seed_low, seed_high]))
    assert not np.allclose(unjoined, per_layer)  # without the blocks, the large layer decides alone


def test_codes_that_do_not_split_into_the_layers_are_refused():
    with pytest.raises(ValueError, match="do not split into 2 equal layer blocks"):
        selection_vectors(np.ones((2, 5)), np.ones((1, 5)), "mean", 1.0, blocks=2)


def test_sentence_embeddings_are_unit_vectors_of_each_text_alone_whatever_its_batch():
    """A text's vector does not depend on the texts batched with it (padding is masked out of the mean), reads only
    the embedder's first max_seq_length tokens, and has unit length; related texts are nearer than unrelated ones."""
    from finescope_core.embed import _minilm, minilm_embeddings

    limit = _minilm("cpu").max_tokens
    texts = ["The patient's fever fell after a dose of paracetamol.", "A prime number has exactly two divisors.",
             "Fever in a patient treated with paracetamol.", "word " * (2 * limit)]
    together = minilm_embeddings(texts, batch_size=4)
    alone = np.stack([minilm_embeddings([text])[0] for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(minilm_embeddings(["word " * (3 * limit)])[0], together[3], atol=1e-5)
    assert together[0] @ together[2] > together[0] @ together[1] + 0.3
    assert minilm_embeddings([]).shape == (0, together.shape[1])
