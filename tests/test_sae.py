"""The SAE: fitted with sae-lens on a dump's token sample, saved, reloaded, and checked against its input."""

from pathlib import Path

import numpy as np
import pytest

from finescope_core import progress, storage
from finescope_core.activations import dump_activations
from finescope_core.config import DumpConfig, SAEConfig
from finescope_core.embed import embed_with_sae
from finescope_core.sae import fit_sae, held_out_documents, load_sae, sample_tokens, token_batches


def test_sae_fits_saves_and_embeds(tiny_model: Path, tmp_path: Path):
    texts = [f"Document {i} talks about {'medicine and patients' if i % 2 else 'python code and functions'}."
             for i in range(24)]
    ids = [f"d{i}" for i in range(24)]
    acts = str(tmp_path / "acts")
    dump_activations(tiny_model, ids, texts, acts, DumpConfig(layers=[1], shard_docs=8, sae_sample_tokens=10_000))
    cfg = SAEConfig(expansion=4, k=8, training_tokens=30_000, batch_size=128)
    reports = []
    progress.report_to(lambda desc, done, total: reports.append((desc, done, total)))
    try:
        metrics = fit_sae([storage.join(acts, "sample")], 1, str(tmp_path / "sae"), cfg)
    finally:
        progress.report_to(None)
    steps = 30_000 // 128
    assert reports[0] == ("SAE fit, layer 1 (batches)", 0, 50 + steps)  # the norm estimate's batches, then the steps
    assert reports[-1] == ("SAE fit, layer 1 (batches)", 50 + steps, 50 + steps)  # every batch drawn, none left
    assert metrics["d_sae"] == 4 * metrics["d_in"] == 256
    assert 0 < metrics["fvu"] < 1 and 0 < metrics["l0"] <= 8
    assert metrics["eval"] == "held_out" and metrics["held_out_docs"] == 2 and 0 < metrics["train_fvu"] < 1
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


def test_held_out_documents_are_never_trained_on(tiny_model: Path, tmp_path: Path):
    """The figures in metrics.json come from documents the SAE never saw: none of their token rows is in a batch."""
    words = ("River Mountain Planet Garden Window Silver Forest Market Doctor Engine Castle Pencil Orange Violin "
             "Rocket Harbor Winter Coffee Bottle Tiger").split()  # distinct first words: no two documents share a row
    texts = [f"{word} is the subject of this short note about {'rivers' if i % 2 else 'stars'}." for i, word in
             enumerate(words)]
    acts = str(tmp_path / "acts")
    dump_activations(tiny_model, [f"n{i}" for i in range(20)], texts, acts,
                     DumpConfig(layers=[1], shard_docs=7, sae_sample_tokens=10_000))
    shards = storage.listdir(storage.join(acts, "sample"), ".parquet")
    held_out = held_out_documents(shards)
    assert held_out == held_out_documents(list(reversed(shards))) and len(held_out) == 2
    unseen = {row.tobytes() for row in sample_tokens(shards, 1, held_out)}
    batches = token_batches(shards, 1, 16, seed=0, exclude=held_out)
    trained = {row.tobytes() for _ in range(40) for row in next(batches).numpy()}
    assert unseen and trained and not unseen & trained
    everything = token_batches(shards, 1, 16, seed=0)
    assert unseen & {row.tobytes() for _ in range(40) for row in next(everything).numpy()}  # the check can fail
    single = str(tmp_path / "single")
    dump_activations(tiny_model, ["a"], ["one document alone"], single, DumpConfig(layers=[1]))
    with pytest.raises(ValueError, match="at least two"):
        fit_sae([storage.join(single, "sample")], 1, str(tmp_path / "sae"), SAEConfig())
