"""Activation dump: run the model over documents and write residual-stream activations to Parquet shards.

Per shard of documents, three files are written, each atomically: every token's activation at each captured layer,
each document's mean activation (the raw-activation baseline), and a seeded sample of token activations for SAE
training. A rerun skips shards whose files all exist, so a killed dump resumes where it stopped.

A sequence's first token is not kept: it is the "attention sink", whose residual norm is about a hundred times any
other token's (SmolLM2: ~24,000 against ~180). Kept, it would dominate the SAE's loss and every pooled embedding
while saying nothing about the document. A one-token document keeps its only token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from finescope_core import storage
from finescope_core.config import DumpConfig
from finescope_core.coordinates import sensitivity
from finescope_core.formats import MANIFEST_FILE
from finescope_core.model_structure import decoder_layers, truncated
from finescope_core.models import load_model, load_tokenizer
from finescope_core.progress import progress

KINDS = ("tokens", "pooled", "sample")


@dataclass(frozen=True)
class Shard:
    """A group of documents dumped together; ``index`` names its files."""

    index: int
    doc_ids: list[str]
    token_ids: list[list[int]]


DEFAULT_DEPTHS = (0.25, 0.5, 0.75)


def resolve_layers(requested: Sequence[int] | None, n_layers: int) -> list[int]:
    """Captured layers: by default a quarter, half and three quarters of the depth (selection joins their SAE codes,
    which curated better than the middle layer alone on the curation bench); each index must exist in the model."""
    layers = list(requested) if requested else [min(round(n_layers * depth), n_layers - 1) for depth in DEFAULT_DEPTHS]
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"dump.layers: layer {layer} is out of range; the model has layers 0..{n_layers - 1}")
    return sorted(set(layers))


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text, truncated; a text that tokenises to nothing is an error (it has no activations)."""
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(
            f"{len(empty)} document(s) tokenise to nothing (first at index {empty[0]}); remove empty texts"
        )
    return encoded


def plan_shards(doc_ids: Sequence[str], token_ids: list[list[int]], shard_docs: int) -> list[Shard]:
    """Sort documents by length (so batches pad little) and cut them into shards of ``shard_docs``."""
    order = sorted(range(len(doc_ids)), key=lambda i: (len(token_ids[i]), doc_ids[i]))
    return [
        Shard(n, [doc_ids[i] for i in chunk], [token_ids[i] for i in chunk])
        for n, chunk in enumerate(order[start : start + shard_docs] for start in range(0, len(order), shard_docs))
    ]


@torch.no_grad()
def residual_stream(model, batch_ids: list[list[int]], layers: list[int], pad_id: int, device: str) -> dict[int, tuple]:
    """Per layer: (activations [batch, seq, d], mask [batch, seq]) for one right-padded batch."""
    width = max(len(ids) for ids in batch_ids)
    input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for row, ids in enumerate(batch_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    captured: dict[int, torch.Tensor] = {}
    blocks = decoder_layers(model)
    hooks = [
        blocks[layer].register_forward_hook(
            lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out[0] if isinstance(out, tuple) else out)
        )
        for layer in layers
    ]
    try:
        with truncated(model, max(layers) + 1):
            model.model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return {layer: (captured[layer].float().cpu(), mask.bool()) for layer in layers}


def _vectors(matrix: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def stored(acts: np.ndarray, dtype: str) -> np.ndarray:
    """A shard's token activations in the stored precision: float16 when asked and every value fits its range;
    otherwise float32, as casting would turn the larger values into inf (Gemma 3's massive activations pass
    float16's 65,504). Readers take either (``vectors``)."""
    if dtype == "float16" and np.abs(acts).max(initial=0) <= np.finfo(np.float16).max:
        return acts.astype(np.float16)
    return acts.astype(np.float32, copy=False)


def shard_uris(out_uri: str, index: int) -> dict[str, str]:
    return {kind: storage.join(out_uri, kind, f"shard-{index:05d}.parquet") for kind in KINDS}


def dump_shard(model, shard: Shard, layers: list[int], cfg: DumpConfig, sample_rate: float, pad_id: int,
               device: str, out_uri: str) -> int:
    """Dump one shard's three files; returns its token count."""
    tokens = {name: [] for name in ("doc_id", "position", "layer", "act")}
    pooled = {name: [] for name in ("doc_id", "layer", "act", "n_tokens")}
    rng = np.random.default_rng([cfg.seed, shard.index])
    sample = {name: [] for name in ("doc_id", "position", "layer", "act")}
    for start in range(0, len(shard.doc_ids), cfg.batch_size):
        batch_docs = shard.doc_ids[start : start + cfg.batch_size]
        acts = residual_stream(model, shard.token_ids[start : start + cfg.batch_size], layers, pad_id, device)
        for layer, (hidden, mask) in acts.items():
            for row, doc_id in enumerate(batch_docs):
                doc_acts = hidden[row][mask[row]].numpy()
                first = 1 if len(doc_acts) > 1 else 0  # skip the attention sink
                doc_acts = doc_acts[first:]
                n = doc_acts.shape[0]
                tokens["doc_id"].extend([doc_id] * n)
                tokens["position"].extend(range(first, first + n))
                tokens["layer"].extend([layer] * n)
                tokens["act"].append(doc_acts)
                pooled["doc_id"].append(doc_id)
                pooled["layer"].append(layer)
                pooled["act"].append(doc_acts.mean(0, keepdims=True).astype(np.float32))
                pooled["n_tokens"].append(n)
                keep = np.flatnonzero(rng.random(n) < sample_rate)
                sample["doc_id"].extend([doc_id] * len(keep))
                sample["position"].extend((keep + first).tolist())
                sample["layer"].extend([layer] * len(keep))
                sample["act"].append(doc_acts[keep].astype(np.float32))
    tokens["act"] = [stored(np.concatenate(tokens["act"]), cfg.dtype)]
    uris = shard_uris(out_uri, shard.index)
    for kind, columns in (("tokens", tokens), ("pooled", pooled), ("sample", sample)):
        metadata = {k: v for k, v in columns.items() if k != "act"}
        table = pa.table({**metadata, "act": _vectors(np.concatenate(columns["act"]))})
        storage.write_parquet(table, uris[kind])
    return len(tokens["doc_id"])


def write_sensitivity(model, token_ids: list[list[int]], layers: list[int], cfg: DumpConfig, uri: str) -> None:
    """Per captured layer, each coordinate's gradient sensitivity on a seeded sample of the documents."""
    rng = np.random.default_rng(cfg.seed)
    chosen = [token_ids[i] for i in rng.permutation(len(token_ids))[: cfg.sensitivity_docs]]
    scores = {str(layer): sensitivity(model, chosen, layer, cfg.sensitivity_probes, cfg.seed).tolist()
              for layer in layers}
    storage.write_json(uri, scores)


def shard_done(out_uri: str, index: int) -> bool:
    return all(storage.exists(uri) for uri in shard_uris(out_uri, index).values())


def dump_activations(model_dir: str | Path, doc_ids: Sequence[str], texts: Sequence[str], out_uri: str,
                     cfg: DumpConfig, device: str = "cpu", dtype: str = "float32") -> dict:
    """Dump activations of ``texts`` under ``out_uri``; resumes a partial dump; returns the manifest."""
    if not texts:
        raise ValueError("the pool is empty: no documents to dump")
    if len(set(doc_ids)) != len(doc_ids):
        raise ValueError("doc_id values must be unique")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, device, dtype)
    layers = resolve_layers(cfg.layers, len(decoder_layers(model)))
    token_ids = tokenize(tokenizer, texts, cfg.max_tokens)
    shards = plan_shards(doc_ids, token_ids, cfg.shard_docs)
    total_tokens = sum(max(1, len(ids) - 1) for ids in token_ids) * len(layers)  # stored tokens (no sink)
    sample_rate = min(1.0, cfg.sae_sample_tokens / total_tokens)
    todo = [shard for shard in shards if not shard_done(out_uri, shard.index)]
    for shard in progress(todo, "activation dump (shards)"):
        dump_shard(model, shard, layers, cfg, sample_rate, tokenizer.pad_token_id, device, out_uri)
    if cfg.sensitivity_docs and not storage.exists(storage.join(out_uri, "sensitivity.json")):
        write_sensitivity(model, token_ids, layers, cfg, storage.join(out_uri, "sensitivity.json"))
    manifest = {
        "layers": layers,
        "d_model": int(model.config.hidden_size),
        "n_docs": len(doc_ids),
        "n_tokens": total_tokens // len(layers),
        "n_shards": len(shards),
        "sample_rate": sample_rate,
        "expected_sample_tokens": math.floor(total_tokens * sample_rate),
    }
    storage.write_json(storage.join(out_uri, MANIFEST_FILE), manifest)
    return {**manifest, "shards_reused": len(shards) - len(todo)}  # how this run got there: not in the artifact


def vectors(table: pa.Table, column: str = "act") -> np.ndarray:
    """A fixed-size-list column as a float32 matrix [rows, width]."""
    values = table[column].combine_chunks()
    matrix = values.flatten().to_numpy(zero_copy_only=False).reshape(len(table), values.type.list_size)
    return matrix.astype(np.float32, copy=False)


def layer_rows(table: pa.Table, layer: int) -> pa.Table:
    """The rows of a dump table captured at ``layer``."""
    return table.filter(pc.equal(table["layer"], layer))
