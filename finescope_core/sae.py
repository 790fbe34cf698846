"""Sparse autoencoder on dumped activations, trained and saved with sae-lens.

The trainer is fed by a data provider that streams the dump's token sample from Parquet (one shard in memory at a
time), so no HookedTransformer or activation store is involved and the same code reads local or s3:// shards.
Each captured layer gets its own SAE, in a standard sae-lens folder (``SAE.load_from_disk`` loads it) with its
``metrics.json``, under ``layer-<L>/`` of the stage's folder.

One document in ``HELD_OUT_EVERY`` of the sample (chosen by a stable hash of its id) is never trained on: its tokens
give the figures in ``metrics.json`` (FVU, L0, dead latents), so they say how the SAE does on tokens it has not seen,
and the incremental drift test compares new shards against a held-out figure, not an in-sample one. The in-sample
FVU is kept beside them as ``train_fvu``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from itertools import islice

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from finescope_core import storage
from finescope_core.activations import layer_rows, vectors
from finescope_core.config import SAEConfig
from finescope_core.coordinates import top_coordinates
from finescope_core.formats import METRICS_FILE
from finescope_core.progress import progress

EVAL_TOKENS = 20_000
HELD_OUT_EVERY = 10
COORDINATES = "coordinates.json"


def _sae_lens():
    import sae_lens  # heavy import (about 10 s): only when an SAE is trained or loaded

    return sae_lens


def held_out_documents(shard_uris: list[str]) -> set[str]:
    """The sample's documents kept out of training: one in ``HELD_OUT_EVERY`` (at least one), by a stable hash of
    the id, so that the same documents are held out in every process and run."""
    ids = {doc_id for uri in shard_uris for doc_id in storage.read_parquet(uri, ["doc_id"])["doc_id"].to_pylist()}
    if len(ids) < 2:
        raise ValueError(f"the activation sample holds {len(ids)} document(s); an SAE needs at least two (one is held "
                         "out to measure it): dump more documents")
    ranked = sorted(ids, key=lambda doc_id: hashlib.blake2b(doc_id.encode(), digest_size=8).digest())
    return set(ranked[: max(1, len(ranked) // HELD_OUT_EVERY)])


def _sample_rows(uri: str, layer: int, documents: pa.Array | None = None, inside: bool = True) -> pa.Table:
    """One shard's sample rows of ``layer``: all of them, or those of ``documents`` (``inside``) or of the others."""
    table = layer_rows(storage.read_parquet(uri), layer)
    if documents is None:
        return table
    member = pc.is_in(table["doc_id"], value_set=documents)
    return table.filter(member if inside else pc.invert(member))


def _id_array(documents: set[str] | frozenset[str]) -> pa.Array | None:
    """Document ids as the value set ``_sample_rows`` filters by (None for no documents: no filter)."""
    return pa.array(sorted(documents), pa.string()) if documents else None


def sample_tokens(shard_uris: list[str], layer: int, documents: set[str] | None = None) -> np.ndarray:
    """Up to ``EVAL_TOKENS`` token activations of ``layer``, in shard order: of ``documents`` only when given (the
    held-out ones), else of every document. Shards after the last one needed are not read."""
    ids = None if documents is None else pa.array(sorted(documents), pa.string())
    rows, count = [], 0
    for uri in shard_uris:
        rows.append(vectors(_sample_rows(uri, layer, ids)))
        count += len(rows[-1])
        if count >= EVAL_TOKENS:
            break
    return np.concatenate(rows)[:EVAL_TOKENS]


def token_batches(shard_uris: list[str], layer: int, batch_size: int, seed: int,
                  coordinates: list[int] | None = None,
                  exclude: set[str] | frozenset[str] = frozenset()) -> Iterator[torch.Tensor]:
    """Endless shuffled batches of token activations [batch, d_in], streaming one shard at a time (without the
    documents in ``exclude``)."""
    rng = np.random.default_rng(seed)
    carry = np.empty((0, 0), dtype=np.float32)
    excluded = _id_array(exclude)
    while True:
        for index in rng.permutation(len(shard_uris)):
            rows = vectors(_sample_rows(shard_uris[index], layer, excluded, inside=False))
            if coordinates is not None:
                rows = rows[:, coordinates]
            if not len(rows):
                continue
            rows = rows[rng.permutation(len(rows))]
            carry = rows if carry.size == 0 else np.concatenate([carry, rows])
            while len(carry) >= batch_size:
                yield torch.from_numpy(np.ascontiguousarray(carry[:batch_size]))
                carry = carry[batch_size:]


def build_training_sae(d_in: int, cfg: SAEConfig):
    """An untrained sae-lens SAE of the configured architecture, with input-norm scaling."""
    sl = _sae_lens()
    common = dict(d_in=d_in, d_sae=d_in * cfg.expansion, normalize_activations="expected_average_only_in")
    torch.manual_seed(cfg.seed)
    if cfg.architecture == "topk":
        if cfg.k > d_in * cfg.expansion:
            raise ValueError(f"sae.k={cfg.k} exceeds d_sae={d_in * cfg.expansion}; lower k or raise expansion")
        return sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(k=cfg.k, **common))
    return sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, **common))


@torch.no_grad()
def quality(sae, activations: torch.Tensor) -> dict[str, float]:
    """Fraction of variance unexplained, mean active latents per token, and the share of latents that never fire."""
    codes = sae.encode(activations)
    recon = sae.decode(codes)
    residual = (activations - recon).pow(2).sum()
    total = (activations - activations.mean(0)).pow(2).sum()
    active = codes > 0
    return {
        "fvu": float(residual / total),
        "l0": float(active.sum(1).float().mean()),
        "dead_fraction": float((~active.any(0)).float().mean()),
        "eval_tokens": int(activations.shape[0]),
    }


def fit_sae(sample_uris: list[str], layer: int, out_uri: str, cfg: SAEConfig, device: str = "cpu",
            sensitivity_uri: str | None = None) -> dict:
    """Train an SAE on the token samples (folders of shards: one per dump) of one layer and save it (sae-lens
    format) under ``out_uri``.

    With ``cfg.input_coordinates`` = K, the SAE sees only the K most gradient-sensitive coordinates (scores read
    from ``sensitivity_uri``); their indices are saved beside it in ``coordinates.json``.
    """
    sl = _sae_lens()
    shards = [shard for uri in sample_uris for shard in storage.listdir(uri, ".parquet")]
    if not shards:
        raise FileNotFoundError(f"no activation sample shards under {sample_uris}; run the activation dump first")
    first = vectors(layer_rows(storage.read_parquet(shards[0]), layer))
    if first.size == 0:
        raise ValueError(f"the activation sample has no tokens of layer {layer}; check dump.layers")
    coordinates = None
    if cfg.input_coordinates:
        if not sensitivity_uri or not storage.exists(sensitivity_uri):
            raise ValueError("sae.input_coordinates needs coordinate sensitivity scores: set dump.sensitivity_docs > 0")
        scores = np.array(storage.read_json(sensitivity_uri)[str(layer)])
        coordinates = top_coordinates(scores, cfg.input_coordinates)
        first = first[:, coordinates]
    held_out = held_out_documents(shards)
    d_in = first.shape[1]
    sae = build_training_sae(d_in, cfg)
    steps = max(1, cfg.training_tokens // cfg.batch_size)
    norm_batches = min(50, steps)
    from sae_lens.config import SAETrainerConfig

    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr,
        lr_warm_up_steps=min(100, steps // 10),
        device=device,
        n_batches_for_norm_estimate=norm_batches,
        # A latent silent this many steps counts as dead and is trained by the AuxK loss; sae-lens's default (1000
        # steps) would never trigger in short runs, leaving most latents dead.
        dead_feature_window=min(1000, max(20, steps // 20)),
        logger=sl.LoggingConfig(log_to_wandb=False),
    )
    batches = token_batches(shards, layer, cfg.batch_size, cfg.seed, coordinates, held_out)
    # sae-lens draws the norm estimate's batches, then one batch a step: exactly this many
    provider = progress(islice(batches, norm_batches + steps), f"SAE fit, layer {layer} (batches)",
                        total=norm_batches + steps)
    trained = sl.SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider).fit()
    next(provider, None)  # ends the count: the progress of a loop is reported once its last item is done with
    unseen = sample_tokens(shards, layer, held_out)
    unseen = unseen if coordinates is None else unseen[:, coordinates]
    seen = vectors(_sample_rows(shards[0], layer, _id_array(held_out), inside=False))[:EVAL_TOKENS]
    seen = seen if coordinates is None else seen[:, coordinates]
    with storage.staged_directory(out_uri) as scratch:
        trained.save_inference_model(scratch)
        config = scratch / "cfg.json"  # sae-lens writes its keys in an order that varies by process
        storage.write_json(str(config), json.loads(config.read_text()))
        inference = sl.SAE.load_from_disk(str(scratch), device=device)
        metrics = {"layer": layer, "d_in": d_in, "d_sae": d_in * cfg.expansion, "steps": steps,
                   **quality(inference, torch.tensor(unseen, device=device)),
                   "eval": "held_out", "held_out_docs": len(held_out),
                   "train_fvu": quality(inference, torch.tensor(seen, device=device))["fvu"]}
        storage.write_json(str(scratch / METRICS_FILE), metrics)
        if coordinates is not None:
            storage.write_json(str(scratch / COORDINATES), coordinates)
    return metrics


def layer_folder(uri: str, layer: int) -> str:
    """Where the SAE of ``layer`` lies under an SAE stage's folder."""
    return storage.join(uri, f"layer-{layer}")


def fit_saes(sample_uris: list[str], layers: list[int], out_uri: str, cfg: SAEConfig, device: str = "cpu",
             sensitivity_uri: str | None = None) -> dict:
    """One SAE per layer of ``layers`` (see :func:`fit_sae`), each under :func:`layer_folder` of ``out_uri``;
    returns the layers and each one's metrics."""
    metrics = {str(layer): fit_sae(sample_uris, layer, layer_folder(out_uri, layer), cfg, device, sensitivity_uri)
               for layer in layers}
    return {"layers": list(layers), "by_layer": metrics}


def load_saes(sae_ref: dict, device: str = "cpu") -> dict[int, tuple[object, list[int] | None]]:
    """Every layer's inference SAE (and the coordinates it reads) of an SAE stage's reference."""
    return {layer: load_sae(layer_folder(sae_ref["uri"], layer), device) for layer in sae_ref["info"]["layers"]}


def load_sae(uri: str, device: str = "cpu") -> tuple[object, list[int] | None]:
    """An inference SAE from a folder written by ``fit_sae`` (local or remote), and the activation coordinates it
    reads (None: all of them)."""
    folder = storage.fetch_directory(uri)
    coordinates = storage.read_json(str(folder / COORDINATES)) if (folder / COORDINATES).exists() else None
    return _sae_lens().SAE.load_from_disk(str(folder), device=device), coordinates
