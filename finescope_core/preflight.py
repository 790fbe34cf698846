"""Checks that run before any work, so a bad run fails in seconds with one line naming the field or file and the
fix, and writes nothing.

Everything cheap is checked: the seeds file, the pool's and eval sets' Parquet metadata (columns, row counts, nulls,
duplicate ids), the budget against the pool, an eval set for every evaluated domain, the model's architecture and
layers, the device. Everything that can be checked without writing is checked before the output is probed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from finescope_core import storage
from finescope_core.config import RunConfig
from finescope_core.dataset_eval import check_eval_dataset, file_of
from finescope_core.dataset_pool import check_dataset
from finescope_core.formats import MC_FILE, REQUIRED_DOC_COLUMNS, TEXT_FILE
from finescope_core.models import resolve
from finescope_core.prune import SUPPORTED
from finescope_core.stages import read_seeds


class InputError(ValueError):
    """Input that cannot run; the message names the field or file and the fix."""


def check_run(config: RunConfig, needs_eval: bool = True, needs_seeds: bool = True, prunes: bool = True,
              sweeps: bool = False) -> None:
    """Raise an ``InputError`` (or FileNotFoundError/PermissionError) naming the field if ``config`` cannot run."""
    if needs_seeds:
        read_seeds(config.select.seeds)
    data = config.data
    if needs_eval and (data.pool or data.dataset) and not (data.eval_sets or data.eval_datasets):
        source = "data.pool" if data.pool else "data.dataset"
        raise InputError(f"data.eval_sets is required with {source}: give eval/<domain>/{{mc,text}}.parquet sets, or "
                         "data.eval_datasets")
    if data.dataset:
        readable("data.dataset", data.dataset, check_dataset, data)
    if config.data.pool:
        documents = check_documents(config.data.pool, "data.pool")
        available = min(documents, config.data.max_pool_docs or documents)
        if needs_seeds and config.select.budget > available:
            raise InputError(f"select.budget={config.select.budget} is more than the pool's {available} documents; "
                             "lower the budget or give a larger pool")
    elif needs_seeds and config.data.max_pool_docs and config.select.budget > config.data.max_pool_docs:
        raise InputError(f"select.budget={config.select.budget} is more than data.max_pool_docs="
                         f"{config.data.max_pool_docs}; lower the budget or raise max_pool_docs")
    if needs_eval:
        check_eval_sets(config)
    if sweeps:
        check_sweep_metric(config)
    check_model(config, prunes)
    check_device(config.model.device)
    try:
        storage.check_writable(config.output)
    except PermissionError as exc:
        raise PermissionError(
            f"output={config.output!r} is not writable ({exc.__cause__}); choose another location"
        ) from None


def exists(uri: str, field: str) -> bool:
    """Whether ``uri`` exists; a one-line error if it cannot be reached (missing credentials, no such bucket, no
    access)."""
    try:
        return storage.exists(uri)
    except Exception as exc:  # botocore and s3fs raise their own types
        raise InputError(f"{field}={uri!r} cannot be read ({type(exc).__name__}: {str(exc)[:120]}); check the URI "
                         "and the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE)") from None


def parquet_metadata(uri: str, field: str) -> pq.FileMetaData:
    fs, path = storage.filesystem(uri)
    try:
        with fs.open(path, "rb") as file:
            return pq.read_metadata(file)
    except Exception as exc:
        raise InputError(f"{field}: {uri} is not a readable Parquet file ({str(exc)[:100]}); replace or remove "
                         "it") from None


def null_count(metadata: pq.FileMetaData, column: str) -> int | None:
    """Nulls in ``column`` by the file's statistics (None where a row group has none)."""
    index = metadata.schema.to_arrow_schema().get_field_index(column)
    total = 0
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_null_count:
            return None
        total += stats.null_count
    return total


def check_documents(uri: str, field: str) -> int:
    """The pool's documents: every shard readable, with string ``doc_id`` and ``text`` columns, no null and no
    duplicate ids, no null text. Returns the number of documents."""
    if not exists(uri, field):
        raise InputError(f"{field}={uri!r} does not exist; give a folder of *.parquet files")
    shards = storage.listdir(uri, ".parquet")
    if not shards:
        raise InputError(f"{field}={uri!r} holds no Parquet shards; give a folder of *.parquet files")
    ids: set[str] = set()
    rows = 0
    for shard in shards:
        metadata = parquet_metadata(shard, field)
        columns = metadata.schema.to_arrow_schema()
        for column in REQUIRED_DOC_COLUMNS:
            if column not in columns.names:
                raise InputError(f"{field}: {shard} has no {column!r} column (it has {columns.names}); each shard "
                                 "needs doc_id and text")
            if str(columns.field(column).type) not in ("string", "large_string"):
                raise InputError(f"{field}: {shard} column {column!r} is {columns.field(column).type}, not text")
        nulls = null_count(metadata, "text")
        if nulls is None:
            nulls = storage.read_parquet(shard, ["text"])["text"].null_count
        if nulls:
            raise InputError(f"{field}: {shard} has {nulls} documents without text; drop them or fill them in")
        shard_ids = storage.read_parquet(shard, ["doc_id"])["doc_id"]
        if shard_ids.null_count:
            raise InputError(f"{field}: {shard} has {shard_ids.null_count} documents without a doc_id")
        for doc_id in shard_ids.to_pylist():
            if doc_id in ids:
                raise InputError(f"{field}: doc_id {doc_id!r} appears twice (again in {shard}); doc_ids must be "
                                 "unique across the pool")
            ids.add(doc_id)
        rows += metadata.num_rows
    if rows == 0:
        raise InputError(f"{field}={uri!r} has no documents")
    return rows


def readable(field: str, source: str, check: Callable[..., None], *args: object) -> None:
    """Run ``check(*args)``, which opens the dataset ``source``; its errors become one-line ``InputError``s."""
    try:
        check(*args)
    except (ValueError, FileNotFoundError) as exc:
        raise InputError(str(exc)) from None
    except ConnectionError as exc:  # a hub id where no hub answers
        raise InputError(f"{field}={source!r} cannot be read here ({exc}); give a save_to_disk folder or data files, "
                         "or run where its hub is reachable") from None


def check_eval_datasets(config: RunConfig) -> None:
    """An entry of ``data.eval_datasets`` for every domain in ``eval_domains``, and each entry's first row builds."""
    entries = config.data.eval_datasets
    missing = [domain for domain in config.eval_domains if domain not in {entry.domain for entry in entries}]
    if missing:
        raise InputError(f"eval_domains: no entry of data.eval_datasets for {missing}; add one or drop the domain")
    for index, entry in enumerate(entries):
        readable(f"data.eval_datasets[{index}].dataset", entry.dataset, check_eval_dataset, entry, index)


def check_eval_sets(config: RunConfig) -> None:
    """An eval set for every domain in ``eval_domains``: the user's files or datasets, or a domain the demo corpus
    builds."""
    if config.data.eval_datasets:
        check_eval_datasets(config)
        return
    if not config.data.eval_sets:
        missing = [d for d in config.eval_domains if d not in config.data.demo.domains]
        if missing:
            raise InputError(f"eval_domains: the demo corpus has no eval set for {missing} (it builds "
                             f"{config.data.demo.domains}); add them to data.demo.domains or drop them")
        return
    uri = config.data.eval_sets
    if not exists(uri, "data.eval_sets"):
        raise InputError(f"data.eval_sets={uri!r} does not exist; give a folder of <domain>/mc.parquet and "
                         "<domain>/text.parquet files")
    for domain in config.eval_domains:
        files = [name for name in (MC_FILE, TEXT_FILE) if storage.exists(storage.join(uri, domain, name))]
        if not files:
            raise InputError(f"eval_domains: no eval set for {domain!r} under data.eval_sets={uri!r} (expected "
                             f"{domain}/mc.parquet or {domain}/text.parquet); add one or drop the domain")
        for name in files:
            parquet_metadata(storage.join(uri, domain, name), "data.eval_sets")


def check_sweep_metric(config: RunConfig) -> None:
    """The target domain has the eval set that ``sweep.metric`` is measured on (the demo corpus builds both)."""
    bpb = config.sweep.metric == "bpb"
    name, kind = (TEXT_FILE, "held-out documents") if bpb else (MC_FILE, "multiple-choice items")
    if config.data.eval_datasets:
        present = any(entry.domain == config.domain and file_of(entry) == name for entry in config.data.eval_datasets)
    elif config.data.eval_sets:
        present = storage.exists(storage.join(config.data.eval_sets, config.domain, name))
    else:
        return
    if not present:
        raise InputError(f"sweep.metric={config.sweep.metric!r}: the eval sets of {config.domain!r} have no {kind}; "
                         "choose the other metric or add the set")


def check_model(config: RunConfig, prunes: bool) -> None:
    """The model resolves to a folder whose architecture the stages support, with the layers the dump asks for."""
    folder = resolve(config.model.name)
    settings = json.loads((Path(folder) / "config.json").read_text())
    architectures = settings.get("architectures") or []
    if prunes and not set(architectures) & set(SUPPORTED):
        raise InputError(f"model.name={config.model.name!r} is a {architectures} model; pruning supports "
                         f"{', '.join(SUPPORTED)}: choose such a model")
    layers = (settings.get("text_config") or settings).get("num_hidden_layers")
    bad = [layer for layer in config.dump.layers or [] if layers is not None and not 0 <= layer < layers]
    if bad:
        raise InputError(f"dump.layers={config.dump.layers}: {bad} outside the model's layers 0..{layers - 1}")


def check_device(device: str) -> None:
    """The torch device exists on this machine."""
    import torch

    kind = device.split(":")[0]
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if kind not in available:
        raise InputError(f"model.device={device!r} is not a torch device; use cpu, cuda or mps")
    if not available[kind]:
        raise InputError(f"model.device={device!r}: this machine's torch has no {kind}; use cpu, or run on a "
                         f"machine with {kind}")
    if kind == "cuda" and ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise InputError(f"model.device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
