"""Layer-by-layer passes over calibration text, and the least-squares refit of a pruned output projection.

Pruning goes through the decoder one layer at a time (as SparseGPT does): each layer sees the hidden states the
already-pruned layers below it produce. Two streams of hidden states can be carried: the pruned model's and the
unpruned model's. With both, a refit targets what the unpruned layer computes from its own inputs, so it corrects
the error the pruned layers below passed up, not only the error of its own cut. Memory holds one layer boundary's
hidden states per stream and the input statistics of one projection, never a whole model's worth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from finescope_core.model_structure import decoder_layers, output_norm

DAMPING = 0.01  # ridge term, as a fraction of the mean diagonal of the inputs' Gram matrix


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


@dataclass
class LayerInputs:
    """What each decoder layer receives for each calibration batch: hidden states and keyword arguments."""

    hidden: list[torch.Tensor]  # per batch, the current layer's input in the model being pruned
    kwargs: list[list[dict]]  # [layer][batch]: attention mask, position embeddings, ...
    dense: list[torch.Tensor] | None = None  # per batch, the same layer's input in the unpruned model
    weights: list[torch.Tensor] | None = None  # per batch, each token's weight in the current layer's error [tokens]


@dataclass
class InputStatistics:
    """Sums over calibration tokens for one linear module's inputs: ``gram`` of x x^T (the pruned model's inputs
    x), and ``cross`` of x x_dense^T, token by token against the unpruned model's inputs (None: one stream)."""

    gram: torch.Tensor
    cross: torch.Tensor | None = None


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


def _rows_at(layer, name: str, hidden: torch.Tensor, kwargs: dict, output: bool) -> torch.Tensor:
    """Run ``layer`` on one batch up to its module ``name`` and return that module's input rows [tokens, features]
    (or, with ``output``, its output rows); the rest of the layer is skipped."""
    seen: list[torch.Tensor] = []

    def hook(module, args, result=None):
        rows = result if output else args[0]
        seen.append(rows.reshape(-1, rows.shape[-1]))
        raise _Stop

    module = layer.get_submodule(name)
    handle = module.register_forward_hook(hook) if output else module.register_forward_pre_hook(hook)
    try:
        layer(hidden, **kwargs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


def module_input(layer, name: str, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The input rows [tokens, in_features] of ``layer``'s linear module ``name`` on one batch (the rest of the
    layer is skipped)."""
    with torch.no_grad():
        return _rows_at(layer, name, hidden, kwargs, output=False)


def module_output(layer, name: str, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The output rows [tokens, out_features] of ``layer``'s module ``name`` on one batch (the rest of the layer is
    skipped), with the autograd graph that led to it where gradients are enabled."""
    return _rows_at(layer, name, hidden, kwargs, output=True)


def layer_output(layer, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder layer outputs (some families return them inside a tuple)."""
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def residual_weights(layer, inputs: LayerInputs, index: int, block: str, norm_gain: bool = True) -> list[torch.Tensor]:
    """Per calibration batch, each token's weight in the squared error of the layer's ``block`` ("self_attn" or
    "mlp"): the inverse mean square of the residual stream the (still unpruned) layer outputs there, times the
    square of the gain with which a normalisation after the block (:func:`output_norm`) passes its output on at that
    token (without ``norm_gain``, for an error measured after that normalisation); scaled to a mean of 1 over the
    batches.

    The next layer's normalisation divides the stream by its size, so an error counts in proportion to the stream
    it lands in. Without the weights, a layer that writes an outsized activation on the first token (SmolLM2's
    12th MLP: that token holds 99.8% of its output's energy) would spend its refit on that one token. A
    normalisation after the block (Gemma's) divides the block's output, and so its error, by the output's size
    token by token: an error where the block writes little counts for more."""
    norm = output_norm(layer, block) if norm_gain else None
    gains: list[torch.Tensor] = []

    def record_gain(module, args, output):
        gains.append((output.float().square().mean(-1) / args[0].float().square().mean(-1).clamp_min(1e-12))
                     .reshape(-1))

    handle = None if norm is None else norm.register_forward_hook(record_gain)
    weights = []
    try:
        with torch.no_grad():
            for hidden, kwargs in zip(inputs.hidden, inputs.kwargs[index]):
                out = layer_output(layer, hidden, kwargs)
                weight = out.float().square().mean(-1).reshape(-1).clamp_min(1e-12).reciprocal()
                weights.append(weight if norm is None else weight * gains.pop())
    finally:
        if handle is not None:
            handle.remove()
    mean = torch.cat(weights).mean()
    return [w / mean for w in weights]


def input_statistics(layer, inputs: LayerInputs, index: int, name: str, dense_layer=None) -> InputStatistics:
    """The Gram matrix (float64) of the inputs of ``layer``'s module ``name`` over the calibration batches, and with
    ``dense_layer`` (the layer as it was before pruning) their cross products with the unpruned model's inputs;
    each token's products weighted by ``inputs.weights`` where they are set."""
    gram = cross = None
    for batch, kwargs in enumerate(inputs.kwargs[index]):
        x = module_input(layer, name, inputs.hidden[batch], kwargs)
        weighted = x if inputs.weights is None else x * inputs.weights[batch][:, None].to(x.dtype)
        gram = (weighted.T @ x).double() + (0 if gram is None else gram)
        if dense_layer is not None:
            x_dense = module_input(dense_layer, name, inputs.dense[batch], kwargs)
            cross = (weighted.T @ x_dense).double() + (0 if cross is None else cross)
    return InputStatistics(gram, cross)


def run_layer(layer, inputs: LayerInputs, index: int, advance: bool = False, dense: bool = False) -> None:
    """Run the layer on every calibration batch of the pruned model's stream (of the unpruned model's, with
    ``dense``); with ``advance``, its outputs replace the inputs batch by batch (so one layer boundary's hidden
    states are held, not two)."""
    states = inputs.dense if dense else inputs.hidden
    with torch.no_grad():
        for batch, (hidden, kwargs) in enumerate(zip(states, inputs.kwargs[index])):
            out = layer_output(layer, hidden, kwargs)
            if advance:
                states[batch] = out


def diagonal_blocks(matrix: torch.Tensor, block: int) -> torch.Tensor:
    """The [n, block, block] blocks along the diagonal of a square matrix of n x block rows (a view)."""
    n_blocks = matrix.shape[0] // block
    return matrix.view(n_blocks, block, n_blocks, block).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def ridge(gram: torch.Tensor) -> torch.Tensor:
    """The damping added to a Gram matrix's diagonal: a fraction of its mean diagonal."""
    return DAMPING * gram.double().diagonal().mean().clamp_min(1e-12)


def damped(gram: torch.Tensor) -> torch.Tensor:
    """The Gram matrix plus a small ridge, so that inputs that are (nearly) always zero or collinear stay solvable."""
    gram = gram.double()
    return gram + ridge(gram) * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)


def corrected_weight(weight: torch.Tensor, stats: InputStatistics) -> torch.Tensor:
    """The weight that best maps the pruned model's inputs onto what ``weight`` computes from the unpruned model's:
    W' = W C^T H^-1, with H the damped Gram matrix and C the cross products plus the same ridge, so that W' is
    pulled towards W where the inputs say little. Removing columns from W' (:func:`refit_columns`) then gives the
    least-squares fit to the unpruned layer's output from the kept inputs."""
    eye = torch.eye(len(stats.gram), dtype=torch.float64, device=stats.gram.device)
    target = (stats.cross.double() + ridge(stats.gram) * eye) @ weight.double().T  # [in, out]
    return torch.linalg.solve(damped(stats.gram), target).T.to(weight.dtype)


def refit_columns(weight: torch.Tensor, gram: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """The weight on the ``kept`` input columns that best reproduces ``weight`` applied to all inputs.

    With H the damped Gram matrix of the inputs, W' = W H[:, K] H[K, K]^-1 minimises the summed squared output
    error over the calibration tokens plus a small pull towards the original weights (the OBS update).
    """
    h = damped(gram)
    target = h[kept] @ weight.double().T  # [kept, out]
    return torch.linalg.solve(h[kept][:, kept], target).T.to(weight.dtype)
