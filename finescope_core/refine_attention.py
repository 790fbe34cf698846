"""Gradient refinement of an attention that lost query heads, towards what the unpruned attention computed.

With ``prune.prune_heads`` a layer loses query heads and only ``o_proj`` is re-solved by least squares: the kept
heads' queries, keys and values stay as they were, although the heads that went took part of the work. As
``finescope_core.refine`` does for the MLP, a few Adam steps tune all of the attention's weights at once, through
its softmax, to reproduce the refit's target on the calibration text. Attention mixes a sequence's tokens, so a step
takes whole calibration batches with the masks and position embeddings the layer was given, not random token rows;
the layer itself runs and stops after ``o_proj``, so every family calls its attention in its own way.
"""

from __future__ import annotations

import torch

from finescope_core.layerwise import LayerInputs, module_output
from finescope_core.precision import Precision, autocast
from finescope_core.refine import REFINE_BATCH_TOKENS, energy, frozen, squared_error, tuned_by_adam

OUTPUT = "self_attn.o_proj"


def attention_targets(layer, states: list[torch.Tensor], kwargs: list[dict], dtype: torch.dtype) -> list[torch.Tensor]:
    """Per calibration batch, what ``layer``'s attention outputs [tokens, hidden] on ``states``, in ``dtype``."""
    with torch.no_grad():
        return [module_output(layer, OUTPUT, hidden, call).to(dtype) for hidden, call in zip(states, kwargs)]


def refine_attention(layer, inputs: LayerInputs, index: int, targets: list[torch.Tensor], steps: int,
                     relative_lr: float, generator: torch.Generator,
                     precision: Precision = "float32") -> dict[str, float]:
    """Tune the weights of ``layer``'s attention by ``steps`` Adam steps (``finescope_core.refine.tuned_by_adam``)
    so that on the pruned model's calibration batches it reproduces ``targets`` (per batch), each token's squared
    error times its entry in ``inputs.weights`` where they are set; returns the relative error before and after.
    A step reads whole batches, about REFINE_BATCH_TOKENS tokens; the rest of the layer is frozen meanwhile."""
    params = list(layer.self_attn.parameters())
    tuned = {id(param) for param in params}
    weights = [None] * len(targets) if inputs.weights is None else [w.float() for w in inputs.weights]
    batch_energy = [energy(target, w) for target, w in zip(targets, weights)]
    scale = max(sum(batch_energy) / sum(target.numel() for target in targets), 1e-12)
    per_step = max(1, round(REFINE_BATCH_TOKENS * len(targets) / sum(len(target) for target in targets)))

    def batch_error(batch: int, arithmetic: Precision = precision) -> torch.Tensor:
        with autocast(str(targets[batch].device), arithmetic):
            output = module_output(layer, OUTPUT, inputs.hidden[batch], inputs.kwargs[index][batch])
        return squared_error(output, targets[batch], weights[batch])

    def accumulate_step() -> None:
        batches = torch.randint(len(targets), (per_step,), generator=generator).tolist()
        tokens = sum(len(targets[batch]) for batch in batches)
        for batch in batches:
            (batch_error(batch) / (tokens * targets[batch].shape[-1] * scale)).backward()

    def error() -> float:
        with torch.no_grad():
            total = sum(float(batch_error(batch, "float32")) for batch in range(len(targets)))
        return total / max(sum(batch_energy), 1e-12)

    with frozen(param for param in layer.parameters() if id(param) not in tuned):
        return tuned_by_adam(params, accumulate_step, error, steps, relative_lr)
