from pathlib import Path

import pytest
import torch

from finescope_core.config import DistillConfig
from finescope_core.distill import chat_prompt, final_answer, rejection_reason, self_distill
from finescope_core.finetune import IGNORE, encode_example, finetune
from finescope_core.models import load_model, load_tokenizer


def test_final_answer_forms():
    assert final_answer("so the area is \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert final_answer("Total: 3 + 4 = 7\n#### 1,007") == "1007"
    assert final_answer("no final answer here") is None
    assert final_answer("C. Right coronary artery\nExplanation: ...") == "C"
    assert final_answer("(B) Candida") == "B"
    assert final_answer("A patient with fever") is None


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
    ],
)
def test_rejection_reasons(rewrite, truncated, reference, reason):
    prompt = "What is the dose of aspirin for chest pain?"
    assert rejection_reason(prompt, reference, rewrite, truncated) == reason


def test_response_only_loss_masks_the_prompt(tiny_model: Path):
    tokenizer = load_tokenizer(tiny_model)
    ids, labels = encode_example(tokenizer, {"prompt": "Name a vitamin.", "response": "Vitamin C."}, 128)
    answer = tokenizer("Vitamin C." + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert labels[-len(answer):] == answer == ids[-len(answer):]
    assert set(labels[: -len(answer)]) == {IGNORE}
    ids, labels = encode_example(tokenizer, {"text": "plain passage", "prompt": None, "response": None}, 128)
    assert labels == ids


def test_a_long_prompt_loses_its_end_so_the_response_is_still_learned(tiny_model: Path):
    tokenizer = load_tokenizer(tiny_model)
    instruction, response = "Write a function to add two numbers.", "def add(a, b):\n    return a + b"
    prompt = instruction + " " + " ".join(f"assert add({i}, 1) == {i + 1}" for i in range(60))
    ids, labels = encode_example(tokenizer, {"prompt": prompt, "response": response}, 96)
    answer = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 96 and labels[-len(answer):] == answer == ids[-len(answer):]
    shown = tokenizer.decode(ids[: -len(answer)])
    assert shown.startswith(chat_prompt(tokenizer, prompt).split(instruction)[0] + instruction)  # header, instruction
    assert shown.endswith(chat_prompt(tokenizer, "x").rsplit("x", 1)[1])  # and the answer header
    assert "assert add(59, 1)" not in shown


EXAMPLES = [{"prompt": f"Question {i}: what is {i} plus {i}?", "response": f"It is {2 * i}.", "text": ""}
            for i in range(8)]


def loss_on(model_dir: Path, examples) -> float:
    from finescope_core.finetune import collate

    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir)
    batch = collate([encode_example(tokenizer, e, 64) for e in examples], tokenizer.pad_token_id)
    with torch.no_grad():
        return float(model(**batch).loss)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_finetune_lowers_the_loss_and_saves_a_plain_model(tiny_model: Path, tmp_path: Path, method: str):
    cfg = DistillConfig(method=method, lr=5e-3, epochs=4, batch_size=4, grad_accum=1, max_length=64)
    report = finetune(tiny_model, EXAMPLES, tmp_path / "out", cfg, tmp_path / "ckpt")
    assert report["steps"] == 8
    assert not list((tmp_path / "out").glob("adapter_*"))  # LoRA merged: a stock folder
    assert loss_on(tmp_path / "out", EXAMPLES) < loss_on(tiny_model, EXAMPLES)


def test_finetune_resumes_from_its_checkpoint(tiny_model: Path, tmp_path: Path, monkeypatch):
    cfg = DistillConfig(lr=5e-3, epochs=4, batch_size=4, grad_accum=1, max_length=64)
    straight = finetune(tiny_model, EXAMPLES, tmp_path / "a", cfg, tmp_path / "ckpt-a", checkpoint_every=3)

    import finescope_core.finetune as module

    original_collate, calls = module.collate, {"n": 0}

    def crash_after_four_steps(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return original_collate(*args, **kwargs)

    monkeypatch.setattr(module, "collate", crash_after_four_steps)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_model, EXAMPLES, tmp_path / "b", cfg, tmp_path / "ckpt-b", checkpoint_every=3)
    assert (tmp_path / "ckpt-b" / "state.pt").exists()
    monkeypatch.setattr(module, "collate", original_collate)
    resumed = finetune(tiny_model, EXAMPLES, tmp_path / "b", cfg, tmp_path / "ckpt-b", checkpoint_every=3)
    assert resumed["last_loss"] == pytest.approx(straight["last_loss"], rel=1e-4)
    assert not (tmp_path / "ckpt-b" / "state.pt").exists()


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
