"""Layer-by-layer calibration passes, least-squares refits and importance scores, checked against direct formulas."""

from pathlib import Path

import pytest
import torch

from finescope_core.importance import attention_shape, output_energies, taylor_scores
from finescope_core.layerwise import (
    InputStatistics,
    capture_inputs,
    corrected_weight,
    input_statistics,
    layer_output,
    module_input,
    refit_columns,
    residual_weights,
    run_layer,
)
from finescope_core.model_structure import decoder_layers
from finescope_core.models import load_model


def test_refit_is_exact_when_removed_inputs_are_combinations_of_kept_ones():
    torch.manual_seed(0)
    kept_inputs = torch.randn(500, 6, dtype=torch.float64)
    mixing = torch.randn(6, 2, dtype=torch.float64)
    x = torch.cat([kept_inputs, kept_inputs @ mixing], dim=1)  # columns 6, 7 are redundant
    weight = torch.randn(4, 8, dtype=torch.float64)
    refit = refit_columns(weight, x.T @ x, kept=list(range(6)))
    naive = weight[:, :6]
    error = (x @ weight.T - kept_inputs @ refit.T).norm() / (x @ weight.T).norm()
    assert error < 0.02 < (x @ weight.T - kept_inputs @ naive.T).norm() / (x @ weight.T).norm()


def test_refit_of_the_corrected_weight_is_the_least_squares_fit_to_the_dense_outputs():
    """min ||W' x[kept] - W x_dense|| over the calibration tokens, where x (the pruned model's inputs) has drifted
    from x_dense: the corrected weight's refit reaches the direct solution, the refit of W itself does not."""
    torch.manual_seed(0)
    x_dense = torch.randn(2000, 8, dtype=torch.float64)
    x = x_dense @ (torch.eye(8, dtype=torch.float64) + 0.3 * torch.randn(8, 8, dtype=torch.float64))  # drifted
    x = x + 0.05 * torch.randn_like(x)
    weight, kept = torch.randn(4, 8, dtype=torch.float64), [0, 1, 2, 4, 5, 7]
    stats = InputStatistics(x.T @ x, x.T @ x_dense)
    target = x_dense @ weight.T
    direct = torch.linalg.lstsq(x[:, kept], target).solution.T

    def error(w: torch.Tensor) -> float:
        return float((x[:, kept] @ w.T - target).norm() / target.norm())

    corrected = refit_columns(corrected_weight(weight, stats), stats.gram, kept)
    assert abs(error(corrected) - error(direct)) < 1e-3
    assert error(refit_columns(weight, stats.gram, kept)) > error(direct) + 0.1


def test_layer_by_layer_pass_reproduces_the_model(family_model: Path):
    """Every family's layers get the arguments they need (Gemma 3's sliding-window layers their own rotary
    embedding and mask), so the pass ends where the model's own forward does."""
    model = load_model(family_model)
    batches = [torch.randint(0, 49152, (2, 10)), torch.randint(0, 49152, (1, 7))]
    inputs = capture_inputs(model, batches)
    for index, layer in enumerate(decoder_layers(model)):
        run_layer(layer, inputs, index, advance=True)
    with torch.no_grad():
        for batch, last in zip(batches, inputs.hidden):
            expected = model(input_ids=batch, output_hidden_states=True).hidden_states[-1]
            assert torch.allclose(model.model.norm(last), expected, atol=1e-5)


def test_residual_weights_discount_tokens_whose_stream_is_large(tiny_model: Path):
    """Each token's weight times the mean square of the stream the layer outputs there is the same for every token
    (so a token whose stream is ten times larger counts a hundred times less), the weights average 1, and weighted
    statistics count a token by its weight: a batch weighted 0 drops out of the Gram matrix."""
    model = load_model(tiny_model)
    layer = decoder_layers(model)[0]
    inputs = capture_inputs(model, [torch.randint(0, 49152, (2, 9)), torch.randint(0, 49152, (1, 9))])
    weights = residual_weights(layer, inputs, 0, "mlp")
    with torch.no_grad():
        outputs = [layer_output(layer, hidden, kwargs) for hidden, kwargs in zip(inputs.hidden, inputs.kwargs[0])]
    sizes = torch.cat([out.square().mean(-1).reshape(-1) for out in outputs])
    products = torch.cat(weights) * sizes
    assert [len(w) for w in weights] == [18, 9]
    assert torch.allclose(products, products[0].expand_as(products), rtol=1e-4)
    assert abs(float(torch.cat(weights).mean()) - 1) < 1e-5
    assert sizes.max() > 2 * sizes.min()  # the tokens' streams differ, so the weights do

    inputs.weights = [weights[0], torch.zeros(9)]
    weighted = input_statistics(layer, inputs, 0, "mlp.down_proj").gram
    x = module_input(layer, "mlp.down_proj", inputs.hidden[0], inputs.kwargs[0][0])
    assert torch.allclose(weighted, ((x * weights[0][:, None]).T @ x).double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family_model", ["gemma3_text"], indirect=True)
@pytest.mark.parametrize(("block", "norm"), [("self_attn", "post_attention_layernorm"),
                                             ("mlp", "post_feedforward_layernorm")])
def test_residual_weights_count_the_gain_of_a_normalisation_after_the_block(family_model: Path, block: str,
                                                                            norm: str):
    """Gemma 3 normalises each block's output before adding it to the stream, dividing the block's error by the
    output's size token by token: each token's weight times the stream's mean square is that normalisation's
    squared gain there, so a token where the block writes little counts for more."""
    model = load_model(family_model)
    layers = decoder_layers(model)
    inputs = capture_inputs(model, [torch.randint(0, 49152, (2, 9))])
    run_layer(layers[0], inputs, 0, advance=True)
    weights = torch.cat(residual_weights(layers[1], inputs, 1, block))
    hidden, kwargs = inputs.hidden[0], inputs.kwargs[1][0]
    with torch.no_grad():
        stream = layer_output(layers[1], hidden, kwargs).square().mean(-1).reshape(-1)
        block_out = module_input(layers[1], norm, hidden, kwargs)
        gains = layers[1].get_submodule(norm)(block_out).square().mean(-1) / block_out.square().mean(-1)
    ratios = weights * stream / gains
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-4)
    assert gains.max() > 1.5 * gains.min()  # the gain differs by token, so it changes the weights


def test_activation_scores_are_output_energies(tiny_model: Path):
    model = load_model(tiny_model)
    batches = [torch.randint(0, 49152, (2, 9))]
    inputs = capture_inputs(model, batches)
    layer = decoder_layers(model)[0]
    seen = {}
    layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("down", a[0]))
    layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("o", a[0]))
    run_layer(layer, inputs, 0)
    shape = attention_shape(model)
    w_o, w_down = layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight
    heads = output_energies(w_o, input_statistics(layer, inputs, 0, "self_attn.o_proj").gram, shape.head_dim)
    channels = output_energies(w_down, input_statistics(layer, inputs, 0, "mlp.down_proj").gram, 1)
    down_in = seen["down"].reshape(-1, seen["down"].shape[-1])
    energy_3 = (down_in[:, 3:4] @ w_down[:, 3:4].T).pow(2).sum()
    assert torch.allclose(channels[3], energy_3, rtol=1e-4)
    o_in = seen["o"].reshape(-1, seen["o"].shape[-1])
    cols = slice(shape.head_dim, 2 * shape.head_dim)  # query head 1 = kv group 0, second head
    energy_head = (o_in[:, cols] @ w_o[:, cols].T).pow(2).sum()
    assert torch.allclose(heads[1], energy_head, rtol=1e-4)


MLP_WEIGHTS = {"gate_proj": 1, "up_proj": 1, "down_proj": 0}  # weight -> the axis summed to leave one per channel


def mlp_gradients(model, batches: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Plain autograd: layer 1's MLP weight gradients of each batch's loss."""
    mlp, out = decoder_layers(model)[1].mlp, []
    for batch in batches:
        model.zero_grad()
        for name in MLP_WEIGHTS:
            getattr(mlp, name).weight.requires_grad_(True)
        model(input_ids=batch, labels=batch).loss.backward()
        out.append({name: getattr(mlp, name).weight.grad.clone() for name in MLP_WEIGHTS})
        for name in MLP_WEIGHTS:
            getattr(mlp, name).weight.requires_grad_(False)
    model.zero_grad()
    return out


def test_taylor_scores_are_llm_pruners_and_the_per_sequence_variant(tiny_model: Path):
    model = load_model(tiny_model)
    sequences = torch.randint(0, 49152, (3, 8))
    weight = {name: getattr(decoder_layers(model)[1].mlp, name).weight.detach() for name in MLP_WEIGHTS}
    batch = mlp_gradients(model, [sequences])[0]
    each = mlp_gradients(model, [sequence[None] for sequence in sequences])
    fisher = {name: sum(g[name].pow(2) for g in each) / len(each) for name in MLP_WEIGHTS}
    expected = {
        "param_first": sum((weight[n] * batch[n]).abs().sum(a) for n, a in MLP_WEIGHTS.items()),
        "param_mix": sum((weight[n] * batch[n] - 0.5 * weight[n] * fisher[n] * weight[n]).abs().sum(a)
                         for n, a in MLP_WEIGHTS.items()),
        "taylor_per_sequence": sum((weight[n] * g[n]).abs().sum(a) for g in each for n, a in MLP_WEIGHTS.items()),
    }
    scores = {}
    for kind, channels in expected.items():
        heads, scores[kind] = taylor_scores(model, sequences, kind, device="cpu")[1]
        assert torch.allclose(scores[kind], channels, rtol=1e-4, atol=1e-9), kind
        assert heads.shape == (2, 2) and (heads > 0).all()
    # the second-order term is small on a random model: check it on its own
    second_order = expected["param_mix"] - expected["param_first"]
    assert torch.allclose(scores["param_mix"] - scores["param_first"], second_order, rtol=0.01,
                          atol=0.01 * float(second_order.abs().max()))
    assert second_order.abs().max() > 0
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())
