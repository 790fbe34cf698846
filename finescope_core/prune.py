"""Structured pruning in the manner of LLM-Pruner, calibrated on the curated domain data.

Two kinds of coupled groups per decoder layer, known statically for Llama-family models (no graph tracing):
- a query head: its ``q_proj`` rows and ``o_proj`` columns; the same number is removed inside every kv group, so GQA
  stays valid (each remaining query head keeps its own kv head);
- an MLP channel: a ``gate_proj``/``up_proj`` row and the matching ``down_proj`` column.
A group's importance is first-order Taylor ``sum |w * dL/dw|`` (LLM-Pruner's element-wise ``param_first``), with
gradients accumulated sample by sample over calibration text, or weight magnitude, or random. Every layer keeps the
same widths, so the result is a stock transformers folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_pruning as tp

from finescope_core.activations import decoder_layers
from finescope_core.config import PruneConfig
from finescope_core.models import count_parameters, load_model, load_tokenizer
from finescope_core.progress import progress

SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
PRUNED_WEIGHTS = ("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Plan:
    """Widths to remove in every decoder layer."""

    heads_per_group: int
    mlp_channels: int


def check_supported(model: torch.nn.Module) -> None:
    name = type(model).__name__
    if name not in SUPPORTED:
        raise ValueError(f"unsupported architecture {name}: prune supports {', '.join(SUPPORTED)}")


def attention_shape(model) -> tuple[int, int, int]:
    """(kv heads, query heads per kv head, head_dim)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    n_kv = config.num_key_value_heads
    return n_kv, config.num_attention_heads // n_kv, head_dim


def head_removal(ideal: float, hidden: int, n_kv: int, n_rep: int) -> int:
    """Query heads to remove per kv group: the count nearest ``ideal`` that transformers' configs accept
    (the remaining head count must divide hidden_size) and that leaves every group a head."""
    valid = [h for h in range(n_rep) if hidden % (n_kv * (n_rep - h)) == 0]
    return min(valid, key=lambda h: (abs(h - ideal), h))


def plan_widths(model, ratio: float, prune_heads: bool) -> Plan:
    """Per-layer widths that remove ``ratio`` of all parameters as closely as uniform widths allow."""
    n_kv, n_rep, head_dim = attention_shape(model)
    hidden, n_layers = model.config.hidden_size, len(decoder_layers(model))
    total = count_parameters(model)
    target = ratio * total
    block = sum(p.numel() for p in decoder_layers(model)[0].parameters())
    heads = head_removal(n_rep * target / (n_layers * block), hidden, n_kv, n_rep) if prune_heads else 0
    head_params = 2 * head_dim * hidden  # q rows + o columns (biases are negligible)
    remaining = target - n_layers * n_kv * heads * head_params
    channel_params = 3 * hidden
    intermediate = model.config.intermediate_size
    if remaining > n_layers * (intermediate - 1) * channel_params:
        most = n_layers * (n_kv * heads * head_params + (intermediate - 1) * channel_params) / total
        raise ValueError(f"prune.ratio={ratio} would leave a layer without MLP channels (embeddings and norms are not "
                         f"pruned; this model allows at most {most:.3f}); lower it")
    channels = max(0, round(remaining / (n_layers * channel_params)))
    if heads == 0 and channels == 0:
        raise ValueError(f"prune.ratio={ratio} removes nothing at this model's granularity; raise it")
    return Plan(heads, channels)


def calibration_batches(tokenizer, texts: Sequence[str], n_samples: int, n_tokens: int) -> list[torch.Tensor]:
    """Up to ``n_samples`` sequences of at most ``n_tokens`` tokens (texts are concatenated to fill windows)."""
    if not texts:
        raise ValueError("the calibration set is empty: curate some documents or use prune.calibration=generic")
    encoded = tokenizer([text + tokenizer.eos_token for text in texts], add_special_tokens=False)["input_ids"]
    ids = [token for text_ids in encoded for token in text_ids]
    windows = [ids[i : i + n_tokens] for i in range(0, len(ids), n_tokens)][:n_samples]
    return [torch.tensor([w]) for w in windows if len(w) > 1]


def accumulate_gradients(model, batches: list[torch.Tensor], device: str) -> None:
    """Sum dL/dw over calibration sequences, one at a time (memory: one sequence's activations)."""
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in decoder_layers(model):
        for name, module in layer.named_modules():
            if name.rsplit(".", 1)[-1] in PRUNED_WEIGHTS:
                module.weight.requires_grad_(True)
    for batch in progress(batches, "calibration (Taylor)"):
        batch = batch.to(device)
        model(input_ids=batch, labels=batch, use_cache=False).loss.backward()


def saliency(weight: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Element-wise importance of one weight matrix."""
    if kind == "taylor":
        return (weight.detach() * weight.grad).abs()
    if kind == "magnitude":
        return weight.detach().pow(2)
    return torch.rand(weight.shape, generator=generator)


def group_scores(layer, kind: str, shape: tuple[int, int, int], generator: torch.Generator):
    """Importance of each query head [n_kv, n_rep] and each MLP channel [intermediate] of one layer."""
    n_kv, n_rep, head_dim = shape
    attn, mlp = layer.self_attn, layer.mlp
    q = saliency(attn.q_proj.weight, kind, generator).sum(1).view(n_kv, n_rep, head_dim).sum(2)
    o = saliency(attn.o_proj.weight, kind, generator).sum(0).view(n_kv, n_rep, head_dim).sum(2)
    gate = saliency(mlp.gate_proj.weight, kind, generator).sum(1)
    up = saliency(mlp.up_proj.weight, kind, generator).sum(1)
    down = saliency(mlp.down_proj.weight, kind, generator).sum(0)
    return q + o, gate + up + down


def prune_layer(layer, plan: Plan, head_scores: torch.Tensor, channel_scores: torch.Tensor,
                shape: tuple[int, int, int]) -> dict:
    """Remove the least important query heads (evenly per kv group) and MLP channels of one layer."""
    n_kv, n_rep, head_dim = shape
    attn, mlp = layer.self_attn, layer.mlp
    drop_heads = head_scores.argsort(dim=1)[:, : plan.heads_per_group]
    head_ids = sorted(int(g * n_rep + h) for g in range(n_kv) for h in drop_heads[g])
    rows = [r for h in head_ids for r in range(h * head_dim, (h + 1) * head_dim)]
    channels = sorted(channel_scores.argsort()[: plan.mlp_channels].tolist())
    if rows:
        tp.prune_linear_out_channels(attn.q_proj, rows)
        tp.prune_linear_in_channels(attn.o_proj, rows)
        attn.num_key_value_groups = n_rep - plan.heads_per_group
    if channels:
        tp.prune_linear_out_channels(mlp.gate_proj, channels)
        tp.prune_linear_out_channels(mlp.up_proj, channels)
        tp.prune_linear_in_channels(mlp.down_proj, channels)
    return {"query_heads": head_ids, "mlp_channels": channels}


def prune_model(model_dir: str | Path, calibration_texts: Sequence[str], out_dir: Path, cfg: PruneConfig,
                device: str = "cpu") -> dict:
    """Prune ``model_dir`` to remove ``cfg.ratio`` of its parameters; save a stock transformers folder."""
    model = load_model(model_dir, device, "float32")
    tokenizer = load_tokenizer(model_dir)
    check_supported(model)
    shape = attention_shape(model)
    plan = plan_widths(model, cfg.ratio, cfg.prune_heads)
    params_before = count_parameters(model)
    if cfg.importance == "taylor":
        batches = calibration_batches(tokenizer, calibration_texts, cfg.calibration_samples, cfg.calibration_tokens)
        accumulate_gradients(model, batches, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    removed = []
    with torch.no_grad():
        for layer in decoder_layers(model):
            heads, channels = group_scores(layer, cfg.importance, shape, generator)
            removed.append(prune_layer(layer, plan, heads, channels, shape))
    model.zero_grad(set_to_none=True)
    n_kv, n_rep, head_dim = shape
    model.config.num_attention_heads = n_kv * (n_rep - plan.heads_per_group)
    model.config.head_dim = head_dim
    model.config.intermediate_size -= plan.mlp_channels
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "params_before": params_before,
        "params_after": count_parameters(model),
        "removed_fraction": 1 - count_parameters(model) / params_before,
        "query_heads_removed_per_kv_group": plan.heads_per_group,
        "mlp_channels_removed_per_layer": plan.mlp_channels,
        "importance": cfg.importance,
        "layers": removed,
    }
