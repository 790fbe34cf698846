"""Gemma-3-270M, the second real model: converted from its PyPI GGUF, pruned, saved and reloaded stock."""

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from finescope_core.config import PruneConfig
from finescope_core.evaluate import document_scores
from finescope_core.formats import Document
from finescope_core.model_structure import decoder_layers
from finescope_core.models import load_model, load_tokenizer
from finescope_core.prune import prune_model


def perplexity(folder: Path, texts: list[str]) -> float:
    docs = [Document(str(i), text) for i, text in enumerate(texts)]
    scores = document_scores(load_model(folder), load_tokenizer(folder), docs, 128, 8)
    return math.exp(sum(scores["nll"]) / sum(scores["tokens"]))


@pytest.mark.integration
def test_gemma3_quarter_of_its_decoder_pruned_reloads_exactly(gemma3: Path, seed_texts, tmp_path: Path):
    held_out, calibration = seed_texts
    out = tmp_path / "pruned"
    cfg = PruneConfig(ratio=0.25, ratio_of="decoder", calibration_samples=64,
                      refine_steps=0)  # CI time; refinement of every family is in test_prune
    report = prune_model(gemma3, calibration, out, cfg)

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()  # stock transformers, no custom code
    dense = AutoModelForCausalLM.from_pretrained(gemma3)
    assert type(reloaded).__name__ == "Gemma3ForCausalLM"
    assert reloaded.config.layer_types == dense.config.layer_types  # its sliding-window layers stay where they were
    decoder_before = sum(p.numel() for layer in decoder_layers(dense) for p in layer.parameters())
    decoder_after = sum(p.numel() for layer in decoder_layers(reloaded) for p in layer.parameters())
    assert abs(1 - decoder_after / decoder_before - 0.25) < 0.01
    assert report["params_before"] - report["params_after"] == decoder_before - decoder_after
    ids = torch.randint(0, reloaded.config.vocab_size, (2, 24))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, load_model(out)(input_ids=ids).logits)
    # still a language model of the seed domains. Calibration windows that did not open with BOS, as the model's
    # sequences always do, left it at x3 to x11; a quarter of the decoder removed without the refit, at x10^6
    assert perplexity(out, held_out) < 2.5 * perplexity(gemma3, held_out)
