"""Gradient refinement of a pruned MLP towards what the unpruned MLP computed, on calibration inputs.

The least-squares refit (``finescope_core.layerwise``) re-solves only the output projection: the kept gate and up
rows stay as they were, although the channels that went took part of the work the kept ones now have to do. Here a
few Adam steps tune all of the MLP's kept weights at once, through its nonlinearity, to reproduce the refit's own
target on the calibration tokens: the unpruned MLP's output on the same inputs, or on the unpruned model's inputs.
It is the block-wise reconstruction of layer-wise pruners (for example Wanda++'s regional optimisation), applied to
one MLP at a time, so memory holds one layer's inputs and targets, never a model's gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch

from finescope_core.layerwise import LayerInputs, layer_output, module_input
from finescope_core.precision import Precision, autocast
from finescope_core.recover import warmup_cosine

REFINE_BATCH_TOKENS = 2048  # calibration tokens per Adam step
PASS_ROWS = 512  # rows per forward (and backward) pass: the allocator keeps what a pass frees for reuse, so the
# pass's size, not the step's, sets what the refinement adds to the process's peak memory


def storage_dtype(precision: Precision) -> torch.dtype:
    """The dtype the rows and targets are held in: bfloat16 when the steps read them in bfloat16 anyway (half the
    memory), float32 otherwise."""
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def mlp_inputs(layer, inputs: LayerInputs, index: int, dense: bool = False,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The MLP's input rows [tokens, hidden] in ``dtype`` over every calibration batch, from the pruned model's
    stream or (with ``dense``) the unpruned model's. Written batch by batch into one tensor: joining a list of the
    batches' rows would hold every row twice at the peak."""
    states = inputs.dense if dense else inputs.hidden
    rows = torch.empty(sum(hidden.shape[:-1].numel() for hidden in states), states[0].shape[-1], dtype=dtype)
    start = 0
    for hidden, kwargs in zip(states, inputs.kwargs[index]):
        batch_rows = module_input(layer, "mlp", hidden, kwargs)
        rows[start : start + len(batch_rows)] = batch_rows
        start += len(batch_rows)
    return rows


def mlp_outputs(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp`` applied to rows ``x`` (in float32, batch by batch, without gradients), held in ``x``'s dtype and
    written into one tensor, as :func:`mlp_inputs` is."""
    outputs = torch.empty_like(x)
    with torch.no_grad():
        for rows, out in zip(x.split(PASS_ROWS), outputs.split(PASS_ROWS)):
            out.copy_(mlp(rows.float()))
    return outputs


def mlp_addition(mlp: torch.nn.Module, norm: torch.nn.Module | None) -> torch.nn.Module:
    """What the MLP adds to the residual stream: ``mlp`` followed by ``norm``, the normalisation after it where the
    family has one (Gemma's)."""
    return mlp if norm is None else torch.nn.Sequential(mlp, norm)


def residual_targets(layer, unpruned_layer, inputs: LayerInputs, index: int, norm: torch.nn.Module | None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """What ``layer``'s MLP (through ``norm``, the normalisation after it where the family has one) must add to the
    residual stream for the layer to output what ``unpruned_layer`` does on the pruned model's inputs: its present
    addition plus the gap between the two layers' outputs, in float32, held in ``dtype`` with rows as
    :func:`mlp_inputs` gives them. Where the attention above the MLP lost heads, this target lets the MLP take up
    the error the attention leaves."""
    addition = mlp_addition(layer.mlp, norm)
    targets = torch.empty(sum(hidden.shape[:-1].numel() for hidden in inputs.hidden), inputs.hidden[0].shape[-1],
                          dtype=dtype)
    start = 0
    with torch.no_grad():
        for hidden, kwargs in zip(inputs.hidden, inputs.kwargs[index]):
            gap = layer_output(unpruned_layer, hidden, kwargs) - layer_output(layer, hidden, kwargs)
            rows = addition(module_input(layer, "mlp", hidden, kwargs).float()) + gap.reshape(-1, gap.shape[-1])
            targets[start : start + len(rows)] = rows
            start += len(rows)
    return targets


def squared_error(output: torch.Tensor, wanted: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The sum over rows of each row's squared error (float32), times the row's weight where ``weights`` are given."""
    squares = (output.float() - wanted.float()).square()
    return squares.sum() if weights is None else (squares.sum(-1) * weights).sum()


def row_batches(tensor: torch.Tensor, weights: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """``tensor`` in passes of PASS_ROWS rows, each with its rows' weights (None where there are none)."""
    rows = tensor.split(PASS_ROWS)
    return list(zip(rows, [None] * len(rows) if weights is None else weights.split(PASS_ROWS)))


def energy(target: torch.Tensor, weights: torch.Tensor | None) -> float:
    """The (weighted) sum of squares of ``target`` in float32, batch by batch."""
    return sum(float(squared_error(rows, torch.zeros(()), w)) for rows, w in row_batches(target, weights))


def relative_error(mlp: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
                   target_energy: float) -> float:
    """(Weighted) squared error of ``mlp`` (any module of the rows) on ``x`` against ``target``, in float32, as a
    share of ``target_energy`` (its :func:`energy`); batch by batch, so no second copy of the outputs is held."""
    with torch.no_grad():
        error = sum(float(squared_error(mlp(rows.float()), wanted, w))
                    for (rows, w), wanted in zip(row_batches(x, weights), target.split(PASS_ROWS)))
    return error / max(target_energy, 1e-12)


def relative_step_groups(params: list[torch.nn.Parameter], relative_lr: float) -> list[dict]:
    """Adam's parameter groups, each weight matrix's learning rate ``relative_lr`` times its root mean square.

    Adam moves every weight by about its learning rate whatever the gradient's size, so one absolute rate is a
    small step for one model and a large one for another: SmolLM2's MLP weights have an RMS near 0.19, Gemma-3's
    near 0.04 and 0.016, and the absolute rate chosen on the first left the steps undone in 10 of Gemma-3-270M's
    18 layers. Sized to each matrix's own scale, the steps change every model's weights by the same fraction.
    Vectors (biases) take the matrices' mean RMS, as theirs may be 0."""
    sizes = [float(param.detach().float().square().mean().sqrt()) for param in params]
    matrices = [size for size, param in zip(sizes, params) if param.dim() >= 2]
    fallback = sum(matrices) / len(matrices) if matrices else 1.0
    return [{"params": [param], "lr": relative_lr * (size if param.dim() >= 2 else fallback)}
            for size, param in zip(sizes, params)]


@contextlib.contextmanager
def frozen(params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Keep ``params`` (those that take gradients) out of the gradient inside the block, so that steps on other
    weights neither move them nor hold gradients for them."""
    held = [param for param in params if param.requires_grad]
    for param in held:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in held:
            param.requires_grad_(True)


def tuned_by_adam(params: list[torch.nn.Parameter], accumulate_step: Callable[[], None], error: Callable[[], float],
                  steps: int, relative_lr: float) -> dict[str, float]:
    """Run ``steps`` Adam steps on ``params`` (a cosine decay from ``relative_lr`` times each weight matrix's RMS:
    :func:`relative_step_groups`), each on the gradients ``accumulate_step`` leaves by its backward passes; returns
    ``error`` before and after, and undoes the steps where they left it higher (too large a rate)."""
    before = error()
    start = [param.detach().clone() for param in params]
    trainable = [param.requires_grad for param in params]
    for param in params:
        param.requires_grad_(True)
    optimiser = torch.optim.Adam(relative_step_groups(params, relative_lr))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, warmup_cosine(0, steps))
    with torch.enable_grad():
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            accumulate_step()
            optimiser.step()
            schedule.step()
    for param, flag in zip(params, trainable):
        param.requires_grad_(flag)
        param.grad = None
    after = error()
    if not after < before:
        with torch.no_grad():
            for param, saved in zip(params, start):
                param.copy_(saved)
    return {"error_before": before, "error_after": min(before, after)}


def refine_mlp(mlp: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int, relative_lr: float,
               generator: torch.Generator, precision: Precision = "float32", weights: torch.Tensor | None = None,
               norm: torch.nn.Module | None = None) -> dict[str, float]:
    """Tune ``mlp``'s weights by ``steps`` Adam steps (:func:`tuned_by_adam`) on random batches of the rows ``x`` to
    reproduce ``target`` (after ``norm``, a normalisation left as it is, where given), each row's squared error
    times its entry in ``weights`` (default 1); returns the relative error on ``x`` before and after. The weights
    keep their dtype and shapes: the result is still a stock MLP. With ``precision`` bfloat16 the steps' products
    run in bfloat16 autocast (the weights, Adam's state and the error stay float32), which is faster and holds
    smaller activations where bfloat16 is native.

    The error is not judged on rows kept out of the steps: the least-squares refit before them was solved on every
    row, so such rows favour the refit and would undo steps that do lower held-out perplexity (README, pruning)."""
    weights = None if weights is None else weights.float()
    target_energy = energy(target, weights)
    scale = max(target_energy / target.numel(), 1e-12)
    forward = mlp_addition(mlp, norm)

    def accumulate_step() -> None:
        rows = torch.randint(len(x), (min(REFINE_BATCH_TOKENS, len(x)),), generator=generator)
        for part in rows.split(PASS_ROWS):  # the batch's mean squared error, its gradient summed pass by pass
            with autocast(str(x.device), precision):
                output = forward(x[part].float())
            error = squared_error(output, target[part], None if weights is None else weights[part])
            (error / (len(rows) * target.shape[-1] * scale)).backward()

    with frozen([] if norm is None else norm.parameters()):
        return tuned_by_adam(list(mlp.parameters()), accumulate_step,
                             lambda: relative_error(forward, x, target, weights, target_energy), steps, relative_lr)
