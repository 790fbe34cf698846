"""Recovery of a pruned model: it learns the unpruned model's next-token distribution on plain domain text.

The loss at every position of every window is KL(teacher || student) over the vocabulary (optionally at a
temperature), as Minitron recovers its pruned models, mixed with the plain next-token loss on the same text. Compared
with fine-tuning on answers alone, every token teaches, and the distillation term teaches a whole distribution rather
than one id. The two terms do different work: the KL pulls the student back toward everything the unpruned model
knew (off the domain too), while the next-token term fits the domain's own text beyond the teacher; an even mix
keeps most of both (the README's status has the measurements, made on medicine).

Speed on CPU comes from four choices, measured by ``bench/train_speed.py``:
- bfloat16 autocast for the student and a bfloat16 teacher (float32 master weights and optimiser state);
- the output head and the loss run in one chunked pass (:class:`FusedHeadLoss`): the tokens x vocabulary logits of
  student and teacher only ever exist one chunk at a time, and the vocabulary matrices (which pruning leaves
  untouched) are frozen, so the head's backward is a single product;
- nothing but the last hidden states of the teacher is computed beyond its body;
- those states are kept per window (:class:`TeacherStates`), so a window the text brings back costs no teacher pass.

Training state is checkpointed beside the artifact (any fsspec URI) every few steps, so a killed or retried run on
any worker resumes where the last checkpoint left off. The result is a plain transformers folder.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from finescope_core import storage
from finescope_core.config import RecoverConfig
from finescope_core.models import load_model, load_tokenizer, prefix_token_id
from finescope_core.precision import autocast, resolve_precision
from finescope_core.progress import progress

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHUNK_ROWS = 128  # positions per chunk of the fused head and loss (the logits of one chunk stay in cache)
STATE_FILE = "state.pt"


# -------------------------------------------------------------------------------------------------------- windows


def training_windows(tokenizer, texts: Sequence[str], sequence_tokens: int) -> torch.Tensor:
    """The texts packed, in order, into windows of ``sequence_tokens + 1`` ids (inputs and their next tokens).

    Each text starts with the tokenizer's BOS token (EOS without one), as evaluation scores it. The windows are the
    same for every seed, so a teacher's view of them could be shared; only their order depends on the seed.
    """
    prefix = prefix_token_id(tokenizer)
    stream = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream += [prefix, *ids]
    n = (len(stream) - 1) // sequence_tokens
    if n == 0:
        raise ValueError(f"recovery text holds {len(stream)} tokens, fewer than one window of "
                         f"recover.sequence_tokens={sequence_tokens}; give more text or shorter windows")
    windows = [stream[i * sequence_tokens : (i + 1) * sequence_tokens + 1] for i in range(n)]
    return torch.tensor(windows)


def window_order(n_windows: int, steps: int, per_step: int, seed: int) -> torch.Tensor:
    """Which window each step trains on: passes over all windows, each in its own seeded order."""
    needed, passes = steps * per_step, []
    for epoch in range(math.ceil(steps * per_step / n_windows)):
        passes.append(torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)))
    return torch.cat(passes)[:needed].view(steps, per_step)


def warmup_cosine(warmup_steps: int, steps: int):
    """Learning-rate factor: linear from 0 over ``warmup_steps``, then a cosine to 0 at ``steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress_ = (step - warmup_steps) / max(steps - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * progress_))

    return factor


# ----------------------------------------------------------------------------------------------------------- loss


class FusedHeadLoss(torch.autograd.Function):
    """Mean loss per position of ``(1 - lm_weight) T^2 KL(teacher_T || student_T) + lm_weight CE(student, label)``,
    from the last hidden states and the (frozen) output heads, one chunk of positions at a time.

    The gradient w.r.t. the student's hidden states is computed in the forward pass, where each chunk's logits are
    at hand (:func:`logit_loss_and_grad`), so backward only scales it.
    """

    @staticmethod
    def forward(ctx, hidden, head, teacher_hidden, teacher_head, labels, temperature: float, lm_weight: float,
                dtype: torch.dtype):
        n = hidden.shape[0]
        grad = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
        head_ = head.to(dtype)
        teacher_head_ = teacher_head.to(dtype) if teacher_head is not None else None
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        for lo in range(0, n, CHUNK_ROWS):
            rows = slice(lo, lo + CHUNK_ROWS)
            logits = (hidden[rows].to(dtype) @ head_.T).float()
            teacher_logits = None
            if lm_weight < 1:
                teacher_logits = (teacher_hidden[rows].to(dtype) @ teacher_head_.T).float()
            loss, logit_grad = logit_loss_and_grad(logits, teacher_logits, labels[rows], temperature, lm_weight)
            total += loss
            grad[rows] = (logit_grad.to(dtype) @ head_).to(grad.dtype) / n
        ctx.save_for_backward(grad)
        return (total / n).float()

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None, None, None, None, None


def logit_loss_and_grad(logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                        temperature: float, lm_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's summed loss (float64) and its gradient w.r.t. the student's float32 ``logits``:
    ``(1 - lm_weight) T (p_student_T - p_teacher_T) + lm_weight (p_student - onehot)``.

    Each pass over a positions x vocabulary array costs about as much as the head's product on a CPU, so the arrays
    are few and reused in place: at temperature 1 both terms share the student's softmax, the gradient is built in
    the softmax's memory, and the KL's sum is a dot product (no product array).
    """
    distil = 1 - lm_weight
    temperature = temperature if distil > 0 else 1.0  # the temperature only scales the distillation term
    student_logp = torch.log_softmax(logits if temperature == 1 else logits / temperature, -1)
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    if lm_weight > 0:
        lm_logp = student_logp if temperature == 1 else torch.log_softmax(logits, -1)
        total -= lm_weight * lm_logp.gather(1, labels[:, None]).sum().double()
    if distil > 0:
        teacher_logp = torch.log_softmax(teacher_logits if temperature == 1 else teacher_logits / temperature, -1)
        teacher_p = teacher_logp.exp()
        log_ratio = teacher_logp.sub_(student_logp)
        total += distil * temperature**2 * torch.dot(teacher_p.view(-1), log_ratio.view(-1)).double()
    grad = student_logp.exp_()  # the student's probabilities at the temperature, in place
    if temperature != 1:
        grad.mul_(distil * temperature)
        if lm_weight > 0:
            grad.add_(lm_logp.exp_(), alpha=lm_weight)
    if distil > 0:
        grad.sub_(teacher_p, alpha=distil * temperature)
    if lm_weight > 0:
        grad.scatter_add_(1, labels[:, None], torch.full((len(labels), 1), -lm_weight, device=logits.device))
    return total, grad


def reference_loss(logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                   temperature: float, lm_weight: float) -> torch.Tensor:
    """The same loss from full logits with plain autograd: the definition :class:`FusedHeadLoss` must match."""
    loss = torch.zeros((), dtype=torch.float32)
    if lm_weight < 1:
        student = torch.log_softmax(logits.float() / temperature, -1)
        teacher = torch.log_softmax(teacher_logits.float() / temperature, -1)
        kl = torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")
        loss = loss + (1 - lm_weight) * temperature**2 * kl
    if lm_weight > 0:
        loss = loss + lm_weight * torch.nn.functional.cross_entropy(logits.float(), labels)
    return loss


# ---------------------------------------------------------------------------------------------------------- model


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """The body that gives the last hidden states and the output projection of a causal LM (or its LoRA wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if getattr(base.config, "final_logit_softcapping", None) or getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(base).__name__}: recovery needs logits = hidden @ head.T (no soft-capping, no bias)")
    return base.get_decoder(), head


def trainable_student(model, cfg: RecoverConfig):
    """The student with its vocabulary matrices frozen (pruning leaves them as they were), LoRA-wrapped if asked."""
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(cfg.seed)
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0,
                          target_modules=LORA_TARGETS)
        model = get_peft_model(model, lora)
    base = model.get_base_model() if cfg.method == "lora" else model
    base.get_input_embeddings().weight.requires_grad_(False)
    base.get_output_embeddings().weight.requires_grad_(False)
    model.train()
    return model


class TeacherStates:
    """The teacher body's last hidden states of each window, kept once computed (up to ``capacity_bytes``) for when
    the window comes back: the text repeats when it is shorter than the budget, and its windows are the same in every
    pass. Exact, as the frozen teacher head turns the same states into the same logits; windows past the capacity are
    computed each time they come."""

    def __init__(self, body: torch.nn.Module | None, capacity_bytes: int):
        self.body, self.capacity_bytes = body, capacity_bytes
        self.kept: dict[bytes, torch.Tensor] = {}
        self.kept_bytes = 0
        self.computed = 0  # windows the teacher body ran on

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """The states of ``inputs`` (``batch x tokens`` ids), flattened to ``(batch * tokens) x hidden``."""
        keys = [row.cpu().numpy().tobytes() for row in inputs]
        states = {key: self.kept[key] for key in keys if key in self.kept}
        fresh: dict[bytes, int] = {}  # a window not kept -> its first row in the batch
        for row, key in enumerate(keys):
            if key not in states:
                fresh.setdefault(key, row)
        if fresh:
            rows = list(fresh.values())
            computed = self.body(input_ids=inputs[rows], use_cache=False).last_hidden_state
            self.computed += len(rows)
            for key, window_states in zip(fresh, computed, strict=True):
                states[key] = window_states
                if self.kept_bytes + window_states.nbytes <= self.capacity_bytes:
                    self.kept[key] = window_states.clone()  # not a view holding the whole batch
                    self.kept_bytes += window_states.nbytes
        return torch.stack([states[key] for key in keys]).flatten(0, 1)


class Distiller:
    """One optimiser step of recovery: teacher body (no grad), student body, fused head and loss, clipped update."""

    def __init__(self, student, teacher, cfg: RecoverConfig, steps: int, device: str):
        self.student, self.teacher, self.cfg, self.device = student, teacher, cfg, device
        self.body, self.head = decoder_and_head(student)
        self.teacher_body, self.teacher_head = decoder_and_head(teacher) if teacher is not None else (None, None)
        self.teacher_states = TeacherStates(self.teacher_body, int(cfg.teacher_cache_gb * 2**30))
        self.precision = resolve_precision(cfg.precision, device)
        self.dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float32
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        warmup = round(cfg.warmup * steps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(warmup, steps))

    def step(self, windows: torch.Tensor) -> float:
        """One optimiser step on ``windows``; the loss as a float."""
        return self.update(self.loss(windows))

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        """The recovery loss on ``windows`` (``batch x (sequence_tokens + 1)`` ids), ready for backward."""
        inputs, labels = windows[:, :-1].to(self.device), windows[:, 1:].reshape(-1).to(self.device)
        teacher_hidden = self.teacher_states(inputs) if self.teacher is not None else None
        with autocast(self.device, self.precision):
            hidden = self.body(input_ids=inputs, use_cache=False).last_hidden_state.flatten(0, 1)
        teacher_weight = self.teacher_head.weight if self.teacher is not None else None
        return FusedHeadLoss.apply(hidden, self.head.weight, teacher_hidden, teacher_weight, labels,
                                   self.cfg.temperature, self.cfg.lm_weight, self.dtype)

    def update(self, loss: torch.Tensor) -> float:
        """Backward, clip, optimiser and schedule step; the loss as a float."""
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()

    def state(self, step: int, losses: list[float]) -> dict:
        weights = {n: p.detach().cpu() for n, p in self.student.named_parameters() if p.requires_grad}
        return {"model": weights, "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "step": step, "losses": losses}

    def restore(self, state: dict) -> tuple[int, list[float]]:
        self.student.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        return state["step"], state["losses"]


# ------------------------------------------------------------------------------------------------------ recovery


def plan_steps(cfg: RecoverConfig) -> int:
    """Optimiser steps that supervise at least ``cfg.tokens`` positions."""
    return math.ceil(cfg.tokens / (cfg.sequence_tokens * cfg.batch_sequences))


def checkpoint_steps(steps: int, checkpoints: int) -> set[int]:
    """The steps after which a checkpoint is written: ``checkpoints`` of them, evenly spaced, never the last."""
    return {round(steps * k / (checkpoints + 1)) for k in range(1, checkpoints + 1)} - {0, steps}


def recover(student_dir: str | Path, teacher_dir: str | Path | None, texts: Sequence[str], out_dir: Path,
            cfg: RecoverConfig, checkpoint_uri: str, device: str = "cpu") -> dict:
    """Train ``student_dir`` toward ``teacher_dir`` on ``texts`` and save it to ``out_dir``; returns a summary.

    ``teacher_dir`` may be None only with ``lm_weight=1`` (plain next-token training). The checkpoint folder is
    removed once the model is saved.
    """
    if cfg.lm_weight < 1 and teacher_dir is None:
        raise ValueError("recover.lm_weight < 1 distils from a teacher, and none was given")
    tokenizer = load_tokenizer(student_dir)
    windows = training_windows(tokenizer, texts, cfg.sequence_tokens)
    steps = plan_steps(cfg)
    order = window_order(len(windows), steps, cfg.batch_sequences, cfg.seed)
    student = trainable_student(load_model(student_dir, device), cfg)
    teacher = None
    if cfg.lm_weight < 1:
        teacher = load_model(teacher_dir, device, resolve_precision(cfg.precision, device))
    distiller = Distiller(student, teacher, cfg, steps, device)
    state_uri = storage.join(checkpoint_uri, STATE_FILE)
    first_step, losses = 0, []
    if storage.exists(state_uri):
        first_step, losses = distiller.restore(torch.load(io.BytesIO(storage.read_bytes(state_uri)),
                                                          weights_only=False))
    saves = checkpoint_steps(steps, cfg.checkpoints)
    for step in progress(range(first_step, steps), "recovery (steps)"):
        losses.append(distiller.step(windows[order[step]]))
        if step + 1 in saves:
            buffer = io.BytesIO()
            torch.save(distiller.state(step + 1, losses), buffer)
            storage.write_bytes(state_uri, buffer.getvalue())
    if cfg.method == "lora":
        student = student.merge_and_unload()
    student.eval()
    student.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    storage.remove(checkpoint_uri)
    return {"steps": steps, "supervised_tokens": steps * cfg.batch_sequences * cfg.sequence_tokens,
            "windows": len(windows), "epochs": round(steps * cfg.batch_sequences / len(windows), 3),
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4), "resumed_at": first_step,
            "teacher_windows_computed": distiller.teacher_states.computed,
            "loss": "distillation" if cfg.lm_weight == 0 else ("lm" if cfg.lm_weight == 1 else "mixed"),
            "precision": distiller.precision}
