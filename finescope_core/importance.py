"""How much each prunable group of a decoder layer matters: query heads [n_kv, n_rep] and MLP channels [intermediate].

A group is a query head (its ``q_proj`` rows and ``o_proj`` columns) or an MLP channel (a ``gate_proj``/``up_proj``
row and the matching ``down_proj`` column). Element-wise saliencies are summed over a group, as LLM-Pruner does.

- ``taylor``: first-order Taylor ``|w * dL/dw|`` (LLM-Pruner's ``param_first``); ``taylor2`` adds the second-order
  term with the Fisher diagonal (its ``param_mix``). Each calibration sequence's gradient is reduced to group scores
  as soon as it is accumulated, then freed, so memory holds one weight's gradient, not the whole model's.
- ``activation``: the energy a group adds to its layer's output on calibration text, ``||W[:, g] x_g||^2``
  (Wanda/FLAP-like), read off the Gram matrix of the output projection's inputs.
- ``magnitude``: squared weights; ``random``: a seeded baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from finescope_core.layerwise import diagonal_blocks
from finescope_core.model_structure import decoder_layers
from finescope_core.progress import progress

# Weight name -> the dimension that is summed away to leave one score per output row (0) or input column (1).
GROUP_AXIS = {"q_proj": 1, "o_proj": 0, "gate_proj": 1, "up_proj": 1, "down_proj": 0}


@dataclass(frozen=True)
class AttentionShape:
    n_kv: int
    n_rep: int  # query heads per kv head
    head_dim: int


def attention_shape(model) -> AttentionShape:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    n_kv = config.num_key_value_heads
    return AttentionShape(n_kv, config.num_attention_heads // n_kv, head_dim)


def modules(layer) -> dict[str, torch.nn.Linear]:
    attn, mlp = layer.self_attn, layer.mlp
    return {"q_proj": attn.q_proj, "o_proj": attn.o_proj, "gate_proj": mlp.gate_proj, "up_proj": mlp.up_proj,
            "down_proj": mlp.down_proj}


def combine(per_weight: dict[str, torch.Tensor], shape: AttentionShape) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-weight row/column scores -> (query head scores [n_kv, n_rep], MLP channel scores [intermediate])."""
    heads = (per_weight["q_proj"] + per_weight["o_proj"]).view(shape.n_kv, shape.n_rep, shape.head_dim).sum(2)
    channels = per_weight["gate_proj"] + per_weight["up_proj"] + per_weight["down_proj"]
    return heads, channels


def static_scores(layer, kind: str, shape: AttentionShape, generator: torch.Generator):
    """Scores that need no calibration data: weight magnitude or random."""
    if kind == "magnitude":
        per_weight = {name: m.weight.detach().pow(2).sum(GROUP_AXIS[name]) for name, m in modules(layer).items()}
        return combine(per_weight, shape)
    intermediate = layer.mlp.gate_proj.out_features
    return (torch.rand(shape.n_kv, shape.n_rep, generator=generator), torch.rand(intermediate, generator=generator))


def activation_scores(layer, attn_gram: torch.Tensor, mlp_gram: torch.Tensor, shape: AttentionShape):
    """Output energy of each query head (through ``o_proj``) and each MLP channel (through ``down_proj``)."""
    o = layer.self_attn.o_proj.weight.detach().double()
    head_cols = o.view(o.shape[0], shape.n_kv * shape.n_rep, shape.head_dim)
    per_head = diagonal_blocks(attn_gram, shape.head_dim)  # [heads, head_dim, head_dim]
    heads = torch.einsum("ohd,hde,ohe->h", head_cols, per_head, head_cols)
    down = layer.mlp.down_proj.weight.detach().double()
    channels = down.pow(2).sum(0) * mlp_gram.diagonal()
    return heads.view(shape.n_kv, shape.n_rep).float(), channels.float()


def taylor_scores(model, sequences: torch.Tensor, second_order: bool, device: str):
    """Taylor scores of every layer's groups, summed over calibration sequences (one sequence per backward)."""
    for param in model.parameters():
        param.requires_grad_(False)
    totals: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for index, layer in enumerate(decoder_layers(model)):
        for name, module in modules(layer).items():
            module.weight.requires_grad_(True)
            handles.append(module.weight.register_post_accumulate_grad_hook(
                _reducer(totals, (index, name), GROUP_AXIS[name], second_order)))
    try:
        for sequence in progress(sequences, "calibration (Taylor)"):
            batch = sequence[None].to(device)
            model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        for param in model.parameters():
            param.requires_grad_(False)
    shape = attention_shape(model)
    return [combine({name: totals[index, name] for name in GROUP_AXIS}, shape)
            for index in range(len(decoder_layers(model)))]


def _reducer(totals: dict, key: tuple[int, str], axis: int, second_order: bool):
    def hook(weight: torch.Tensor) -> None:
        with torch.no_grad():
            first = weight * weight.grad
            saliency = first - 0.5 * first * first if second_order else first
            reduced = saliency.abs().sum(axis)
            totals[key] = totals[key] + reduced if key in totals else reduced
        weight.grad = None

    return hook
