"""Structured pruning in the manner of LLM-Pruner, calibrated on the curated domain data.

Per decoder layer, MLP channels and, with ``prune_heads``, whole query heads (the same number inside every kv group,
so GQA stays valid) are removed, ranked by an importance score (``finescope_core.importance``). Heads are kept by
default: taking the whole ratio from the MLP, whose refit absorbs a removal better, leaves the model closer to
dense. Every layer keeps the same widths, so the result is a stock transformers folder. Beyond LLM-Pruner, the
layers are pruned in order on calibration text and the output projections (``o_proj``, ``down_proj``) are refit by
least squares (``finescope_core.layerwise``): by default to the layer's unpruned weights applied to the pruned
model's inputs, or (``refit_target: dense``) to the unpruned model's layer outputs. Within a layer, the attention
is pruned, refit and (where it lost heads) tuned first, and the MLP's statistics are taken on what that attention now
feeds it. The pruned MLP and an attention that lost heads are tuned as a whole by a few gradient steps towards the
same target (``finescope_core.refine``, ``finescope_core.refine_attention``); below an attention that lost heads,
the MLP's steps aim at the whole unpruned layer's output, so that it also takes up what the attention still misses.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_pruning as tp

from finescope_core.config import PruneConfig
from finescope_core.heap import mapped_large_allocations, release_free_memory
from finescope_core.importance import (
    TAYLOR,
    AttentionShape,
    attention_shape,
    output_energies,
    static_scores,
    taylor_scores,
)
from finescope_core.layerwise import (
    InputStatistics,
    LayerInputs,
    capture_inputs,
    corrected_weight,
    input_statistics,
    refit_columns,
    residual_weights,
    run_layer,
)
from finescope_core.model_structure import decoder_layers, output_norm
from finescope_core.models import count_parameters, load_model, load_tokenizer, prefix_token_id
from finescope_core.obs import obs_removal
from finescope_core.precision import resolve_precision
from finescope_core.progress import progress
from finescope_core.refine import mlp_inputs, mlp_outputs, refine_mlp, residual_targets, storage_dtype
from finescope_core.refine_attention import attention_targets, refine_attention

SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM", "Gemma3ForCausalLM")
CALIBRATION_BATCH = 8  # sequences per forward in the layer-by-layer pass
TOKENISE_BATCH = 64  # calibration texts tokenised at a time, until the windows are full


@dataclass(frozen=True)
class Plan:
    """Widths to remove in every decoder layer."""

    heads_per_group: int
    mlp_channels: int


def check_supported(model: torch.nn.Module) -> None:
    name = type(model).__name__
    if name not in SUPPORTED:
        raise ValueError(f"unsupported architecture {name}: prune supports {', '.join(SUPPORTED)}")


def head_removal(ideal: float, hidden: int, n_kv: int, n_rep: int) -> int:
    """Query heads to remove per kv group: the count nearest ``ideal`` that transformers' configs accept
    (the remaining head count must divide hidden_size) and that leaves every group a head."""
    valid = [h for h in range(n_rep) if hidden % (n_kv * (n_rep - h)) == 0]
    return min(valid, key=lambda h: (abs(h - ideal), h))


def plan_widths(model, ratio: float, prune_heads: bool, width_multiple: int = 1, ratio_of: str = "total") -> Plan:
    """Per-layer widths that remove ``ratio`` of the parameters ``ratio_of`` counts (all of them, or the decoder
    layers') as closely as uniform widths allow, keeping an MLP width that is a multiple of ``width_multiple``
    (matrix kernels run markedly slower on odd widths)."""
    shape = attention_shape(model)
    hidden, n_layers = model.config.hidden_size, len(decoder_layers(model))
    block = sum(p.numel() for p in decoder_layers(model)[0].parameters())
    counted = count_parameters(model) if ratio_of == "total" else n_layers * block
    target = ratio * counted
    ideal_heads = shape.n_rep * target / (n_layers * block)
    heads = head_removal(ideal_heads, hidden, shape.n_kv, shape.n_rep) if prune_heads else 0
    head_params = 2 * shape.head_dim * hidden  # q rows + o columns (biases are negligible)
    remaining = target - n_layers * shape.n_kv * heads * head_params
    channel_params = 3 * hidden
    intermediate = model.config.intermediate_size
    if remaining > n_layers * (intermediate - 1) * channel_params:
        most = n_layers * (shape.n_kv * heads * head_params + (intermediate - 1) * channel_params) / counted
        raise ValueError(f"prune.ratio={ratio} would leave a layer without MLP channels (embeddings and norms are not "
                         f"pruned; this model allows at most {most:.3f} of its {ratio_of} parameters); lower it")
    kept = intermediate - max(0, round(remaining / (n_layers * channel_params)))
    channels = intermediate - max(width_multiple, width_multiple * round(kept / width_multiple))
    channels = max(0, min(channels, intermediate - 1))
    if heads == 0 and channels == 0:
        raise ValueError(f"prune.ratio={ratio} removes nothing at this model's granularity; raise it")
    return Plan(heads, channels)


def calibration_sequences(tokenizer, texts: Sequence[str], n_samples: int, n_tokens: int) -> torch.Tensor:
    """Up to ``n_samples`` windows of ``n_tokens`` tokens [n, n_tokens], filled from the texts joined by EOS (a
    single shorter window when they hold fewer tokens than one). Each window opens with the token evaluation and
    recovery start every sequence with (BOS): a model trained with one puts outsized activations on a sequence's
    first token, so windows that open mid-text would calibrate on states the model never has.

    The texts are tokenised in order only until the windows are full: a wide calibration selection holds many more
    tokens than the windows read, and tokenising all of it raised the pruner's peak memory."""
    if not texts:
        raise ValueError("the calibration set is empty: curate some documents or use prune.calibration=generic")
    prefix, body = prefix_token_id(tokenizer), n_tokens - 1
    ids: list[int] = []
    for start in range(0, len(texts), TOKENISE_BATCH):
        if len(ids) >= n_samples * body:
            break
        batch = [text + (tokenizer.eos_token or "") for text in texts[start : start + TOKENISE_BATCH]]
        ids += [token for text_ids in tokenizer(batch, add_special_tokens=False)["input_ids"] for token in text_ids]
    if not ids:
        raise ValueError("the calibration texts tokenise to nothing; give longer documents")
    n_full = min(n_samples, len(ids) // body)
    if n_full == 0:
        return torch.tensor([[prefix, *ids]])
    return torch.tensor([[prefix, *ids[i * body : (i + 1) * body]] for i in range(n_full)])


def needs_calibration(cfg: PruneConfig) -> bool:
    return cfg.reconstruct or cfg.importance in (*TAYLOR, "activation", "obs")


@dataclass(frozen=True)
class Part:
    """The heads of a layer's attention or the channels of its MLP, as blocks of input columns of the output
    projection: ``per_group`` blocks leave each of ``groups`` equal runs of blocks (a kv group's query heads)."""

    projection: str
    block: int
    groups: int
    per_group: int


def parts(shape: AttentionShape, plan: Plan) -> tuple[Part, Part]:
    return (Part("self_attn.o_proj", shape.head_dim, shape.n_kv, plan.heads_per_group),
            Part("mlp.down_proj", 1, 1, plan.mlp_channels))


def choose_blocks(weight: torch.Tensor, part: Part, cfg: PruneConfig, stats: InputStatistics | None,
                  scores: torch.Tensor | None) -> list[int]:
    """The blocks of ``part`` to remove: the OBS choice, or the lowest ``scores`` (given for the Taylor kinds,
    magnitude and random; read off the statistics for activation) within each group."""
    if part.per_group == 0:
        return []
    if cfg.importance == "obs":
        return obs_removal(weight, stats.gram, part.block, part.groups, part.per_group)
    if cfg.importance == "activation":
        scores = output_energies(weight, stats.gram, part.block)
    blocks_per_group = scores.numel() // part.groups
    lowest = scores.reshape(part.groups, blocks_per_group).argsort(dim=1)[:, : part.per_group]
    return sorted(int(g * blocks_per_group + b) for g in range(part.groups) for b in lowest[g])


def prune_part(layer, part: Part, blocks: list[int], shape: AttentionShape, stats: InputStatistics | None,
               refit: bool) -> None:
    """Remove ``blocks`` of ``part`` (query heads with their ``q_proj`` rows, or MLP channels with their
    ``gate_proj``/``up_proj`` rows); with ``refit``, the output projection's kept columns are solved by least squares
    on ``stats`` (to the unpruned layer's output where the statistics hold the unpruned model's inputs)."""
    if not blocks:
        return
    projection = layer.get_submodule(part.projection)
    columns = [c for b in blocks for c in range(b * part.block, (b + 1) * part.block)]
    kept = sorted(set(range(projection.in_features)) - set(columns))
    weight = refit_columns(projection.weight.detach(), stats.gram, kept) if refit else None
    tp.prune_linear_in_channels(projection, columns)
    if weight is not None:
        projection.weight.data.copy_(weight)
    if part.projection == "self_attn.o_proj":
        tp.prune_linear_out_channels(layer.self_attn.q_proj, columns)
        layer.self_attn.num_key_value_groups = shape.n_rep - len(blocks) // shape.n_kv
    else:
        tp.prune_linear_out_channels(layer.mlp.gate_proj, columns)
        tp.prune_linear_out_channels(layer.mlp.up_proj, columns)


def prune_layer(layer, index: int, plan: Plan, shape: AttentionShape, cfg: PruneConfig, inputs: LayerInputs | None,
                scores: tuple[torch.Tensor, torch.Tensor] | None, dense_layer) -> dict:
    """Prune one layer's attention, then its MLP, each on statistics taken as it is at that point (the MLP's after
    the attention above it is pruned and refit). ``scores`` are the (head, channel) scores of a calibration-free or
    gradient importance; ``dense_layer``, the layer before pruning, makes the refit target its outputs."""
    removed = []
    from_copy = refining(cfg) and dense_layer is None  # the refinement's targets come from the layer as it was
    # the attention's steps run the whole layer, so it is copied whole only where its attention loses heads
    unpruned = copy.deepcopy(layer) if from_copy and plan.heads_per_group > 0 else None
    unpruned_mlp = (copy.deepcopy(layer.mlp) if unpruned is None else unpruned.mlp) if from_copy else None
    record = {}
    if inputs is not None:
        inputs.weights = None  # each block's own, set below
    for part, part_scores in zip(parts(shape, plan), scores or (None, None)):
        if part.per_group == 0 and dense_layer is None:  # nothing to remove, and nothing to correct
            removed.append([])
            continue
        if inputs is not None and cfg.error_scale == "residual":
            inputs.weights = residual_weights(layer, inputs, index, part.projection.split(".")[0])
            release_free_memory()  # the small weights, kept between the layer's freed outputs, would pin their pages
        stats = input_statistics(layer, inputs, index, part.projection, dense_layer) if inputs else None
        if stats is not None and stats.cross is not None:
            projection = layer.get_submodule(part.projection)
            projection.weight.data.copy_(corrected_weight(projection.weight.detach(), stats))
        blocks = choose_blocks(layer.get_submodule(part.projection).weight, part, cfg, stats, part_scores)
        with torch.no_grad():
            prune_part(layer, part, blocks, shape, stats, cfg.reconstruct)
        removed.append(blocks)
        if blocks and refining(cfg) and part.projection == "self_attn.o_proj":
            record["refine_attention"] = refine_layer_attention(layer, index, inputs, cfg, unpruned, dense_layer)
    record.update(query_heads=removed[0], mlp_channels=removed[1])
    if refining(cfg):
        record["refine"] = refine_layer_mlp(layer, index, inputs, cfg, unpruned_mlp, dense_layer, unpruned)
    return record


def refining(cfg: PruneConfig) -> bool:
    return cfg.reconstruct and cfg.refine_steps > 0


def refine_layer_attention(layer, index: int, inputs: LayerInputs, cfg: PruneConfig, unpruned,
                           dense_layer) -> dict[str, float]:
    """Tune the attention that lost query heads by gradient steps towards the refit's target: the unpruned layer's
    attention on the pruned model's inputs (``unpruned``), or with ``dense_layer`` on the unpruned model's."""
    source, states = (unpruned, inputs.hidden) if dense_layer is None else (dense_layer, inputs.dense)
    targets = attention_targets(source, states, inputs.kwargs[index], storage_dtype(cfg.precision))
    generator = torch.Generator().manual_seed(cfg.seed + index)
    return refine_attention(layer, inputs, index, targets, cfg.refine_steps, cfg.refine_relative_lr, generator,
                            cfg.precision)


def refine_layer_mlp(layer, index: int, inputs: LayerInputs, cfg: PruneConfig, unpruned_mlp, dense_layer,
                     unpruned_layer=None) -> dict[str, float]:
    """Tune the pruned MLP by gradient steps towards the refit's target: the unpruned MLP on the pruned model's
    inputs (``unpruned_mlp``), or with ``dense_layer`` the unpruned layer's MLP on the unpruned model's inputs.
    Where the attention lost heads (``unpruned_layer``, the whole layer as it was), the steps aim at the unpruned
    layer's output instead, so that the MLP also takes up the error the pruned attention leaves."""
    dtype = storage_dtype(cfg.precision)
    x = mlp_inputs(layer, inputs, index, dtype=dtype)
    generator = torch.Generator().manual_seed(cfg.seed + index)
    if unpruned_layer is not None:
        norm = output_norm(layer, "mlp")
        target = residual_targets(layer, unpruned_layer, inputs, index, norm, dtype)
        weights = None if inputs.weights is None else torch.cat(
            residual_weights(unpruned_layer, inputs, index, "mlp", norm_gain=False))
        return refine_mlp(layer.mlp, x, target, cfg.refine_steps, cfg.refine_relative_lr, generator, cfg.precision,
                          weights, norm)
    if dense_layer is None:
        target = mlp_outputs(unpruned_mlp, x)
    else:
        target = mlp_outputs(dense_layer.mlp, mlp_inputs(dense_layer, inputs, index, dense=True, dtype=dtype))
    weights = None if inputs.weights is None else torch.cat(inputs.weights)
    return refine_mlp(layer.mlp, x, target, cfg.refine_steps, cfg.refine_relative_lr, generator, cfg.precision, weights)


@mapped_large_allocations()  # large buffers go back to the system when freed, which lowers the peak memory
def prune_model(model_dir: str | Path, calibration_texts: Sequence[str], out_dir: Path, cfg: PruneConfig,
                device: str = "cpu") -> dict:
    """Prune ``model_dir`` to remove ``cfg.ratio`` of its parameters; save a stock transformers folder."""
    cfg = cfg.model_copy(update={"precision": resolve_precision(cfg.precision, device)})
    model = load_model(model_dir, device, "float32", in_memory=True)
    tokenizer = load_tokenizer(model_dir)
    check_supported(model)
    shape = attention_shape(model)
    plan = plan_widths(model, cfg.ratio, cfg.prune_heads, cfg.width_multiple, cfg.ratio_of)
    params_before = count_parameters(model)
    sequences = (calibration_sequences(tokenizer, calibration_texts, cfg.calibration_samples, cfg.calibration_tokens)
                 if needs_calibration(cfg) else None)
    taylor = taylor_scores(model, sequences, cfg.importance, device) if cfg.importance in TAYLOR else None
    layerwise = cfg.reconstruct or cfg.importance in ("activation", "obs")
    inputs = capture_inputs(model, list(sequences.split(CALIBRATION_BATCH))) if layerwise else None
    correcting = cfg.reconstruct and cfg.refit_target == "dense"
    if correcting:
        inputs.dense = [hidden.clone() for hidden in inputs.hidden]
    generator = torch.Generator().manual_seed(cfg.seed)
    removed = []
    for index, layer in enumerate(progress(decoder_layers(model), "prune layers")):
        dense_layer = copy.deepcopy(layer) if correcting else None
        scores = taylor[index] if taylor is not None else None
        if cfg.importance in ("magnitude", "random"):
            scores = static_scores(layer, cfg.importance, shape, generator)
        removed.append(prune_layer(layer, index, plan, shape, cfg, inputs, scores, dense_layer))
        if layerwise:
            run_layer(layer, inputs, index, advance=True)
        if correcting:
            run_layer(dense_layer, inputs, index, advance=True, dense=True)
        release_free_memory()  # each layer's buffers would otherwise leave holes that raise the peak
    model.config.num_attention_heads = shape.n_kv * (shape.n_rep - plan.heads_per_group)
    model.config.head_dim = shape.head_dim
    model.config.intermediate_size -= plan.mlp_channels
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "params_before": params_before,
        "params_after": count_parameters(model),
        "removed_fraction": 1 - count_parameters(model) / params_before,
        "ratio_of": cfg.ratio_of,
        "query_heads_removed_per_kv_group": plan.heads_per_group,
        "mlp_channels_removed_per_layer": plan.mlp_channels,
        "importance": cfg.importance,
        "reconstruct": cfg.reconstruct,
        "refit_target": cfg.refit_target if cfg.reconstruct else None,
        "refine": {"steps": cfg.refine_steps, "precision": cfg.precision} if refining(cfg) else None,
        "calibration_tokens": int(sequences.numel()) if sequences is not None else 0,
        "layers": removed,
    }
