"""Self-data distillation: the unpruned model rewrites each curated answer in its own words (SDFT-style).

Training the pruned model on its teacher's own phrasing keeps the targets inside the original model's output
distribution, which recovers more and forgets less than training on foreign text. A rewrite is rejected, and the
original answer kept, when it is empty, echoes the prompt, was cut off, talks about the reference instead of
answering, or (when the reference has a final answer) reaches a different final answer.
"""

from __future__ import annotations

import re
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


def final_answer(text: str) -> str | None:
    """The final answer, if the text states one: a \\boxed{...} value, a GSM8K-style '#### x', or the option letter
    a multiple-choice answer starts with ('C. ...', '(C) ...')."""
    option = re.match(r"\s*\(?([A-J])[.)](\s|$)", text)
    if option:
        return option.group(1)
    boxed = re.findall(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}", text)
    if boxed:
        return re.sub(r"\s+", "", boxed[-1])
    marked = re.findall(r"####\s*([^\n]+)", text)
    return re.sub(r"[\s,$]", "", marked[-1]) if marked else None


def rejection_reason(prompt: str, reference: str, rewrite: str, truncated: bool) -> str | None:
    """Why a rewrite must not replace the reference, or None if it may."""
    text = rewrite.strip()
    if not text:
        return "empty"
    if truncated:
        return "truncated"
    if text.lower() in prompt.lower() or (len(prompt) > 20 and prompt.strip().lower() in text.lower()):
        return "echo"
    lowered = text.lower()
    if any(phrase in lowered for phrase in BANNED) or lowered.startswith("your turn"):
        return "meta"
    expected = final_answer(reference)
    if expected is not None and final_answer(text) != expected:
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
    """Rewrite each (prompt, response) with the teacher; returns rows with both texts and which one is kept."""
    tokenizer = load_tokenizer(teacher_dir)
    model = load_model(teacher_dir, device)
    rows = []
    for start in progress(range(0, len(examples), cfg.generation_batch), "self-distillation"):
        chunk = examples[start : start + cfg.generation_batch]
        prompts = [chat_prompt(tokenizer, TEMPLATE.format(prompt=e["prompt"], response=e["response"]), SYSTEM)
                   for e in chunk]
        completions = generate(model, tokenizer, prompts, cfg.max_new_tokens, device)
        for example, (rewrite, truncated) in zip(chunk, completions):
            reason = rejection_reason(example["prompt"], example["response"], rewrite, truncated)
            rows.append({**example, "original": example["response"], "rewrite": rewrite.strip(),
                         "kept": "original" if reason else "rewrite", "reject_reason": reason or "",
                         "response": example["response"] if reason else rewrite.strip()})
    return rows
