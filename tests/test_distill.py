from pathlib import Path

import pytest

from finescope_core.config import DistillConfig
from finescope_core.distill import distill_documents, final_answer, rejection_reason, self_distill


def test_final_answer_forms():
    assert final_answer("so the area is \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert final_answer("Total: 3 + 4 = 7\n#### 1,007") == "1007"
    assert final_answer("no final answer here") is None
    assert final_answer("C. Right coronary artery\nExplanation: ...") == "C"
    assert final_answer("(B) Candida") == "B"
    assert final_answer("A patient with fever") is None
    assert final_answer("She pays 3 * 6 = 18 dollars.\nThe answer is 1,018.") == "1018"  # the corpus's GSM8K form
    assert final_answer("So the final answer is: **Mitochondria**.") == "mitochondria"


@pytest.mark.parametrize(
    ("rewrite", "truncated", "reference", "reason"),
    [
        ("", False, "x", "empty"),
        ("A complete answer.", True, "x", "truncated"),
        ("What is the dose of aspirin for chest pain?", False, "x", "echo"),
        ("Based on the reference answer, it is 5.", False, "x", "meta"),
        ("The answer is \\boxed{6}.", False, "so \\boxed{5}", "wrong_final_answer"),
        ("The answer is \\boxed{5}.", False, "so \\boxed{5}", None),
        ("D. Rhinosporidium, a fungus.", False, "B. Candida\nExplanation: most common.", "wrong_final_answer"),
        ("B. Candida, the commonest fungus.", False, "B. Candida\nExplanation: most common.", None),
        ("Aspirin, 325 mg chewed.", False, "Give aspirin.", None),
        ("Half of 36 is 18, so she has 17 left.", False, "36 / 2 = 18\nThe answer is 18.", "wrong_final_answer"),
        ("Half of 36 is 18, so she has 18 left.", False, "36 / 2 = 18\nThe answer is 18.", None),
        ("She has 19 left.\nThe answer is 19.", False, "36 / 2 = 18\nThe answer is 18.", "wrong_final_answer"),
    ],
)
def test_rejection_reasons(rewrite, truncated, reference, reason):
    prompt = "What is the dose of aspirin for chest pain?"
    assert rejection_reason(prompt, reference, rewrite, truncated) == reason


def test_a_short_answer_that_repeats_an_option_is_not_an_echo():
    prompt = "Most common cause of oral thrush?\nA. Aspergillus\nB. Candida\nC. Mucor\nD. Rhinosporidium"
    reference = "B. Candida\nExplanation: Candida albicans is the commonest."
    assert rejection_reason(prompt, reference, "B. Candida", False) is None
    assert rejection_reason(prompt, reference, "D. Rhinosporidium", False) == "wrong_final_answer"
    assert rejection_reason(prompt, "It is a yeast infection.", "Most common cause of oral thrush?", False) == "echo"


EXAMPLES = [{"prompt": f"Question {i}: what is {i} plus {i}?", "response": f"It is {2 * i}.", "text": ""}
            for i in range(8)]


def test_self_distill_keeps_the_original_when_rejected(tiny_model: Path):
    rows = self_distill(tiny_model, EXAMPLES[:2], DistillConfig(max_new_tokens=4, generation_batch=2))
    assert len(rows) == 2
    for row in rows:  # a random model's 4-token babble is cut off (or blank): rejected, original kept
        assert row["kept"] == "original" and row["reject_reason"] in {"truncated", "empty"}
        assert row["response"] == row["original"]


def test_self_distill_uses_an_accepted_rewrite(tiny_model: Path, monkeypatch):
    import finescope_core.distill as module

    seen = {}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, device):
        seen["prompts"] = prompts
        return [("It equals zero, since 0 + 0 = 0.", False), ("", False)]

    monkeypatch.setattr(module, "generate", fake_generate)
    rows = self_distill(tiny_model, EXAMPLES[:2], DistillConfig(generation_batch=2))
    assert "### Reference Answer:\nIt is 0." in seen["prompts"][0]
    assert rows[0]["kept"] == "rewrite" and rows[0]["response"] == "It equals zero, since 0 + 0 = 0."
    assert rows[1]["kept"] == "original" and rows[1]["response"] == "It is 2."


def test_rewrites_are_generated_in_batches_of_similar_length_and_returned_in_order(tiny_model: Path, monkeypatch):
    import re

    import finescope_core.distill as module

    batches = []

    def fake_generate(model, tokenizer, prompts, max_new_tokens, device):  # answers the question it was shown
        batches.append([len(p) for p in prompts])
        asked = [int(re.search(r"Question (\d+)", p).group(1)) for p in prompts]
        return [(f"The answer is {2 * i}.", False) for i in asked]

    monkeypatch.setattr(module, "generate", fake_generate)
    examples = [{"prompt": f"Question {i}: what is {i} plus {i}?" + " Think." * (7 - i) * (i % 2),
                 "response": f"The answer is {2 * i}."} for i in range(8)]
    rows = self_distill(tiny_model, examples, DistillConfig(generation_batch=3))
    assert [row["response"] for row in rows] == [f"The answer is {2 * i}." for i in range(8)]
    assert all(row["kept"] == "rewrite" for row in rows)
    flat = [n for batch in batches for n in batch]
    assert flat == sorted(flat) and len(batches) == 3


def test_distilled_documents_keep_the_curated_order_and_mix(tiny_model: Path, monkeypatch):
    import finescope_core.distill as module

    monkeypatch.setattr(module, "generate", lambda model, tokenizer, prompts, n, device: [
        ("It equals four, since 2 + 2 = 4.", False), ("", False)][: len(prompts)])
    rows = [
        {"doc_id": "a", "text": "Q: 2 plus 2?\nA: It is 4.", "prompt": "Q: 2 plus 2?", "response": "It is 4."},
        {"doc_id": "b", "text": "A plain passage about the heart.", "prompt": None, "response": None},
        {"doc_id": "c", "text": "Q: 3 plus 3?\nA: It is 6.", "prompt": "Q: 3 plus 3?", "response": "It is 6."},
    ]
    out, info = distill_documents(tiny_model, rows, DistillConfig(generation_batch=2))
    assert [r["doc_id"] for r in out] == ["a", "b", "c"]
    assert out[0]["text"] == "Q: 2 plus 2?\nA: It equals four, since 2 + 2 = 4." and out[0]["kept"] == "rewrite"
    assert out[1]["text"] == rows[1]["text"] and out[1]["reject_reason"] == "not_rewritten"
    assert out[2]["text"] == rows[2]["text"] and out[2]["reject_reason"] == "empty"
    assert info == {"n_docs": 3, "rewritten": 2, "accepted": 1, "acceptance_rate": 0.5, "rejected": {"empty": 1}}
