"""Packed cloze scoring: an item's choices in one row score exactly as they do in sequences of their own."""

from __future__ import annotations

import numpy as np
import pytest

from finescope_core import evaluate
from finescope_core.evaluate import choice_logliks, cloze_sequences, continuation_logprobs
from finescope_core.formats import ClozeItem
from finescope_core.models import load_model, load_tokenizer
from finescope_core.packed import can_pack, pack_item, packed_logprobs

ITEMS = [
    ClozeItem("short", "Question: what is 2 + 2?\nAnswer:", [" 4", " five", " twenty-two point zero"], 0),
    ClozeItem("code", "def add(a, b):\n    return", [" a + b", " a * b", " print(a + b)", " (a, b)", " b"], 0),
    ClozeItem("long", "Question: " + "a patient presents with fever and a rash " * 6 + "\nAnswer:",
           [" measles", " a viral exanthem of childhood", " drug reaction"], 1),
]


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model_and_tokenizer(request, tiny_model):
    model = load_model(tiny_model)
    model.set_attn_implementation(request.param)
    return model, load_tokenizer(tiny_model)


def test_packed_rows_score_every_choice_as_its_own_sequence(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert can_pack(model)
    per_item = [cloze_sequences(tokenizer, [(item.context, c) for c in item.choices]) for item in ITEMS]
    rows = [pack_item(sequences) for sequences in per_item]
    for row, sequences in zip(rows, per_item):
        context = min(len(ids) - n for ids, n in sequences)
        assert len(row.ids) == context + sum(len(ids) - context for ids, _ in sequences)  # the context appears once
    packed = packed_logprobs(model, rows, batch_size=2, desc="test")  # rows of unequal length share a batch
    for scores, sequences in zip(packed, per_item):
        alone = continuation_logprobs(model, sequences, batch_size=1)
        np.testing.assert_allclose(scores, alone, rtol=0, atol=1e-4)


def test_a_long_row_loses_the_start_of_its_context_and_keeps_every_choice(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    item = ITEMS[2]
    sequences = cloze_sequences(tokenizer, [(item.context, c) for c in item.choices])
    full, cut = pack_item(sequences), pack_item(sequences, max_tokens=24)
    longest = max(len(ids) for ids, _ in sequences)
    context = min(len(ids) - n for ids, n in sequences)
    assert longest > 24
    kept = 24 - (longest - context)  # context tokens kept so that it and the longest choice make 24
    assert cut.ids[:kept] == full.ids[:1] + full.ids[context - kept + 1 : context]
    assert cut.ids[kept:] == full.ids[context:]
    assert [len(s) for s in cut.scored] == [n for _, n in sequences]


def test_unpackable_attention_scores_the_same_one_sequence_per_choice(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    packed = choice_logliks(model, tokenizer, ITEMS, batch_size=4)
    monkeypatch.setattr(evaluate, "can_pack", lambda _: False)
    unpacked = choice_logliks(model, tokenizer, ITEMS, batch_size=4)
    for a, b in zip(packed, unpacked):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
