"""Gradient-sensitivity scores of activation coordinates (the paper's K), against the exact Jacobian."""

from pathlib import Path

import numpy as np
import pytest


def test_sensitivity_scores_match_the_exact_jacobian(tiny_model: Path):
    """The probe estimate converges to the squared Jacobian row norms computed exactly."""
    import torch

    from finescope_core.coordinates import sensitivity, top_coordinates
    from finescope_core.models import load_model

    model = load_model(tiny_model)
    ids = [5, 17, 230, 9, 1024]
    estimate = sensitivity(model, [ids], layer=0, probes=400, seed=0)
    embeddings = model.get_input_embeddings()(torch.tensor([ids])).detach()
    jacobian = torch.autograd.functional.jacobian(lambda e: _layer_output(model, e), embeddings)  # [1,5,d,1,5,d]
    exact = jacobian[0, 1:].pow(2).sum((-3, -2, -1)).mean(0).numpy()  # tokens after the sink
    assert np.corrcoef(estimate, exact)[0, 1] > 0.95
    assert top_coordinates(exact, 8) == sorted(np.argsort(-exact)[:8].tolist())
    with pytest.raises(ValueError, match="input_coordinates=0"):
        top_coordinates(exact, 0)


def _layer_output(model, embeddings):
    from finescope_core.model_structure import truncated

    captured = {}
    hook = model.model.layers[0].register_forward_hook(lambda _m, _i, out: captured.setdefault("out", out))
    try:
        with truncated(model, 1):
            model.model(inputs_embeds=embeddings, use_cache=False)
    finally:
        hook.remove()
    out = captured["out"]
    return out[0] if isinstance(out, tuple) else out
