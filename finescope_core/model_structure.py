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


def output_norm(layer: torch.nn.Module, block: str) -> torch.nn.Module | None:
    """The normalisation ``layer`` applies to its ``block``'s output ("self_attn" or "mlp") before adding it to the
    residual stream, or None where the output is added as it is. Gemma 2 and 3 wrap each block in two norms (their
    ``pre_feedforward_layernorm`` marks it), and there ``post_attention_layernorm`` follows the attention; in Llama,
    Qwen and Mistral the same name is the norm before the MLP."""
    if not hasattr(layer, "pre_feedforward_layernorm"):
        return None
    return layer.post_attention_layernorm if block == "self_attn" else layer.post_feedforward_layernorm


@contextlib.contextmanager
def truncated(model: torch.nn.Module, n_keep: int) -> Iterator[None]:
    """Run only the first ``n_keep`` decoder blocks: later layers do not affect the activations of earlier ones."""
    layers = decoder_layers(model)
    model.model.layers = layers[:n_keep]
    try:
        yield
    finally:
        model.model.layers = layers
