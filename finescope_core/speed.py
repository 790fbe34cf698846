"""Forward throughput of several models, timed alternately in one process.

Timing each model at a different moment (in its own eval stage) lets the machine's load decide the comparison: a
model with the exact shapes of another can read half as fast. Rounds that visit every model in turn expose all of
them to the same conditions, and the median over rounds drops the outliers.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel

from finescope_core.models import load_model

SHAPE = (4, 128)  # fixed (batch, tokens): every model is timed on equal work


def alternating_throughput(folders: dict[str, Path], device: str = "cpu", dtype: str = "float32",
                           rounds: int = 5, seed: int = 0, shape: tuple[int, int] = SHAPE,
                           all_logits: bool = False) -> dict[str, float]:
    """Tokens per second of each model's forward on one fixed batch of ``shape`` (batch, tokens): median of
    ``rounds`` rounds that time every model once each, after one warm-up round.

    By default only the last position's logits are computed (like generation's prefill), so the figure tracks the
    model's body, which pruning shrinks, rather than the vocabulary projection, which it leaves alone;
    ``all_logits`` times the whole forward of a training or scoring pass instead.
    """
    models = {label: load_model(folder, device, dtype) for label, folder in folders.items()}
    batch, tokens = shape
    generator = torch.Generator().manual_seed(seed)
    vocab = min(m.get_input_embeddings().num_embeddings for m in models.values())
    input_ids = torch.randint(vocab, (batch, tokens), generator=generator)
    times: dict[str, list[float]] = {label: [] for label in models}
    for round_ in range(rounds + 1):
        for label, model in models.items():
            elapsed = _timed_forward(model, input_ids.to(model.device), 0 if all_logits else 1)
            if round_:
                times[label].append(elapsed)
    return {label: batch * tokens / statistics.median(runs) for label, runs in times.items()}


def _timed_forward(model: PreTrainedModel, input_ids: torch.Tensor, logits_to_keep: int) -> float:
    _synchronize(model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        model(input_ids=input_ids, logits_to_keep=logits_to_keep, use_cache=False)
    _synchronize(model.device)
    return time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that wall-clock timings on an accelerator are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
