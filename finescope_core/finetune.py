"""Recovery fine-tuning of the pruned model: LoRA (merged afterwards) or full, loss on response tokens only.

Training state is checkpointed to a folder every few optimiser steps, so a killed run resumes from its last
checkpoint instead of starting over. The result is a plain transformers folder.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch

from finescope_core.config import DistillConfig
from finescope_core.distill import chat_prompt
from finescope_core.models import load_model, load_tokenizer
from finescope_core.progress import progress

IGNORE = -100
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def encode_example(tokenizer, example: dict, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels: a (prompt, response) pair learns only the response; a plain text learns every token.

    A prompt too long to leave the response room loses its end, down to half of ``max_length``: otherwise a long
    prompt (a task with its test cases) would fill the window and the example would teach nothing.
    """
    if example.get("prompt") and example.get("response"):
        answer_ids = tokenizer(example["response"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        room = max(max_length - len(answer_ids), max_length // 2)
        prompt_ids = prompt_within(tokenizer, example["prompt"], room)
        ids = (prompt_ids + answer_ids)[:max_length]
        labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    else:
        ids = tokenizer(example["text"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"][:max_length]
        labels = list(ids)
    return ids, labels


def prompt_within(tokenizer, prompt: str, room: int) -> list[int]:
    """The chat-formatted prompt's token ids, its user text shortened (from the end) to fit ``room`` tokens."""
    ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    if len(ids) <= room:
        return ids
    user_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    keep = max(len(user_ids) - (len(ids) - room), 0)
    shortened = tokenizer(chat_prompt(tokenizer, tokenizer.decode(user_ids[:keep])), add_special_tokens=False)
    return shortened["input_ids"][-room:]  # re-encoding may drift by a token; the answer header must stay


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id)
    labels = torch.full((len(pairs), width), IGNORE)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(pairs):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def wrap_for_training(model, cfg: DistillConfig):
    if cfg.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
    return get_peft_model(model, lora)


def finetune(student_dir: str | Path, examples: Sequence[dict], out_dir: Path, cfg: DistillConfig,
             checkpoint_dir: Path, device: str = "cpu", checkpoint_every: int = 10) -> dict:
    """Fine-tune ``student_dir`` on ``examples`` and save the (merged) model to ``out_dir``."""
    if not examples:
        raise ValueError("no fine-tuning examples: the curated set is empty")
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(student_dir)
    model = wrap_for_training(load_model(student_dir, device), cfg)
    model.train()
    order = [i for _ in range(cfg.epochs) for i in random.Random(cfg.seed).sample(range(len(examples)), len(examples))]
    micro_batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    total_steps = -(-len(micro_batches) // cfg.grad_accum)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    encoded = [encode_example(tokenizer, e, cfg.max_length) for e in examples]
    state_file = checkpoint_dir / "state.pt"
    first_step, losses = 0, []
    if state_file.exists():
        state = torch.load(state_file, weights_only=False)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        first_step, losses = state["step"], state["losses"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for step in progress(range(first_step, total_steps), "fine-tuning (steps)"):
        group = micro_batches[step * cfg.grad_accum : (step + 1) * cfg.grad_accum]
        for micro in group:
            batch = {k: v.to(device) for k, v in collate([encoded[i] for i in micro], tokenizer.pad_token_id).items()}
            loss = model(**batch, use_cache=False).loss / len(group)
            loss.backward()
            losses.append(loss.item() * len(group))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % checkpoint_every == 0 and step + 1 < total_steps:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            weights = {n: p.detach().cpu() for n, p in model.named_parameters() if n in trainable}
            torch.save({"model": weights, "optimizer": optimizer.state_dict(), "step": step + 1, "losses": losses},
                       checkpoint_dir / "state.tmp")
            (checkpoint_dir / "state.tmp").replace(state_file)
    if cfg.method == "lora":
        model = model.merge_and_unload()
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(out_dir)
    state_file.unlink(missing_ok=True)
    return {"steps": total_steps, "examples": len(examples), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "method": cfg.method}
