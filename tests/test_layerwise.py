"""Layer-by-layer calibration passes, least-squares refits and importance scores, checked against direct formulas."""

from pathlib import Path

import torch

from finescope_core.importance import activation_scores, attention_shape, taylor_scores
from finescope_core.layerwise import capture_inputs, input_grams, refit_columns, run_layer
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


def test_layer_by_layer_pass_reproduces_the_model(tiny_model: Path):
    model = load_model(tiny_model)
    batches = [torch.randint(0, 49152, (2, 10)), torch.randint(0, 49152, (1, 7))]
    inputs = capture_inputs(model, batches)
    for index, layer in enumerate(decoder_layers(model)):
        run_layer(layer, inputs, index, advance=True)
    with torch.no_grad():
        for batch, last in zip(batches, inputs.hidden):
            expected = model(input_ids=batch, output_hidden_states=True).hidden_states[-1]
            assert torch.allclose(model.model.norm(last), expected, atol=1e-5)


def test_activation_scores_are_output_energies(tiny_model: Path):
    model = load_model(tiny_model)
    batches = [torch.randint(0, 49152, (2, 9))]
    inputs = capture_inputs(model, batches)
    layer = decoder_layers(model)[0]
    seen = {}
    layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("down", a[0]))
    layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("o", a[0]))
    grams = input_grams(layer, inputs, 0, ("self_attn.o_proj", "mlp.down_proj"))
    shape = attention_shape(model)
    heads, channels = activation_scores(layer, grams["self_attn.o_proj"], grams["mlp.down_proj"], shape)
    down_in = seen["down"].reshape(-1, seen["down"].shape[-1])
    w = layer.mlp.down_proj.weight
    energy_3 = (down_in[:, 3:4] @ w[:, 3:4].T).pow(2).sum()
    assert torch.allclose(channels[3], energy_3, rtol=1e-4)
    o_in = seen["o"].reshape(-1, seen["o"].shape[-1])
    cols = slice(shape.head_dim, 2 * shape.head_dim)  # query head 1 = kv group 0, second head
    energy_head = (o_in[:, cols] @ layer.self_attn.o_proj.weight[:, cols].T).pow(2).sum()
    assert torch.allclose(heads[0, 1], energy_head, rtol=1e-4)


def test_taylor_scores_sum_per_sequence_saliencies(tiny_model: Path):
    model = load_model(tiny_model)
    sequences = torch.randint(0, 49152, (2, 8))
    heads, channels = taylor_scores(model, sequences, second_order=False, device="cpu")[1]
    mlp = decoder_layers(model)[1].mlp
    weights = {mlp.gate_proj.weight: 1, mlp.up_proj.weight: 1, mlp.down_proj.weight: 0}  # weight -> summed axis
    expected = torch.zeros(mlp.up_proj.weight.shape[0])
    for sequence in sequences:  # the same saliency from plain autograd, one sequence at a time
        model.zero_grad()
        for weight in weights:
            weight.requires_grad_(True)
        model(input_ids=sequence[None], labels=sequence[None]).loss.backward()
        for weight, axis in weights.items():
            expected += (weight * weight.grad).abs().sum(axis).detach()
            weight.requires_grad_(False)
    assert torch.allclose(channels, expected, rtol=1e-4)
    assert heads.shape == (2, 2) and (heads > 0).all()
    assert not any(p.requires_grad for p in model.parameters())
