"""Recovery training speed: the plain float32 distillation step against the library's, timed alternately.

Usage: .venv/bin/python bench/train_speed.py [--domain medicine] [--steps 10] [--quick]
The demo config curates and prunes SmolLM2 for --domain (cached under --output). Each variant trains its own copy of
the pruned model toward the unpruned one on the same windows of curated text; every round runs one step of each, in
turn, on one thread, so the machine's load hits all of them alike. Variants:
- fp32: full logits of teacher and student in float32, a plain autograd KL, every weight trained (the step as it
  was first written);
- bf16: the same under bfloat16 autocast, with a bfloat16 teacher and the vocabulary matrices frozen;
- fused_fp32, fused_bf16: the library's step (``recover.Distiller``): head and loss fused in chunks, vocabulary
  matrices frozen; in float32, and in bfloat16 (the default).
Quality: each variant's held-out KL to the teacher (float32, on windows of the domain's eval documents) after its
steps. "best" is the fastest variant whose held-out KL is within 2% of fp32's. Then the best variant is timed on 1 and
2 threads, alternately, and the teacher's body forward alone (the share of a step that caching its outputs for
repeated windows would save).
Last line: {"fp32_tok_s": x, "best_tok_s": x, "best": "...", "speedup": x, "tok_s": {...}, "heldout_kl": {...},
"threads": {"1": x, "2": x}, "teacher_share": x}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from common import REPO, curated_refs

from finescope_core import stages, storage
from finescope_core.config import RecoverConfig, load_config
from finescope_core.evaluate import read_docs
from finescope_core.models import load_model, load_tokenizer
from finescope_core.recover import Distiller, reference_loss, trainable_student, training_windows


class PlainDistiller(Distiller):
    """The unfused step: full student and teacher logits, and KL through plain autograd."""

    def step(self, windows: torch.Tensor) -> float:
        inputs, labels = windows[:, :-1], windows[:, 1:].reshape(-1)
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.cfg.precision == "bfloat16"
                    else contextlib.nullcontext())
        with torch.no_grad(), autocast:
            teacher = self.teacher(input_ids=inputs, use_cache=False).logits.flatten(0, 1)
        with autocast:
            student = self.student(input_ids=inputs, use_cache=False).logits.flatten(0, 1)
        loss = reference_loss(student, teacher, labels, self.cfg.temperature, self.cfg.lm_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()


VARIANTS = {  # name -> (step, precision, whether the vocabulary matrices train too)
    "fp32": (PlainDistiller, "float32", True), "bf16": (PlainDistiller, "bfloat16", False),
    "fused_fp32": (Distiller, "float32", False), "fused_bf16": (Distiller, "bfloat16", False),
}


def heldout_kl(student, teacher, windows: torch.Tensor) -> float:
    """Mean KL(teacher || student) per position, in float32."""
    with torch.no_grad():
        s = student(input_ids=windows[:, :-1], use_cache=False).logits.flatten(0, 1)
        t = teacher(input_ids=windows[:, :-1], use_cache=False).logits.flatten(0, 1)
    return float(reference_loss(s, t, windows[:, 1:].reshape(-1), 1.0, 0.0))


def teacher_seconds(trainer: Distiller, batches: list[torch.Tensor]) -> float:
    """Median seconds of the teacher's part of a step: what caching its outputs for repeated windows would save."""
    times = []
    for batch in batches:
        start = time.perf_counter()
        with torch.no_grad():
            trainer.teacher(input_ids=batch[:, :-1], use_cache=False, logits_to_keep=1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    parser.add_argument("--steps", type=int, default=10, help="steps of each variant (the first is a warm-up)")
    parser.add_argument("--quick", action="store_true", help="4 steps")
    args = parser.parse_args()
    steps = 4 if args.quick else args.steps
    torch.set_num_threads(1)
    config = load_config(args.config, {"output": args.output})
    model_ref, corpus, refs = curated_refs(config, args.domain)
    pruned = stages.pruned(config.output, model_ref, refs["curated"], "curated.parquet", config.prune, "cpu")
    student_dir, teacher_dir = stages.model_folder(pruned), model_ref["uri"]
    tokenizer = load_tokenizer(teacher_dir)
    cfg = RecoverConfig()
    texts = storage.read_parquet(storage.join(refs["curated"]["uri"], "curated.parquet"), ["text"])["text"]
    windows = training_windows(tokenizer, texts.to_pylist(), cfg.sequence_tokens)
    batches = [windows[torch.arange(i * cfg.batch_sequences, (i + 1) * cfg.batch_sequences) % len(windows)]
               for i in range(steps)]
    heldout = training_windows(tokenizer, [d.text for d in read_docs(corpus["eval"], args.domain, 40)],
                               cfg.sequence_tokens)[:16]
    teachers = {precision: load_model(teacher_dir, dtype=precision) for precision in ("float32", "bfloat16")}
    trainers = {}
    for name, (kind, precision, train_vocabulary) in VARIANTS.items():
        variant = cfg.model_copy(update={"precision": precision})
        student = trainable_student(load_model(student_dir), variant)
        student.get_input_embeddings().weight.requires_grad_(train_vocabulary)
        trainers[name] = kind(student, teachers[precision], variant, steps, "cpu")
    start_kl = heldout_kl(trainers["fp32"].student, teachers["float32"], heldout)
    times = timed_rounds(trainers, batches)
    tokens = cfg.batch_sequences * cfg.sequence_tokens
    tok_s = {name: tokens / statistics.median(runs) for name, runs in times.items()}
    kl = {name: heldout_kl(t.student, teachers["float32"], heldout) for name, t in trainers.items()}
    keeps = [name for name in VARIANTS if kl[name] <= kl["fp32"] * 1.02]
    best = max(keeps, key=tok_s.get)
    threads = timed_rounds({"1": trainers[best], "2": trainers[best]}, batches[: max(3, steps // 2)],
                           {"1": 1, "2": 2})
    thread_tok_s = {n: tokens / statistics.median(runs) for n, runs in threads.items()}
    teacher_share = teacher_seconds(trainers[best], batches) / statistics.median(times[best])

    print(f"{args.domain}: {steps} steps of {tokens} tokens per variant, alternating; held-out KL before: "
          f"{start_kl:.4f}")
    print(f"{'variant':<12}{'tok/s':>8}{'x fp32':>8}{'held-out KL':>13}")
    for name in VARIANTS:
        print(f"{name:<12}{tok_s[name]:>8.0f}{tok_s[name] / tok_s['fp32']:>8.2f}{kl[name]:>13.4f}")
    print(f"best: {best}; threads 1: {thread_tok_s['1']:.0f} tok/s, 2: {thread_tok_s['2']:.0f} tok/s; the teacher's "
          f"body is {teacher_share:.0%} of its step")
    print(json.dumps({"fp32_tok_s": round(tok_s["fp32"], 1), "best_tok_s": round(tok_s[best], 1), "best": best,
                      "speedup": round(tok_s[best] / tok_s["fp32"], 2),
                      "tok_s": {k: round(v, 1) for k, v in tok_s.items()},
                      "heldout_kl": {"start": round(start_kl, 4), **{k: round(v, 4) for k, v in kl.items()}},
                      "threads": {k: round(v, 1) for k, v in thread_tok_s.items()},
                      "teacher_share": round(teacher_share, 3)}))


if __name__ == "__main__":
    main()
