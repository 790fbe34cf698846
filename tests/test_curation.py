from pathlib import Path

import numpy as np
import pytest

from finescope_core import storage
from finescope_core.activations import dump_activations
from finescope_core.config import DumpConfig, SAEConfig
from finescope_core.embed import embed_with_sae, idf_weights, l2_normalise, pool_codes, selection_vectors
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
    metrics = fit_sae([storage.join(acts, "sample")], 1, str(tmp_path / "sae"), cfg)
    assert metrics["d_sae"] == 4 * metrics["d_in"] == 256
    assert 0 < metrics["fvu"] < 1 and 0 < metrics["l0"] <= 8
    sae, coordinates = load_sae(str(tmp_path / "sae"))
    assert coordinates is None
    doc_ids, pooled = embed_with_sae(storage.join(acts, "tokens"), 1, sae, "mean")
    assert sorted(doc_ids) == sorted(ids) and pooled.shape == (24, 256)
    assert (pooled >= 0).all() and (pooled > 0).any(1).all()


def test_sae_rejects_a_wrong_layer(tiny_model: Path, tmp_path: Path):
    acts = str(tmp_path / "acts")
    dump_activations(tiny_model, ["a"], ["some text here"], acts, DumpConfig(layers=[1]))
    with pytest.raises(ValueError, match="no tokens of layer 0"):
        fit_sae([storage.join(acts, "sample")], 0, str(tmp_path / "sae"), SAEConfig())


def test_sae_width_must_match_the_activations():
    import sae_lens

    from finescope_core.embed import encode_tokens

    sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=8, d_sae=16, k=2))
    with pytest.raises(ValueError, match="d_in=8 does not match the activations' width 12"):
        encode_tokens(sae, np.zeros((3, 12), np.float32))


def test_sensitivity_scores_match_the_exact_jacobian(tiny_model: Path):
    """The probe estimate converges to the squared Jacobian row norms computed exactly."""
    import torch

    from finescope_core.coordinates import sensitivity, top_coordinates
    from finescope_core.models import load_model

    model = load_model(tiny_model)
    ids = [5, 17, 230, 9, 1024]
    estimate = sensitivity(model, [ids], layer=0, probes=400, seed=0)
    embeddings = model.get_input_embeddings()(torch.tensor([ids])).detach()
    jacobian = torch.autograd.functional.jacobian(lambda e: _layer_output(model, e), embeddings)  # [1,5,d,1,5,d]
    exact = jacobian[0, 1:].pow(2).sum((-3, -2, -1)).mean(0).numpy()  # tokens after the sink
    assert np.corrcoef(estimate, exact)[0, 1] > 0.95
    assert top_coordinates(exact, 8) == sorted(np.argsort(-exact)[:8].tolist())
    with pytest.raises(ValueError, match="input_coordinates=0"):
        top_coordinates(exact, 0)


def _layer_output(model, embeddings):
    from finescope_core.model_structure import truncated

    captured = {}
    hook = model.model.layers[0].register_forward_hook(lambda _m, _i, out: captured.setdefault("out", out))
    try:
        with truncated(model, 1):
            model.model(inputs_embeds=embeddings, use_cache=False)
    finally:
        hook.remove()
    out = captured["out"]
    return out[0] if isinstance(out, tuple) else out


def test_sae_on_gradient_selected_coordinates(tiny_model: Path, tmp_path: Path):
    texts = [f"Note {i}: the patient received {i} mg of aspirin for chest pain today." for i in range(16)]
    acts = str(tmp_path / "acts")
    dump_activations(tiny_model, [f"d{i}" for i in range(16)], texts, acts,
                     DumpConfig(layers=[1], sae_sample_tokens=5000, sensitivity_docs=4))
    scores = storage.read_json(storage.join(acts, "sensitivity.json"))["1"]
    assert len(scores) == 64 and min(scores) >= 0
    cfg = SAEConfig(expansion=2, k=4, training_tokens=5000, batch_size=128, input_coordinates=16)
    metrics = fit_sae([storage.join(acts, "sample")], 1, str(tmp_path / "sae"), cfg,
                      sensitivity_uri=storage.join(acts, "sensitivity.json"))
    assert metrics["d_in"] == 16 and metrics["d_sae"] == 32
    sae, coordinates = load_sae(str(tmp_path / "sae"))
    assert coordinates == sorted(np.argsort(-np.array(scores))[:16].tolist())
    doc_ids, pooled = embed_with_sae(storage.join(acts, "tokens"), 1, sae, "mean", coordinates)
    assert sorted(doc_ids) == sorted(f"d{i}" for i in range(16))
    assert pooled.shape == (16, 32)
    with pytest.raises(ValueError, match=r"dump\.sensitivity_docs"):
        fit_sae([storage.join(acts, "sample")], 1, str(tmp_path / "sae2"), cfg, sensitivity_uri=None)


def test_power_normalisation_lets_many_shared_latents_outweigh_one_dominant_latent():
    seed = np.array([[9.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    one_big = np.array([9.0, 0.0, 0.0, 0.0, 0.0, 3.0])  # shares only the dominant latent
    many_small = np.array([0.5, 1.0, 1.0, 1.0, 1.0, 0.0])  # shares the seed's whole pattern, weakly
    docs = np.stack([one_big, many_small])
    plain = max_cosine(*selection_vectors(docs, seed, "mean", 1.0))
    powered = max_cosine(*selection_vectors(docs, seed, "mean", 0.5))
    assert plain[0] > plain[1] and powered[1] > powered[0]
    assert np.allclose(selection_vectors(docs, seed, "mean", 1.0)[0], docs)
