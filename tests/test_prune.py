import copy
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from finescope_core import prune, refine
from finescope_core.config import PruneConfig
from finescope_core.importance import attention_shape
from finescope_core.layerwise import capture_inputs, input_statistics, layer_output, module_input
from finescope_core.model_structure import decoder_layers, output_norm
from finescope_core.models import count_parameters, load_model, load_tokenizer, prefix_token_id
from finescope_core.prune import plan_widths, prune_model

CALIBRATION = ["The patient presented with chest pain and shortness of breath; an ECG was ordered. " * 6] * 4


@pytest.mark.parametrize("prune_heads", [True, False])
def test_prune_save_reload_identical_logits(family_model: Path, tmp_path: Path, prune_heads: bool):
    out = tmp_path / "pruned"
    report = prune_model(family_model, CALIBRATION, out, PruneConfig(
        ratio=0.01, calibration_samples=2, prune_heads=prune_heads,
        refine_steps=4))  # CI time: the steps' weights must round-trip too; what they achieve is tested below
    assert prune_heads or report["query_heads_removed_per_kv_group"] == 0
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()  # stock transformers, no custom code
    config = reloaded.config
    assert config.num_key_value_heads == 2 and config.num_attention_heads == 2 * (4 - report[
        "query_heads_removed_per_kv_group"])
    assert config.intermediate_size == 256 - report["mlp_channels_removed_per_layer"]
    assert report["params_after"] == count_parameters(reloaded) < report["params_before"]
    ids = torch.randint(0, 49152, (2, 12))
    with torch.no_grad():
        logits = reloaded(input_ids=ids).logits
        again = load_model(out)(input_ids=ids).logits
    assert torch.equal(logits, again)
    assert torch.isfinite(logits).all()


def test_pruned_model_is_the_in_memory_pruned_model(tiny_model: Path, tmp_path: Path):
    """The saved folder reproduces the pruned weights exactly: the removed groups are really gone. Without the
    refinement's steps, which tune the kept MLP rows, those rows are the dense model's."""
    out = tmp_path / "pruned"
    report = prune_model(tiny_model, CALIBRATION, out, PruneConfig(ratio=0.01, importance="magnitude",
                                                                     prune_heads=True, refine_steps=0))
    dense, pruned = load_model(tiny_model), load_model(out)
    layer = report["layers"][0]
    kept = [c for c in range(dense.config.intermediate_size) if c not in layer["mlp_channels"]]
    assert torch.equal(pruned.model.layers[0].mlp.up_proj.weight, dense.model.layers[0].mlp.up_proj.weight[kept])
    head_dim = dense.config.head_dim
    kept_rows = [r for h in range(dense.config.num_attention_heads) if h not in layer["query_heads"]
                 for r in range(h * head_dim, (h + 1) * head_dim)]
    assert torch.equal(pruned.model.layers[0].self_attn.q_proj.weight,
                       dense.model.layers[0].self_attn.q_proj.weight[kept_rows])


def test_either_refit_keeps_outputs_closer_to_the_dense_model(tiny_model: Path, tmp_path: Path):
    """Refitting o_proj/down_proj on calibration text, to either target, brings the pruned logits nearer the dense
    ones there."""
    dense = load_model(tiny_model)
    ids = torch.tensor([load_tokenizer(tiny_model)(CALIBRATION[0])["input_ids"][:64]])
    with torch.no_grad():
        target = dense(input_ids=ids).logits
    errors = {}
    for name, settings in {"none": {"reconstruct": False}, "own": {"refit_target": "own"},
                           "dense": {"refit_target": "dense"}}.items():
        cfg = PruneConfig(ratio=0.015, importance="magnitude", calibration_tokens=32, prune_heads=True, **settings)
        prune_model(tiny_model, CALIBRATION, tmp_path / name, cfg)
        with torch.no_grad():
            errors[name] = (load_model(tmp_path / name)(input_ids=ids).logits - target).norm()
    assert max(errors["dense"], errors["own"]) < 0.8 * errors["none"], errors


def test_the_mlp_is_pruned_on_the_inputs_the_pruned_attention_gives_it(tiny_model: Path, monkeypatch):
    """Within a layer the attention is pruned and refit first; the MLP's statistics (its channel choice and refit)
    are then taken through that attention, not through the whole one."""
    model = load_model(tiny_model)
    shape, layer = attention_shape(model), decoder_layers(model)[0]
    inputs = capture_inputs(model, [torch.randint(0, 49152, (2, 16))])
    whole_attention = input_statistics(layer, inputs, 0, "mlp.down_proj").gram
    used = {}
    monkeypatch.setattr(prune, "input_statistics", lambda *args: used.setdefault(args[3], input_statistics(*args)))
    cfg = PruneConfig(importance="activation", refit_target="own", refine_steps=0)  # steps would move gate and up
    record = prune.prune_layer(layer, 0, prune.Plan(1, 8), shape, cfg, inputs, None, None)
    heads, channels = record["query_heads"], record["mlp_channels"]
    kept = [c for c in range(len(whole_attention)) if c not in channels]
    pruned_attention = input_statistics(layer, inputs, 0, "mlp.down_proj").gram  # the kept channels' inputs
    assert len(heads) == shape.n_kv and len(channels) == 8
    assert torch.allclose(used["mlp.down_proj"].gram[kept][:, kept], pruned_attention, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(whole_attention[kept][:, kept], pruned_attention, rtol=1e-2)


def test_refinement_rows_are_every_batch_s_mlp_inputs_in_order(tiny_model: Path):
    """The refinement's rows are written batch by batch into one tensor (batches of unequal size here); they must
    be exactly the MLP inputs of every batch in order, and its targets the MLP applied to them."""
    model = load_model(tiny_model)
    layer = decoder_layers(model)[0]
    inputs = capture_inputs(model, list(torch.randint(0, 49152, (5, 12)).split(3)))
    rows = refine.mlp_inputs(layer, inputs, 0)
    expected = torch.cat([module_input(layer, "mlp", hidden, kwargs)
                          for hidden, kwargs in zip(inputs.hidden, inputs.kwargs[0])])
    assert rows.shape == (5 * 12, model.config.hidden_size) and torch.equal(rows, expected)
    with torch.no_grad():
        assert torch.allclose(refine.mlp_outputs(layer.mlp, rows), layer.mlp(rows), atol=1e-6)


class CountingTokenizer:
    """A tokenizer that records how many texts each call tokenises."""

    def __init__(self, tokenizer):
        self.tokenizer, self.batches = tokenizer, []

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)

    def __call__(self, texts: list[str], **kwargs):
        self.batches.append(len(texts))
        return self.tokenizer(texts, **kwargs)


def test_calibration_windows_open_like_evaluated_sequences(tiny_model: Path):
    """Every window starts with the token evaluation starts sequences with, then continues the texts in order; the
    texts past the tokens the windows need are not tokenised."""
    tokenizer = load_tokenizer(tiny_model)
    texts = ["first text " * 20, "second text " * 20]
    windows = prune.calibration_sequences(tokenizer, texts, n_samples=3, n_tokens=16)
    stream = tokenizer([t + tokenizer.eos_token for t in texts], add_special_tokens=False)["input_ids"]
    stream = stream[0] + stream[1]
    assert windows.shape == (3, 16)
    assert (windows[:, 0] == prefix_token_id(tokenizer)).all()
    assert windows[:, 1:].flatten().tolist() == stream[: 3 * 15]
    many = [f"text number {i} " * 4 for i in range(prune.TOKENISE_BATCH * 3)]
    counting = CountingTokenizer(tokenizer)
    full = prune.calibration_sequences(counting, many, n_samples=3, n_tokens=16)
    assert counting.batches == [prune.TOKENISE_BATCH]  # the texts after the windows are full are not tokenised
    stream = tokenizer([t + tokenizer.eos_token for t in many], add_special_tokens=False)["input_ids"]
    assert full[:, 1:].flatten().tolist() == [token for ids in stream for token in ids][: 3 * 15]
    short = prune.calibration_sequences(tokenizer, ["tiny"], n_samples=3, n_tokens=16)
    assert short.tolist() == [[prefix_token_id(tokenizer), *tokenizer("tiny" + tokenizer.eos_token,
                                                                      add_special_tokens=False)["input_ids"]]]


def test_heads_are_removed_evenly_per_kv_group(tiny_model: Path, tmp_path: Path):
    report = prune_model(tiny_model, CALIBRATION, tmp_path / "p", PruneConfig(ratio=0.01, importance="random",
                                                                                   prune_heads=True))
    for layer in report["layers"]:
        groups = [head // 2 for head in layer["query_heads"]]  # 4 query heads, 2 kv heads: 2 per group
        assert sorted(groups) == sorted(set(groups)) == [0, 1]


def test_bad_input(tiny_model: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="calibration set is empty"):
        prune_model(tiny_model, [], tmp_path / "p", PruneConfig(ratio=0.01))
    with pytest.raises(ValueError, match="at most"):
        prune_model(tiny_model, CALIBRATION, tmp_path / "p", PruneConfig(ratio=0.5))
    model = load_model(tiny_model)
    with pytest.raises(ValueError, match="removes nothing"):
        plan_widths(model, 1e-6, prune_heads=False)


def test_the_ratio_counts_all_parameters_or_the_decoder_layers_only(tiny_model: Path):
    model = load_model(tiny_model)
    config, total = model.config, count_parameters(model)
    decoder = sum(p.numel() for p in model.model.layers.parameters())

    def removed(plan) -> int:
        heads = config.num_key_value_heads * plan.heads_per_group * 2 * config.head_dim * config.hidden_size
        return config.num_hidden_layers * (heads + plan.mlp_channels * 3 * config.hidden_size)

    assert abs(removed(plan_widths(model, 0.01, True, 1)) / total - 0.01) < 0.001
    assert abs(removed(plan_widths(model, 0.3, True, 1, "decoder")) / decoder - 0.3) < 0.01
    with pytest.raises(ValueError, match="of its total parameters"):
        plan_widths(model, 0.3, True, 1)  # the embedding is most of this model


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.4])
def test_mlp_width_is_rounded_to_the_multiple_near_the_target(ratio: float, smollm2: Path):
    with torch.device("meta"):  # SmolLM2's real shape, no weights
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(smollm2))
    config, total = model.config, count_parameters(model)

    def removed(plan) -> float:
        heads = config.num_key_value_heads * plan.heads_per_group * 2 * config.head_dim * config.hidden_size
        return config.num_hidden_layers * (heads + plan.mlp_channels * 3 * config.hidden_size) / total

    exact, rounded = plan_widths(model, ratio, True, 1), plan_widths(model, ratio, True, 64)
    assert (config.intermediate_size - rounded.mlp_channels) % 64 == 0
    assert rounded.heads_per_group == exact.heads_per_group
    assert abs(removed(exact) - ratio) < 0.001
    assert abs(removed(rounded) - ratio) <= abs(removed(exact) - ratio) + 32 * 3 * 576 * 30 / total


def test_unsupported_architecture_lists_the_supported(tmp_path: Path, tiny_model: Path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=49152)).save_pretrained(folder)
    with pytest.raises(ValueError, match="LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM, "
                                         "Gemma3ForCausalLM"):
        prune_model(folder, CALIBRATION, tmp_path / "p", PruneConfig(ratio=0.1))


@pytest.fixture(scope="module")
def quarter_pruned(smollm2: Path, seed_texts, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """SmolLM2 pruned by 25% with the default method (OBS choice, least-squares refit and gradient refinement, here
    with little text and few steps to spare CI's time): the folder and report."""
    out = tmp_path_factory.mktemp("pruned") / "default"
    return out, prune_model(smollm2, seed_texts[1], out, PruneConfig(ratio=0.25, calibration_samples=16,
                                                                     refine_steps=4))


@pytest.mark.integration
def test_smollm2_quarter_pruned_reloads_exactly(quarter_pruned: tuple[Path, dict]):
    folder, report = quarter_pruned
    assert abs(report["removed_fraction"] - 0.25) < 0.005
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert count_parameters(reloaded) == report["params_after"]
    ids = torch.randint(0, 49152, (1, 16))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, load_model(folder)(input_ids=ids).logits)


@pytest.mark.integration
def test_smollm2_refit_beats_llm_pruner_scoring_on_held_out_text(smollm2: Path, seed_texts, quarter_pruned,
                                                                 tmp_path: Path):
    """On the real model, the default (OBS choice + least-squares refit) keeps held-out perplexity well below
    LLM-Pruner's first-order Taylor scoring without refit, at the same 25% cut and calibration text."""
    from finescope_core.evaluate import document_scores
    from finescope_core.formats import Document

    held_out, calibration = seed_texts
    taylor = PruneConfig(ratio=0.25, calibration_samples=16, importance="param_first", reconstruct=False,
                         prune_heads=True)  # LLM-Pruner removes heads too
    prune_model(smollm2, calibration, tmp_path / "taylor", taylor)
    tokenizer = load_tokenizer(smollm2)
    docs = [Document(str(i), text) for i, text in enumerate(held_out)]
    ppl = {}
    for label, folder in {"default": quarter_pruned[0], "taylor": tmp_path / "taylor"}.items():
        scores = document_scores(load_model(folder), tokenizer, docs, 128, 8)
        ppl[label] = math.exp(sum(scores["nll"]) / sum(scores["tokens"]))
    assert ppl["default"] < 0.5 * ppl["taylor"], ppl


def word_texts(seed: int, words: int, per_text: int) -> list[str]:
    """Texts of ``per_text`` words drawn at random from a small medical vocabulary."""
    drawn = random.Random(seed).choices("the a patient heart drug dose blood cell test acute chronic pain".split(),
                                        k=words)
    return [" ".join(drawn[i : i + per_text]) for i in range(0, words, per_text)]


def test_refinement_brings_the_pruned_mlps_closer_to_the_unpruned_ones(family_model: Path, tmp_path: Path):
    """Gradient steps on the kept MLP weights, after the least-squares refit, lower each layer's MLP error against
    the refit's target, and so the model's distance from the dense logits on text the steps did not see, in every
    model family (their MLPs differ in activation); the folder stays stock (same widths). Steps that raise that
    error (here, a rate far too large) are undone."""
    dense = load_model(family_model)
    texts = word_texts(seed=0, words=6000, per_text=400)
    ids = prune.calibration_sequences(load_tokenizer(family_model), texts[10:], 8, 64)  # text not calibrated on
    with torch.no_grad():
        target = dense(input_ids=ids).logits
    errors, reports = {}, {}
    for name, steps, lr in (("none", 0, 0.05), ("refined", 40, 0.015), ("diverged", 40, 500.0)):
        cfg = PruneConfig(ratio=0.01, calibration_samples=16, calibration_tokens=64, refine_steps=steps,
                          refine_relative_lr=lr, precision="float32")
        reports[name] = prune_model(family_model, texts[:10], tmp_path / name, cfg)
        with torch.no_grad():
            errors[name] = (load_model(tmp_path / name)(input_ids=ids).logits - target).norm()
    assert reports["refined"]["mlp_channels_removed_per_layer"] == reports["none"]["mlp_channels_removed_per_layer"]
    refined = [layer["refine"] for layer in reports["refined"]["layers"]]
    assert all(r["error_after"] < r["error_before"] for r in refined), refined
    assert "refine" not in reports["none"]["layers"][0]
    assert errors["refined"] < errors["none"], errors
    assert errors["diverged"] == errors["none"], errors


def heads_pruned_with_and_without(family_model: Path, tmp_path: Path, monkeypatch, function: str,
                                  without) -> tuple[dict, dict[str, float]]:
    """Prune a tiny model's query heads and MLP channels twice on the same text, the second time with ``prune``'s
    ``function`` replaced by ``without``; returns the first pruning's report and both models' distances from the
    dense logits on text the pruning did not see ("with", "without")."""
    dense = load_model(family_model)
    texts = word_texts(seed=1, words=6000, per_text=400)
    ids = prune.calibration_sequences(load_tokenizer(family_model), texts[10:], 8, 64)
    with torch.no_grad():
        target = dense(input_ids=ids).logits
    cfg = PruneConfig(ratio=0.3, ratio_of="decoder", prune_heads=True, calibration_samples=16,
                      calibration_tokens=64, refine_steps=40, precision="float32")
    report = prune_model(family_model, texts[:10], tmp_path / "with", cfg)
    monkeypatch.setattr(prune, function, without)
    prune_model(family_model, texts[:10], tmp_path / "without", cfg)
    assert report["query_heads_removed_per_kv_group"] > 0
    with torch.no_grad():
        distances = {name: (load_model(tmp_path / name)(input_ids=ids).logits - target).norm().item()
                     for name in ("with", "without")}
    return report, distances


def test_refinement_brings_an_attention_that_lost_heads_closer_to_the_unpruned_one(family_model: Path,
                                                                                     tmp_path: Path, monkeypatch):
    """With query heads pruned, gradient steps on the attention's kept weights lower each layer's attention error
    against the refit's target, and the model's distance from the dense logits on text the steps did not see, in
    every family (Qwen 3 and Gemma 3 add q/k norms, Gemma 3 sliding windows). The arm without them is the same
    pruning with the attention's steps skipped (the MLP's still run)."""
    report, distances = heads_pruned_with_and_without(family_model, tmp_path, monkeypatch, "refine_layer_attention",
                                                      lambda *args: {})
    steps = [layer["refine_attention"] for layer in report["layers"]]
    assert all(s["error_after"] < s["error_before"] for s in steps), steps
    assert distances["with"] < distances["without"], distances


def mlp_additions(layer, inputs, index: int) -> torch.Tensor:
    """What ``layer``'s MLP adds to the residual stream (through the norm after it, where there is one) per token."""
    addition = refine.mlp_addition(layer.mlp, output_norm(layer, "mlp"))
    with torch.no_grad():
        return torch.cat([addition(module_input(layer, "mlp", hidden, kwargs))
                          for hidden, kwargs in zip(inputs.hidden, inputs.kwargs[index])])


def test_residual_targets_are_what_the_mlp_adds_plus_the_layer_output_gap(family_model: Path):
    """Where the layer is still the unpruned one, the MLP's target is what it adds now (through the norm after it,
    in Gemma 3); where the attention's output is halved, the target is that addition plus the gap the halved
    attention leaves in the layer's output, so an MLP that met it would restore the unpruned layer's output."""
    model = load_model(family_model)
    layer = decoder_layers(model)[1]
    inputs = capture_inputs(model, list(torch.randint(0, 200, (2, 3, 16))))
    unchanged = refine.residual_targets(layer, copy.deepcopy(layer), inputs, 1, output_norm(layer, "mlp"))
    assert torch.allclose(unchanged, mlp_additions(layer, inputs, 1), atol=1e-5)
    halved = copy.deepcopy(layer)
    with torch.no_grad():
        halved.self_attn.o_proj.weight.mul_(0.5)
        gap = torch.cat([(layer_output(layer, hidden, kwargs) - layer_output(halved, hidden, kwargs)).flatten(0, 1)
                         for hidden, kwargs in zip(inputs.hidden, inputs.kwargs[1])])
    assert gap.abs().max() > 1e-3
    targets = refine.residual_targets(halved, layer, inputs, 1, output_norm(halved, "mlp"))
    assert torch.allclose(targets, mlp_additions(halved, inputs, 1) + gap, atol=1e-5)


def test_mlp_steps_below_an_attention_that_lost_heads_aim_at_the_whole_layer(family_model: Path, tmp_path: Path,
                                                                                monkeypatch):
    """With query heads pruned, the MLP's steps towards the unpruned layer's output (which the attention's error is
    part of) leave the model nearer the dense logits on text the steps did not see than steps towards the unpruned
    MLP's output alone, in every family; every layer's error still falls."""
    own_target = prune.refine_layer_mlp
    report, distances = heads_pruned_with_and_without(family_model, tmp_path, monkeypatch, "refine_layer_mlp",
                                                      lambda *args: own_target(*args[:6]))  # no unpruned layer
    assert all(layer["refine"]["error_after"] < layer["refine"]["error_before"] for layer in report["layers"])
    assert distances["with"] < distances["without"], distances


def test_refinement_in_bfloat16_lowers_the_error_and_keeps_float32_weights(tiny_model: Path, tmp_path: Path):
    """The steps under bfloat16 autocast (the default where the CPU computes it natively) do the float32 steps'
    work: every layer's error falls, and the saved weights stay float32. Few rows and steps, as bfloat16 is
    emulated, and far slower, on CPUs without it."""
    texts = word_texts(seed=1, words=3000, per_text=300)
    errors = {}
    for precision in ("bfloat16", "float32"):
        cfg = PruneConfig(ratio=0.01, calibration_samples=8, calibration_tokens=32, refine_steps=20,
                          refine_relative_lr=0.015, precision=precision)
        report = prune_model(tiny_model, texts, tmp_path / precision, cfg)
        errors[precision] = [layer["refine"] for layer in report["layers"]]
        assert all(r["error_after"] < r["error_before"] for r in errors[precision]), (precision, errors)
    assert errors["bfloat16"] != errors["float32"]  # the bfloat16 path was taken (rows held and stepped in it)
    with safe_open(tmp_path / "bfloat16" / "model.safetensors", "pt") as stored:
        assert {stored.get_slice(name).get_dtype() for name in stored.keys()} == {"F32"}


def test_refinement_counts_each_row_by_its_weight(tiny_model: Path):
    """Rows weighted 0 do not pull the steps: with noise as the target of half the rows, the steps that weight
    those rows 0 end nearer the other half's target than the steps that count every row alike."""
    torch.manual_seed(0)
    mlp = decoder_layers(load_model(tiny_model))[0].mlp
    x = torch.randn(512, mlp.gate_proj.in_features)
    with torch.no_grad():
        wanted = mlp(x) * 1.5
    noisy = torch.cat([wanted[:256], 5 * torch.randn_like(wanted[256:])])
    weights = torch.cat([torch.ones(256), torch.zeros(256)])
    errors = {}
    for name, row_weights in (("weighted", weights), ("unweighted", None)):
        tuned = copy.deepcopy(mlp)
        report = refine.refine_mlp(tuned, x, noisy, 30, 0.15, torch.Generator().manual_seed(0), "float32", row_weights)
        assert report["error_after"] < report["error_before"]
        with torch.no_grad():
            errors[name] = float((tuned(x[:256]) - wanted[:256]).square().mean())
    assert errors["weighted"] < 0.5 * errors["unweighted"], errors


def test_refinement_steps_follow_each_matrix_scale(tiny_model: Path):
    """The steps are sized to each weight matrix's RMS, so the same function written with an up projection 10x
    larger and a down projection 10x smaller is refined to the same function (one absolute rate would move the
    small matrix 10x further, relative to its size, and the large one 10x less)."""
    torch.manual_seed(0)
    mlp = decoder_layers(load_model(tiny_model))[0].mlp
    rescaled = copy.deepcopy(mlp)
    with torch.no_grad():
        rescaled.up_proj.weight.mul_(10)
        rescaled.down_proj.weight.div_(10)
    x = torch.randn(512, mlp.gate_proj.in_features)
    with torch.no_grad():
        wanted = mlp(x) * 1.5
        assert torch.allclose(rescaled(x), mlp(x), atol=1e-5)
    reports = [refine.refine_mlp(m, x, wanted, 20, 0.05, torch.Generator().manual_seed(0)) for m in (mlp, rescaled)]
    assert reports[0]["error_after"] < 0.9 * reports[0]["error_before"], reports
    assert reports[1]["error_after"] == pytest.approx(reports[0]["error_after"], rel=1e-3), reports
    with torch.no_grad():
        assert torch.allclose(rescaled(x), mlp(x), atol=1e-4, rtol=1e-3)
