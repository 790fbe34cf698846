"""Recovery training speed: the plain float32 distillation step against the library's, timed alternately.

Usage: .venv/bin/python bench/train_speed.py [--domain medicine] [--steps 8] [--quality-steps 32] [--quick]
The demo config curates and prunes SmolLM2 for --domain (cached under --output). Variants of one recovery step (the
library's default loss, a mix of KL and LM loss, on windows of the curated text):
- fp32: full logits of teacher and student in float32, the loss (``recover.reference_loss``) through plain autograd,
  every weight trained (the step as it was first written);
- bf16: the same under bfloat16 autocast, with a bfloat16 teacher and the vocabulary matrices frozen;
- fused_fp32, fused_bf16: the library's step (``recover.Distiller``): head and loss fused in chunks, vocabulary
  matrices frozen; in float32, and in bfloat16 (the default where the CPU computes bfloat16 natively).
The bfloat16 variants run only on a CPU with native bfloat16 (AVX-512 BF16, AMX, Arm BF16); elsewhere torch emulates
it, tens of times slower, and recover.precision=auto trains in float32.
Speed: each variant trains its own copy for --steps steps on one thread, the variants taking turns every step so the
machine's load hits all alike (the first round is a warm-up). Faithfulness: each variant's gradient at the pruned
weights, on two batches, against fp32's (cosine over the weights all variants train). The fastest variant is timed
on 1 and 2 threads, alternately, and the teacher's body forward alone is timed (its share of a step). Teacher cache:
the library's step trains two fresh copies over the config's whole budget (recover.tokens, its window order), one
keeping the teacher's states of windows seen (``recover.teacher_cache_gb``, the default) and one computing them every
step, alternating steps; --quick trains half the budget. Quality: fp32 and the fastest each recover a fresh copy for
--quality-steps steps (the library's schedule and window order), alternating, and are scored by held-out bits per
byte on the domain's eval documents. "best" is the fastest if it wins back at least 95% of the bits per byte that
fp32 wins back, else fp32.
Last line: {"fp32_tok_s": x, "best_tok_s": x, "best": "...", "speedup": x, "tok_s": {...}, "grad_cosine": {...},
"threads": {"1": x, "2": x}, "teacher_share": x, "teacher_cache": {"tok_s": x, "uncached_tok_s": x, "speedup": x,
"epochs": x}, "heldout_bpb": {"pruned": x, "fp32": x, FASTEST: x}}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time

import torch
from common import REPO, curated_refs

from finescope_core import stages, storage
from finescope_core.config import RecoverConfig, load_config
from finescope_core.evaluate import document_scores, read_docs
from finescope_core.formats import CURATED_FILE
from finescope_core.models import load_model, load_tokenizer
from finescope_core.precision import bfloat16_is_native
from finescope_core.recover import (
    Distiller,
    plan_steps,
    reference_loss,
    trainable_student,
    training_windows,
    window_order,
)


class PlainDistiller(Distiller):
    """The unfused step: full student and teacher logits, and KL through plain autograd."""

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        inputs, labels = windows[:, :-1], windows[:, 1:].reshape(-1)
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.cfg.precision == "bfloat16"
                    else contextlib.nullcontext())
        with torch.no_grad(), autocast:
            teacher = self.teacher(input_ids=inputs, use_cache=False).logits.flatten(0, 1)
        with autocast:
            student = self.student(input_ids=inputs, use_cache=False).logits.flatten(0, 1)
        return reference_loss(student, teacher, labels, self.cfg.temperature, self.cfg.lm_weight)


VARIANTS = {  # name -> (step, precision, whether the vocabulary matrices train too)
    "fp32": (PlainDistiller, "float32", True), "bf16": (PlainDistiller, "bfloat16", False),
    "fused_fp32": (Distiller, "float32", False), "fused_bf16": (Distiller, "bfloat16", False),
}


def gradient(trainer: Distiller, batch: torch.Tensor, names: list[str]) -> torch.Tensor:
    """The trainer's step gradient on ``batch`` over the named weights, without updating them."""
    trainer.loss(batch).backward()
    weights = dict(trainer.student.named_parameters())
    flat = torch.cat([weights[name].grad.flatten() for name in names])
    trainer.optimizer.zero_grad(set_to_none=True)
    return flat.double()


def heldout_bpb(student, tokenizer, docs, max_tokens: int = 128) -> float:
    """Bits per byte of the documents' first ``max_tokens`` tokens, in float32."""
    scores = document_scores(student.eval(), tokenizer, docs, max_tokens, 8)
    return sum(scores["nll"]) / sum(scores["bytes"]) / math.log(2)


def teacher_seconds(trainer: Distiller, batches: list[torch.Tensor]) -> float:
    """Median seconds of the teacher's part of a step: what caching its outputs for repeated windows would save."""
    times = []
    for batch in batches:
        start = time.perf_counter()
        with torch.no_grad():
            trainer.teacher(input_ids=batch[:, :-1], use_cache=False, logits_to_keep=1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def teacher_cache_speed(make_trainer, windows: torch.Tensor, cfg: RecoverConfig, steps: int) -> dict:
    """Tokens per second over ``steps`` of the budget's window order, with the teacher's states kept and computed
    every step, the two taking turns every step (the first round a warm-up)."""
    order = window_order(len(windows), steps, cfg.batch_sequences, cfg.seed)
    trainers = {"kept": make_trainer(cfg, steps), "computed": make_trainer(cfg.model_copy(update={
        "teacher_cache_gb": 0.0}), steps)}
    times = timed_rounds(trainers, [windows[order[step]] for step in range(steps)])
    tokens = cfg.batch_sequences * cfg.sequence_tokens
    tok_s = {name: tokens * len(runs) / sum(runs) for name, runs in times.items()}
    return {"tok_s": round(tok_s["kept"], 1), "uncached_tok_s": round(tok_s["computed"], 1),
            "speedup": round(tok_s["kept"] / tok_s["computed"], 3),
            "epochs": round(steps * cfg.batch_sequences / len(windows), 2)}


def timed_rounds(trainers: dict[str, Distiller], batches: list[torch.Tensor], threads: dict[str, int] | None = None):
    """Per trainer, the seconds of each step after the first (a warm-up), the trainers taking turns every step."""
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for index, batch in enumerate(batches):
        for name, trainer in trainers.items():
            torch.set_num_threads((threads or {}).get(name, 1))
            start = time.perf_counter()
            trainer.step(batch)
            if index:
                times[name].append(time.perf_counter() - start)
    torch.set_num_threads(1)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-recovery"))
    parser.add_argument("--domain", default="medicine")
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each variant (the first is a warm-up)")
    parser.add_argument("--quality-steps", type=int, default=32, help="steps of the fp32-against-fastest recoveries")
    parser.add_argument("--quick", action="store_true", help="4 timed steps, 4 quality steps")
    args = parser.parse_args()
    steps, quality_steps = (4, 4) if args.quick else (args.steps, args.quality_steps)
    torch.set_num_threads(1)
    config = load_config(args.config, {"output": args.output})
    model_ref, corpus, refs = curated_refs(config, args.domain)
    pruned = stages.pruned(config.output, model_ref, refs["curated"], CURATED_FILE, config.prune, "cpu")
    student_dir, teacher_dir = stages.model_folder(pruned), model_ref["uri"]
    tokenizer = load_tokenizer(teacher_dir)
    cfg = config.recover
    texts = storage.read_parquet(storage.join(refs["curated"]["uri"], CURATED_FILE), ["text"])["text"]
    windows = training_windows(tokenizer, texts.to_pylist(), cfg.sequence_tokens)
    batches = [windows[torch.arange(i * cfg.batch_sequences, (i + 1) * cfg.batch_sequences) % len(windows)]
               for i in range(steps)]
    native = bfloat16_is_native("cpu")
    teachers = {precision: load_model(teacher_dir, dtype=precision) for precision in ("float32", "bfloat16")}

    def trainer(name: str, steps_planned: int, base: RecoverConfig = cfg) -> Distiller:
        kind, precision, train_vocabulary = VARIANTS[name]
        variant = base.model_copy(update={"precision": precision})
        student = trainable_student(load_model(student_dir), variant)
        student.get_input_embeddings().weight.requires_grad_(train_vocabulary)
        return kind(student, teachers[precision], variant, steps_planned, "cpu")

    variants = [name for name, (_, precision, _) in VARIANTS.items() if precision == "float32" or native]
    trainers = {name: trainer(name, steps) for name in variants}
    shared = [n for n, p in trainers["fused_fp32"].student.named_parameters() if p.requires_grad]
    cosine = {}
    for name, t in trainers.items():
        pairs = [(gradient(t, b, shared), gradient(trainers["fp32"], b, shared)) for b in batches[:2]]
        cosine[name] = min(float(torch.nn.functional.cosine_similarity(g, f, 0)) for g, f in pairs)
    times = timed_rounds(trainers, batches)
    tokens = cfg.batch_sequences * cfg.sequence_tokens
    tok_s = {name: tokens / statistics.median(runs) for name, runs in times.items()}
    fastest = max(variants, key=tok_s.get)
    threads = timed_rounds({"1": trainers[fastest], "2": trainers[fastest]}, batches[: max(3, steps // 2)],
                           {"1": 1, "2": 2})
    thread_tok_s = {n: tokens / statistics.median(runs) for n, runs in threads.items()}
    teacher_share = teacher_seconds(trainers[fastest], batches) / statistics.median(times[fastest])
    del trainers
    budget_steps = plan_steps(cfg) // (2 if args.quick else 1)
    library_step = "fused_bf16" if native else "fused_fp32"  # what recover.precision=auto trains with
    cache = teacher_cache_speed(lambda base, n: trainer(library_step, n, base), windows, cfg, budget_steps)

    docs = read_docs(corpus["eval"], args.domain, 60)
    order = window_order(len(windows), quality_steps, cfg.batch_sequences, cfg.seed)
    recovering = {name: trainer(name, quality_steps) for name in ("fp32", fastest)}
    for step in range(quality_steps):
        for t in recovering.values():
            t.step(windows[order[step]])
    bpb = {"pruned": heldout_bpb(load_model(student_dir), tokenizer, docs),
           **{name: heldout_bpb(t.student, tokenizer, docs) for name, t in recovering.items()}}
    kept = (bpb["pruned"] - bpb[fastest]) / (bpb["pruned"] - bpb["fp32"])
    best = fastest if kept >= 0.95 else "fp32"

    print(f"{args.domain}: {steps} steps of {tokens} tokens per variant, alternating"
          + ("" if native else "; bfloat16 variants skipped: this CPU has no native bfloat16 (emulated, it is tens "
             "of times slower), so recover.precision=auto trains in float32 here"))
    print(f"{'variant':<12}{'tok/s':>8}{'x fp32':>8}{'grad cosine':>13}")
    for name in variants:
        print(f"{name:<12}{tok_s[name]:>8.0f}{tok_s[name] / tok_s['fp32']:>8.2f}{cosine[name]:>13.4f}")
    print(f"fastest: {fastest}; threads 1: {thread_tok_s['1']:.0f} tok/s, 2: {thread_tok_s['2']:.0f} tok/s; the "
          f"teacher's body is {teacher_share:.0%} of its step")
    print(f"teacher cache over {budget_steps} steps ({cache['epochs']} passes over {len(windows)} windows): "
          f"{cache['tok_s']:.0f} tok/s kept, {cache['uncached_tok_s']:.0f} computed every step (x{cache['speedup']})")
    print(f"held-out bpb after {quality_steps} steps: " + ", ".join(f"{k} {v:.4f}" for k, v in bpb.items())
          + f"; {fastest} wins back {kept:.0%} of what fp32 does, so best: {best}")
    print(json.dumps({"fp32_tok_s": round(tok_s["fp32"], 1), "best_tok_s": round(tok_s[best], 1), "best": best,
                      "speedup": round(tok_s[best] / tok_s["fp32"], 2),
                      "tok_s": {k: round(v, 1) for k, v in tok_s.items()},
                      "grad_cosine": {k: round(v, 4) for k, v in cosine.items()},
                      "threads": {k: round(v, 1) for k, v in thread_tok_s.items()},
                      "teacher_share": round(teacher_share, 3), "teacher_cache": cache,
                      "heldout_bpb": {k: round(v, 4) for k, v in bpb.items()}}))


if __name__ == "__main__":
    main()
