"""Layer-by-layer passes over calibration text, and the least-squares refit of a pruned output projection.

Pruning goes through the decoder one layer at a time (as SparseGPT does): each layer sees the hidden states the
already-pruned layers below it produce, so it can correct for their error. Memory holds the calibration hidden
states of one layer boundary and the input Gram matrices of one layer, never a whole model's worth of statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from finescope_core.model_structure import decoder_layers

DAMPING = 0.01  # ridge term, as a fraction of the mean diagonal of the inputs' Gram matrix


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


@dataclass
class LayerInputs:
    """What each decoder layer receives for each calibration batch: hidden states and keyword arguments."""

    hidden: list[torch.Tensor]  # per batch, the current layer's input
    kwargs: list[list[dict]]  # [layer][batch]: attention mask, position embeddings, ...


def capture_inputs(model, batches: list[torch.Tensor]) -> LayerInputs:
    """Run the embeddings once per batch and record the arguments every decoder layer would get."""
    layers = decoder_layers(model)
    hidden: list[torch.Tensor] = []
    kwargs: list[list[dict]] = [[] for _ in layers]

    def recorder(index: int):
        def hook(module, args, call_kwargs):
            if index == 0:
                hidden.append(args[0].detach() if args else call_kwargs.pop("hidden_states").detach())
            kwargs[index].append({k: v for k, v in call_kwargs.items() if k != "hidden_states"})
            if index == len(layers) - 1:
                raise _Stop
            return None

        return hook

    handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(layers)]
    originals = [layer.forward for layer in layers]
    try:
        for layer in layers[:-1]:  # the layers are skipped: only their arguments are wanted here
            layer.forward = _identity
        with torch.no_grad():
            for batch in batches:
                try:
                    model(input_ids=batch.to(model.device), use_cache=False)
                except _Stop:
                    pass
    finally:
        for layer, forward in zip(layers[:-1], originals[:-1]):
            layer.forward = forward
        for handle in handles:
            handle.remove()
    return LayerInputs(hidden, kwargs)


def _identity(hidden_states, *args, **kwargs):
    return hidden_states


def input_grams(layer, inputs: LayerInputs, index: int, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Sum of x x^T over calibration tokens for the inputs of the named linear modules of one layer (float64)."""
    grams: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        module = layer.get_submodule(name)

        def hook(module, args, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            gram = (x.T @ x).double()
            grams[name] = grams[name] + gram if name in grams else gram

        handles.append(module.register_forward_pre_hook(hook))
    try:
        run_layer(layer, inputs, index)
    finally:
        for handle in handles:
            handle.remove()
    return grams


def run_layer(layer, inputs: LayerInputs, index: int, advance: bool = False) -> None:
    """Run the layer on every calibration batch; with ``advance``, its outputs replace the inputs batch by batch
    (so one layer boundary's hidden states are held, not two)."""
    with torch.no_grad():
        for batch, (hidden, kwargs) in enumerate(zip(inputs.hidden, inputs.kwargs[index])):
            out = layer(hidden, **kwargs)
            if advance:
                inputs.hidden[batch] = out[0] if isinstance(out, tuple) else out


def diagonal_blocks(matrix: torch.Tensor, block: int) -> torch.Tensor:
    """The [n, block, block] blocks along the diagonal of a square matrix of n x block rows (a view)."""
    n_blocks = matrix.shape[0] // block
    return matrix.view(n_blocks, block, n_blocks, block).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def damped(gram: torch.Tensor) -> torch.Tensor:
    """The Gram matrix plus a small ridge, so that inputs that are (nearly) always zero or collinear stay solvable."""
    gram = gram.double()
    ridge = DAMPING * gram.diagonal().mean().clamp_min(1e-12)
    return gram + ridge * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)


def refit_columns(weight: torch.Tensor, gram: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """The weight on the ``kept`` input columns that best reproduces ``weight`` applied to all inputs.

    With H the damped Gram matrix of the inputs, W' = W H[:, K] H[K, K]^-1 minimises the summed squared output
    error over the calibration tokens plus a small pull towards the original weights (the OBS update).
    """
    h = damped(gram)
    target = h[kept] @ weight.double().T  # [kept, out]
    return torch.linalg.solve(h[kept][:, kept], target).T.to(weight.dtype)
