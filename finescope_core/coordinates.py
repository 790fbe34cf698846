"""Gradient-sensitive activation coordinates: the paper's option of feeding the SAE only K of a layer's d coordinates.

A coordinate's sensitivity is the norm of its Jacobian row with respect to the input embeddings, ``||da_j/de||``,
estimated Hutchinson-style: for random Rademacher probes ``v`` in embedding space, ``u = J v`` is one forward-mode
Jacobian-vector product and ``E[u_j^2] = ||J_j||^2``. Scores are averaged over tokens (the attention sink excluded)
and documents, and one global top-K set is kept per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from finescope_core.model_structure import decoder_layers, truncated
from finescope_core.progress import progress


def sensitivity(model, token_ids: Sequence[list[int]], layer: int, probes: int = 2, seed: int = 0) -> np.ndarray:
    """Mean squared Jacobian-probe response of each coordinate of ``layer``'s output, over the given documents."""
    model.set_attn_implementation("eager")  # forward-mode AD has no rule for the fused CPU attention kernels
    generator = torch.Generator().manual_seed(seed)
    embed = model.get_input_embeddings()
    captured: dict[str, torch.Tensor] = {}
    hook = decoder_layers(model)[layer].register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("out", out[0] if isinstance(out, tuple) else out))

    def layer_output(embeddings: torch.Tensor) -> torch.Tensor:
        with truncated(model, layer + 1):
            model.model(inputs_embeds=embeddings, use_cache=False)
        return captured["out"]

    total, count = None, 0
    try:
        for ids in progress(token_ids, "coordinate sensitivity (documents)"):
            if len(ids) < 2:
                continue
            embeddings = embed(torch.tensor([ids], device=embed.weight.device)).detach()
            for _ in range(probes):
                probe = (torch.randint(0, 2, embeddings.shape, generator=generator) * 2 - 1).to(embeddings)
                _, response = torch.func.jvp(layer_output, (embeddings,), (probe,))
                squares = response[0, 1:].detach().double().pow(2).sum(0)  # skip the attention sink
                total = squares if total is None else total + squares
                count += response.shape[1] - 1
    finally:
        hook.remove()
    if total is None:
        raise ValueError("no document has two tokens or more: cannot estimate coordinate sensitivity")
    return (total / count).cpu().numpy()


def top_coordinates(scores: np.ndarray, k: int) -> list[int]:
    """The ``k`` most sensitive coordinates, in index order."""
    if not 0 < k <= len(scores):
        raise ValueError(f"sae.input_coordinates={k} must be between 1 and the layer width {len(scores)}")
    return sorted(np.argsort(-scores, kind="stable")[:k].tolist())
