from pathlib import Path

import numpy as np
import pytest

from finescope_core import storage
from finescope_core.activations import dump_activations
from finescope_core.config import DumpConfig, SAEConfig
from finescope_core.embed import embed_with_sae, idf_weights, l2_normalise, pool_codes
from finescope_core.ngrams import NgramIndex
from finescope_core.sae import fit_sae, load_sae
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


def test_pooling_and_idf():
    codes = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 0.0]])
    np.testing.assert_allclose(pool_codes(codes, np.array([0, 2]), "mean"), [[2.0, 1.0], [5.0, 0.0]])
    np.testing.assert_allclose(pool_codes(codes, np.array([0, 2]), "max"), [[3.0, 2.0], [5.0, 0.0]])
    weights = idf_weights(np.array([[1.0, 0.0], [1.0, 1.0]]))
    assert weights[1] > weights[0]


def test_sae_fits_saves_and_embeds(tiny_model: Path, tmp_path: Path):
    texts = [f"Document {i} talks about {'medicine and patients' if i % 2 else 'python code and functions'}."
             for i in range(24)]
    ids = [f"d{i}" for i in range(24)]
    acts = str(tmp_path / "acts")
    dump_activations(tiny_model, ids, texts, acts, DumpConfig(layers=[1], shard_docs=8, sae_sample_tokens=10_000))
    cfg = SAEConfig(expansion=4, k=8, training_tokens=30_000, batch_size=128)
    metrics = fit_sae(storage.join(acts, "sample"), 1, str(tmp_path / "sae"), cfg)
    assert metrics["d_sae"] == 4 * metrics["d_in"] == 256
    assert 0 < metrics["fvu"] < 1 and 0 < metrics["l0"] <= 8
    sae = load_sae(str(tmp_path / "sae"))
    doc_ids, pooled = embed_with_sae(storage.join(acts, "tokens"), 1, sae, "mean")
    assert sorted(doc_ids) == sorted(ids) and pooled.shape == (24, 256)
    assert (pooled >= 0).all() and (pooled > 0).any(1).all()


def test_sae_rejects_a_wrong_layer(tiny_model: Path, tmp_path: Path):
    acts = str(tmp_path / "acts")
    dump_activations(tiny_model, ["a"], ["some text here"], acts, DumpConfig(layers=[1]))
    with pytest.raises(ValueError, match="no tokens of layer 0"):
        fit_sae(storage.join(acts, "sample"), 0, str(tmp_path / "sae"), SAEConfig())


def test_sae_width_must_match_the_activations():
    import sae_lens

    from finescope_core.embed import encode_tokens

    sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=8, d_sae=16, k=2))
    with pytest.raises(ValueError, match="d_in=8 does not match the activations' width 12"):
        encode_tokens(sae, np.zeros((3, 12), np.float32))
