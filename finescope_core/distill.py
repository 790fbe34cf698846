"""Self-data distillation: the unpruned model rewrites each curated answer in its own words (SDFT-style).

Training the pruned model on its teacher's own phrasing keeps the targets inside the original model's output
distribution, which recovers more and forgets less than training on foreign text. A rewrite is rejected, and the
original answer kept, when it is empty, echoes the prompt, was cut off, talks about the reference instead of
answering, or (when the reference has a final answer) reaches a different final answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from finescope_core.config import DistillConfig
from finescope_core.models import load_model, load_tokenizer
from finescope_core.progress import progress

SYSTEM = ("Below is an instruction that describes a task along with a reference answer. "
          "Using the reference answer as a guide, write your own response.")
TEMPLATE = "### Instruction:\n{prompt}\n\n### Reference Answer:\n{response}\n\n### Response:\n"
BANNED = ("reference answer", "your response", "my response", "your own response", "now it's your turn")


def chat_prompt(tokenizer, user: str, system: str | None = None) -> str:
    """The text a chat model sees before answering ``user``; a plain instruction format if it has no template."""
    if tokenizer.chat_template:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return (f"{system}\n\n" if system else "") + f"### Instruction:\n{user}\n\n### Response:\n"


ANSWER_STATEMENT = re.compile(r"\b(?:final |correct )?answer is:?\s*\**\s*([^\n]+?)\**\s*(?:\.\s|\.?$|\n)",
                              re.IGNORECASE)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_answer(text: str) -> str | None:
    """The final answer, if the text states one: the option letter a multiple-choice answer starts with
    ('C. ...', '(C) ...'), a \\boxed{...} value, a GSM8K-style '#### x', or the last 'the answer is x'."""
    option = re.match(r"\s*\(?([A-J])[.)](\s|$)", text)
    if option:
        return option.group(1)
    boxed = re.findall(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}", text)
    if boxed:
        return normalise(boxed[-1])
    marked = re.findall(r"####\s*([^\n]+)", text)
    if marked:
        return normalise(marked[-1])
    stated = ANSWER_STATEMENT.findall(text)
    return normalise(stated[-1]) if stated else None


def normalise(answer: str) -> str:
    """An answer compared loosely: lower case, without spaces, thousands separators, currency signs or a final
    full stop."""
    return re.sub(r"[\s,$]", "", answer).lower().rstrip(".")


def states_answer(rewrite: str, expected: str) -> bool:
    """Whether the rewrite reaches ``expected`` (a :func:`final_answer`): by its own stated final answer, else by
    its last number (for a numeric answer) or by containing the answer (for a text answer)."""
    stated = final_answer(rewrite)
    if stated is not None:
        return stated == expected
    if NUMBER.fullmatch(expected):
        numbers = NUMBER.findall(rewrite)
        return bool(numbers) and normalise(numbers[-1]) == expected
    return expected in normalise(rewrite)


def rejection_reason(prompt: str, reference: str, rewrite: str, truncated: bool) -> str | None:
    """Why a rewrite must not replace the reference, or None if it may.

    A rewrite found inside the prompt is an echo unless it is an answer: it states a final answer (a short
    multiple-choice answer such as 'B. Candida' repeats an option of the prompt), judged as such, or it is part of
    the reference.
    """
    text = rewrite.strip()
    if not text:
        return "empty"
    if truncated:
        return "truncated"
    expected = final_answer(reference)
    reaches = expected is None or states_answer(text, expected)
    lowered, prompt_lowered = text.lower(), prompt.strip().lower()
    copied = lowered in prompt_lowered and final_answer(text) is None and lowered not in reference.lower()
    if copied or (len(prompt_lowered) > 20 and prompt_lowered in lowered):
        return "echo"
    if any(phrase in lowered for phrase in BANNED) or lowered.startswith("your turn"):
        return "meta"
    if not reaches:
        return "wrong_final_answer"
    return None


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, device: str) -> list[tuple[str, bool]]:
    """Greedy completions of a left-padded batch, each with whether it hit the token limit."""
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    completions = []
    for row in out[:, batch["input_ids"].shape[1] :]:
        ended = bool((row == tokenizer.eos_token_id).any())
        completions.append((tokenizer.decode(row, skip_special_tokens=True), not ended))
    return completions


def self_distill(teacher_dir: str | Path, examples: Sequence[dict], cfg: DistillConfig,
                 device: str = "cpu") -> list[dict]:
    """Rewrite each (prompt, response) with the teacher; returns rows, in the examples' order, with both texts and
    which one is kept. Prompts are generated in batches of similar length, which pads less (greedy decoding gives
    the same rewrites in any batch)."""
    tokenizer = load_tokenizer(teacher_dir)
    model = load_model(teacher_dir, device)
    prompts = [chat_prompt(tokenizer, TEMPLATE.format(prompt=e["prompt"], response=e["response"]), SYSTEM)
               for e in examples]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(examples)), key=lengths.__getitem__)  # batches of similar length: little padding
    rows: list[dict | None] = [None] * len(examples)
    for start in progress(range(0, len(order), cfg.generation_batch), "self-distillation"):
        chunk = order[start : start + cfg.generation_batch]
        completions = generate(model, tokenizer, [prompts[i] for i in chunk], cfg.max_new_tokens, device)
        for i, (rewrite, truncated) in zip(chunk, completions):
            example = examples[i]
            reason = rejection_reason(example["prompt"], example["response"], rewrite, truncated)
            rows[i] = {**example, "original": example["response"], "rewrite": rewrite.strip(),
                       "kept": "original" if reason else "rewrite", "reject_reason": reason or "",
                       "response": example["response"] if reason else rewrite.strip()}
    return rows


def rewritable(row: dict) -> bool:
    """A document whose text ends with its answer, so that the answer can be swapped for a rewrite."""
    return bool(row.get("prompt") and row.get("response") and (row.get("text") or "").endswith(row["response"]))


def distill_documents(teacher_dir: str | Path, rows: list[dict], cfg: DistillConfig,
                      device: str = "cpu") -> tuple[list[dict], dict]:
    """Every document, in its order, with its answer replaced by the teacher's accepted rewrite (``text`` too);
    and the counts: rewritten, accepted, acceptance rate, and rejections by reason."""
    limit = len(rows) if cfg.max_examples is None else cfg.max_examples
    chosen = [i for i, row in enumerate(rows[:limit]) if rewritable(row)]
    rewrites = dict(zip(chosen, self_distill(teacher_dir, [rows[i] for i in chosen], cfg, device)))
    out = []
    for i, row in enumerate(rows):
        done = rewrites.get(i)
        if done is None:
            reason = "not_rewritten" if i < limit and not rewritable(row) else "beyond_max_examples"
            out.append({**row, "original": row.get("response"), "rewrite": None, "kept": "original",
                        "reject_reason": reason})
            continue
        head = row["text"][: len(row["text"]) - len(row["response"])]
        out.append({**done, "text": head + done["response"]})
    reasons = Counter(r["reject_reason"] for r in rewrites.values() if r["reject_reason"])
    accepted = sum(r["kept"] == "rewrite" for r in rewrites.values())
    info = {"n_docs": len(rows), "rewritten": len(rewrites), "accepted": accepted,
            "acceptance_rate": accepted / len(rewrites) if rewrites else None,
            "rejected": dict(sorted(reasons.items()))}
    return out, info
