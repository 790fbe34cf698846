"""Structured pruning in the manner of LLM-Pruner, calibrated on the curated domain data.

Per decoder layer, whole query heads (the same number inside every kv group, so GQA stays valid) and MLP channels
are removed, ranked by an importance score (``finescope_core.importance``). Every layer keeps the same widths, so
the result is a stock transformers folder. Beyond LLM-Pruner, the layers are pruned in order on calibration text and
the output projections (``o_proj``, ``down_proj``) are refit by least squares to the removed groups' contribution
(``finescope_core.layerwise``): a 135M model loses far less from the same cut, before any recovery training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_pruning as tp

from finescope_core.config import PruneConfig
from finescope_core.importance import AttentionShape, activation_scores, attention_shape, static_scores, taylor_scores
from finescope_core.layerwise import capture_inputs, input_grams, refit_columns, run_layer
from finescope_core.model_structure import decoder_layers
from finescope_core.models import count_parameters, load_model, load_tokenizer
from finescope_core.obs import obs_removal
from finescope_core.progress import progress

SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
GRAM_INPUTS = ("self_attn.o_proj", "mlp.down_proj")
CALIBRATION_BATCH = 8  # sequences per forward in the layer-by-layer pass


@dataclass(frozen=True)
class Plan:
    """Widths to remove in every decoder layer."""

    heads_per_group: int
    mlp_channels: int


def check_supported(model: torch.nn.Module) -> None:
    name = type(model).__name__
    if name not in SUPPORTED:
        raise ValueError(f"unsupported architecture {name}: prune supports {', '.join(SUPPORTED)}")


def head_removal(ideal: float, hidden: int, n_kv: int, n_rep: int) -> int:
    """Query heads to remove per kv group: the count nearest ``ideal`` that transformers' configs accept
    (the remaining head count must divide hidden_size) and that leaves every group a head."""
    valid = [h for h in range(n_rep) if hidden % (n_kv * (n_rep - h)) == 0]
    return min(valid, key=lambda h: (abs(h - ideal), h))


def plan_widths(model, ratio: float, prune_heads: bool, width_multiple: int = 1) -> Plan:
    """Per-layer widths that remove ``ratio`` of all parameters as closely as uniform widths allow, keeping an MLP
    width that is a multiple of ``width_multiple`` (matrix kernels run markedly slower on odd widths)."""
    shape = attention_shape(model)
    hidden, n_layers = model.config.hidden_size, len(decoder_layers(model))
    total = count_parameters(model)
    target = ratio * total
    block = sum(p.numel() for p in decoder_layers(model)[0].parameters())
    ideal_heads = shape.n_rep * target / (n_layers * block)
    heads = head_removal(ideal_heads, hidden, shape.n_kv, shape.n_rep) if prune_heads else 0
    head_params = 2 * shape.head_dim * hidden  # q rows + o columns (biases are negligible)
    remaining = target - n_layers * shape.n_kv * heads * head_params
    channel_params = 3 * hidden
    intermediate = model.config.intermediate_size
    if remaining > n_layers * (intermediate - 1) * channel_params:
        most = n_layers * (shape.n_kv * heads * head_params + (intermediate - 1) * channel_params) / total
        raise ValueError(f"prune.ratio={ratio} would leave a layer without MLP channels (embeddings and norms are not "
                         f"pruned; this model allows at most {most:.3f}); lower it")
    kept = intermediate - max(0, round(remaining / (n_layers * channel_params)))
    channels = intermediate - max(width_multiple, width_multiple * round(kept / width_multiple))
    channels = max(0, min(channels, intermediate - 1))
    if heads == 0 and channels == 0:
        raise ValueError(f"prune.ratio={ratio} removes nothing at this model's granularity; raise it")
    return Plan(heads, channels)


def calibration_sequences(tokenizer, texts: Sequence[str], n_samples: int, n_tokens: int) -> torch.Tensor:
    """Up to ``n_samples`` windows of ``n_tokens`` tokens [n, n_tokens], filled from the concatenated texts
    (a single shorter window when the texts hold fewer tokens than one)."""
    if not texts:
        raise ValueError("the calibration set is empty: curate some documents or use prune.calibration=generic")
    encoded = tokenizer([text + (tokenizer.eos_token or "") for text in texts], add_special_tokens=False)["input_ids"]
    ids = [token for text_ids in encoded for token in text_ids]
    if len(ids) < 2:
        raise ValueError("the calibration texts tokenise to fewer than 2 tokens; give longer documents")
    n_full = min(n_samples, len(ids) // n_tokens)
    if n_full == 0:
        return torch.tensor([ids])
    return torch.tensor(ids[: n_full * n_tokens]).view(n_full, n_tokens)


def needs_calibration(cfg: PruneConfig) -> bool:
    return cfg.reconstruct or cfg.importance in ("taylor", "taylor2", "activation", "obs")


def choose_groups(layer, index: int, plan: Plan, shape: AttentionShape, cfg: PruneConfig, grams: dict | None,
                  taylor: list | None, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """The query heads and MLP channels of one layer to remove: the lowest scores, or the OBS choice."""
    if cfg.importance == "obs":
        o_proj, down_proj = layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight
        heads = (obs_removal(o_proj, grams["self_attn.o_proj"], shape.head_dim, shape.n_kv, plan.heads_per_group)
                 if plan.heads_per_group else [])
        channels = obs_removal(down_proj, grams["mlp.down_proj"], 1, 1, plan.mlp_channels) if plan.mlp_channels else []
        return heads, channels
    if taylor is not None:
        head_scores, channel_scores = taylor[index]
    elif cfg.importance == "activation":
        head_scores, channel_scores = activation_scores(layer, grams["self_attn.o_proj"], grams["mlp.down_proj"],
                                                        shape)
    else:
        head_scores, channel_scores = static_scores(layer, cfg.importance, shape, generator)
    drop_heads = head_scores.argsort(dim=1)[:, : plan.heads_per_group]
    heads = sorted(int(g * shape.n_rep + h) for g in range(shape.n_kv) for h in drop_heads[g])
    return heads, sorted(channel_scores.argsort()[: plan.mlp_channels].tolist())


def prune_layer(layer, head_ids: list[int], channels: list[int], shape: AttentionShape,
                grams: dict[str, torch.Tensor] | None) -> None:
    """Remove query heads (evenly per kv group) and MLP channels of one layer; with ``grams``, refit ``o_proj`` and
    ``down_proj`` on the inputs that remain."""
    attn, mlp = layer.self_attn, layer.mlp
    rows = [r for h in head_ids for r in range(h * shape.head_dim, (h + 1) * shape.head_dim)]
    if rows:
        _remove_inputs(attn.o_proj, rows, grams and grams["self_attn.o_proj"])
        tp.prune_linear_out_channels(attn.q_proj, rows)
        attn.num_key_value_groups = shape.n_rep - len(head_ids) // shape.n_kv
    if channels:
        _remove_inputs(mlp.down_proj, channels, grams and grams["mlp.down_proj"])
        tp.prune_linear_out_channels(mlp.gate_proj, channels)
        tp.prune_linear_out_channels(mlp.up_proj, channels)


def _remove_inputs(linear: torch.nn.Linear, removed: list[int], gram: torch.Tensor | None) -> None:
    kept = sorted(set(range(linear.in_features)) - set(removed))
    refit = refit_columns(linear.weight.detach(), gram, kept) if gram is not None else None
    tp.prune_linear_in_channels(linear, removed)
    if refit is not None:
        linear.weight.data.copy_(refit)


def prune_model(model_dir: str | Path, calibration_texts: Sequence[str], out_dir: Path, cfg: PruneConfig,
                device: str = "cpu") -> dict:
    """Prune ``model_dir`` to remove ``cfg.ratio`` of its parameters; save a stock transformers folder."""
    model = load_model(model_dir, device, "float32", in_memory=True)
    tokenizer = load_tokenizer(model_dir)
    check_supported(model)
    shape = attention_shape(model)
    plan = plan_widths(model, cfg.ratio, cfg.prune_heads, cfg.width_multiple)
    params_before = count_parameters(model)
    sequences = (calibration_sequences(tokenizer, calibration_texts, cfg.calibration_samples, cfg.calibration_tokens)
                 if needs_calibration(cfg) else None)
    taylor = (taylor_scores(model, sequences, cfg.importance == "taylor2", device)
              if cfg.importance in ("taylor", "taylor2") else None)
    layerwise = cfg.reconstruct or cfg.importance in ("activation", "obs")
    inputs = capture_inputs(model, list(sequences.split(CALIBRATION_BATCH))) if layerwise else None
    generator = torch.Generator().manual_seed(cfg.seed)
    removed = []
    for index, layer in enumerate(progress(decoder_layers(model), "prune layers")):
        grams = input_grams(layer, inputs, index, GRAM_INPUTS) if layerwise else None
        heads, channels = choose_groups(layer, index, plan, shape, cfg, grams, taylor, generator)
        with torch.no_grad():
            prune_layer(layer, heads, channels, shape, grams if cfg.reconstruct else None)
        removed.append({"query_heads": heads, "mlp_channels": channels})
        if layerwise:
            run_layer(layer, inputs, index, advance=True)
    model.config.num_attention_heads = shape.n_kv * (shape.n_rep - plan.heads_per_group)
    model.config.head_dim = shape.head_dim
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
        "reconstruct": cfg.reconstruct,
        "calibration_tokens": int(sequences.numel()) if sequences is not None else 0,
        "layers": removed,
    }
