"""How much each prunable group of a decoder layer matters: query heads [n_kv, n_rep] and MLP channels [intermediate].

A group is a query head (its ``q_proj`` rows and ``o_proj`` columns) or an MLP channel (a ``gate_proj``/``up_proj``
row and the matching ``down_proj`` column). Element-wise saliencies are summed over a group, as LLM-Pruner does.

- ``param_first``: LLM-Pruner's first-order Taylor ``|w * g|``, g the gradient of the mean loss over all calibration
  tokens; ``param_mix``, also LLM-Pruner's, ``|w g - w^2 F / 2|`` with F the Fisher diagonal (the mean over
  calibration sequences of each one's squared gradient).
- ``taylor_per_sequence``: ``|w * g_i|`` summed over calibration sequences i, an earlier variant of ours (each
  sequence's gradient is reduced as soon as it is accumulated, so memory holds one weight's gradient).
- ``activation``: the energy a group adds to its layer's output on calibration text, ``||W[:, g] x_g||^2``
  (Wanda/FLAP-like), read off the Gram matrix of the output projection's inputs (:func:`output_energies`).
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
TAYLOR = ("param_first", "param_mix", "taylor_per_sequence")  # the importances read from gradients
GRADIENT_BATCH = 8  # calibration sequences per forward/backward of the batch gradient


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


def output_energies(weight: torch.Tensor, gram: torch.Tensor, block: int) -> torch.Tensor:
    """The energy each block of ``block`` input columns adds to the projection's output on calibration text,
    ``sum ||W[:, b] x_b||^2`` over tokens, read off the inputs' Gram matrix: one score per query head of ``o_proj``
    (block head_dim) or per MLP channel of ``down_proj`` (block 1)."""
    w = weight.detach().double()
    columns = w.view(w.shape[0], w.shape[1] // block, block)
    return torch.einsum("obd,bde,obe->b", columns, diagonal_blocks(gram, block), columns).float()


def taylor_scores(model, sequences: torch.Tensor, kind: str, device: str):
    """Taylor scores of every layer's groups [(heads, channels) per layer], ``kind`` one of :data:`TAYLOR`.

    ``param_first`` and ``param_mix`` hold every prunable weight's gradient at once (as LLM-Pruner does); the
    per-sequence kind and the Fisher pass reduce each sequence's gradient as soon as it is accumulated."""
    weights = {(index, name): module.weight for index, layer in enumerate(decoder_layers(model))
               for name, module in modules(layer).items()}
    for param in model.parameters():
        param.requires_grad_(False)
    for weight in weights.values():
        weight.requires_grad_(True)
        weight.grad = None  # a gradient left from earlier would add to the calibration's
    totals: dict[tuple[int, str], torch.Tensor] = {}
    try:
        if kind == "taylor_per_sequence":
            def add_saliency(key, weight: torch.Tensor) -> None:
                reduced = (weight * weight.grad).abs().sum(GROUP_AXIS[key[1]])
                totals[key] = totals[key] + reduced if key in totals else reduced

            _each_sequence_gradient(model, weights, sequences, device, add_saliency)
        else:
            fisher = _fisher_diagonal(model, weights, sequences, device) if kind == "param_mix" else None
            _batch_gradient(model, sequences, device)
            for key, weight in weights.items():
                with torch.no_grad():
                    saliency = weight * weight.grad
                    if fisher is not None:
                        saliency = saliency - 0.5 * weight * fisher[key] * weight
                    totals[key] = saliency.abs().sum(GROUP_AXIS[key[1]])
    finally:
        for weight in weights.values():
            weight.requires_grad_(False)
            weight.grad = None
    shape = attention_shape(model)
    return [combine({name: totals[index, name] for name in GROUP_AXIS}, shape)
            for index in range(len(decoder_layers(model)))]


def _batch_gradient(model, sequences: torch.Tensor, device: str) -> None:
    """Accumulate in ``.grad`` the gradient of the mean loss over all calibration tokens (micro-batched)."""
    total = sequences[:, 1:].numel()
    for chunk in progress(sequences.split(GRADIENT_BATCH), "calibration (gradient)"):
        batch = chunk.to(device)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        (loss * chunk[:, 1:].numel() / total).backward()


def _fisher_diagonal(model, weights: dict, sequences: torch.Tensor, device: str) -> dict:
    """The mean over calibration sequences of each sequence's squared gradient, per weight."""
    fisher = {key: torch.zeros_like(weight) for key, weight in weights.items()}

    def add_square(key, weight: torch.Tensor) -> None:
        fisher[key] += weight.grad.pow(2) / len(sequences)

    _each_sequence_gradient(model, weights, sequences, device, add_square)
    return fisher


def _each_sequence_gradient(model, weights: dict, sequences: torch.Tensor, device: str, consume) -> None:
    """One backward per sequence; ``consume(key, weight)`` reads each weight's gradient as soon as it is
    accumulated, after which it is freed (memory holds one weight's gradient, not the model's)."""
    def hook(key):
        def call(weight: torch.Tensor) -> None:
            with torch.no_grad():
                consume(key, weight)
            weight.grad = None

        return call

    handles = [weight.register_post_accumulate_grad_hook(hook(key)) for key, weight in weights.items()]
    try:
        for sequence in progress(sequences, "calibration (gradient per sequence)"):
            batch = sequence[None].to(device)
            model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
    finally:
        for handle in handles:
            handle.remove()
