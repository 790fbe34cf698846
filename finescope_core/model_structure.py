"""Where a transformers causal LM keeps its decoder blocks, and running only the first few of them.

Shared by the activation dump, the coordinate probes and the pruner, so that none of them imports another for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a transformers causal LM (Llama, Qwen2, Mistral, Gemma... all use model.model.layers)."""
    try:
        return model.model.layers
    except AttributeError:
        raise ValueError(f"unsupported architecture {type(model).__name__}: no model.model.layers") from None


@contextlib.contextmanager
def truncated(model: torch.nn.Module, n_keep: int) -> Iterator[None]:
    """Run only the first ``n_keep`` decoder blocks: later layers do not affect the activations of earlier ones."""
    layers = decoder_layers(model)
    model.model.layers = layers[:n_keep]
    try:
        yield
    finally:
        model.model.layers = layers
