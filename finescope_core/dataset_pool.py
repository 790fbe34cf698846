"""A pool from the datasets ecosystem: a Hugging Face dataset (a hub id, a ``save_to_disk`` folder, or data files)
written as Parquet shards of documents (doc_id, text), the form every curation stage reads, incremental curation
included.

A document's text is a column, or a template over columns (``"{question}\\n{answer}"``). Rows are streamed (data files
and hub datasets) or memory-mapped (``save_to_disk`` folders) and written a shard at a time, so a dataset larger than
memory is never held whole.
"""

from __future__ import annotations

import glob
import string
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from finescope_core import storage
from finescope_core.addressing import source_fingerprint
from finescope_core.config import DataConfig

SHARD_DOCS = 10_000
BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}  # data files by suffix
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")  # text data files may be compressed: data.jsonl.gz
SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")  # what save_to_disk writes


def builder_of(path: str) -> str | None:
    """The datasets builder that reads a data file, by its suffix under any compression (None: not a data file)."""
    suffixes = Path(path).suffixes
    compressed = bool(suffixes) and suffixes[-1] in COMPRESSIONS
    if compressed:
        suffixes = suffixes[:-1]
    builder = BUILDERS.get(suffixes[-1]) if suffixes else None
    return None if compressed and builder == "parquet" else builder  # Parquet compresses inside the file


def data_files(source: str) -> list[str]:
    """The local data files a source names: a file, a glob, or a folder of data files (empty: not data files)."""
    paths = [str(path) for path in Path(source).iterdir()] if Path(source).is_dir() else glob.glob(source)
    return sorted(path for path in paths if builder_of(path))


def is_saved_dataset(source: str) -> bool:
    return Path(source).is_dir() and any((Path(source) / marker).is_file() for marker in SAVED_MARKERS)


def open_rows(source: str, split: str, field: str = "data.dataset") -> Iterable[dict]:
    """The rows of ``split`` of the dataset ``source`` (named ``field`` in errors), as dicts of column values,
    without loading it whole. Data files have one split, read whatever ``split`` says."""
    import datasets

    split_field = field.rsplit(".", 1)[0] + ".split"
    if is_saved_dataset(source):
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{split_field}={split!r} is not a split of {source}; it has {sorted(loaded)}")
            loaded = loaded[split]
        return loaded
    files = data_files(source)
    if files:
        builders = {builder_of(path) for path in files}
        if len(builders) > 1:
            raise ValueError(f"{field}={source!r} mixes file kinds {sorted(builders)}; give files of one kind")
        return datasets.load_dataset(builders.pop(), data_files=files, split="train", streaming=True)
    if Path(source).exists():
        raise ValueError(f"{field}={source!r} holds no dataset: give a save_to_disk folder or "
                         f"{'/'.join(BUILDERS)} files")
    if is_local_path(source):
        raise FileNotFoundError(f"{field}={source!r}: no such folder or data file; check the path (a hub id is "
                                "'owner/name')")
    return datasets.load_dataset(source, split=split, streaming=True)  # a hub id


def is_local_path(source: str) -> bool:
    """Whether ``source`` can only be a local path, never a hub id (``owner/name`` or ``name``): it is absolute or
    relative to a folder, a glob, has more than one ``/``, or ends like a data file."""
    return (source.startswith(("/", "./", "../", "~")) or any(char in source for char in "*?[")
            or source.count("/") > 1 or builder_of(source) is not None)


def document_text(template: str, row: dict, field: str = "data.text") -> str:
    """The text of one row: the column ``template`` names, or ``template`` filled from the row's columns (a null
    value as empty text)."""
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    missing = [name for name in (fields or [template]) if name not in row]
    if missing:
        raise ValueError(f"{field}={template!r} names column {missing[0]!r}, which the dataset lacks; its columns: "
                         f"{sorted(row)}")
    values = {name: "" if value is None else value for name, value in row.items()}  # a null cell reads as empty
    return template.format_map(values) if fields else str(values[template])


def row_id(id_column: str | None, row: dict, number: int, field: str = "data.id_column") -> str:
    """A row's id: its ``id_column`` value, or its row number."""
    if id_column is None:
        return str(number)
    if id_column not in row:
        raise ValueError(f"{field}={id_column!r} is not a column of the dataset; its columns: {sorted(row)}")
    return str(row[id_column])


def source_identity(source: str, split: str) -> str:
    """What a dataset's rows depend on: the files' content for local data, the id and split for a hub dataset (read
    once per id: pin a revision in the id to read a newer one)."""
    if is_saved_dataset(source):
        return source_fingerprint(source)
    files = data_files(source)
    if files:
        return storage.fingerprint(*[source_fingerprint(path) for path in files])
    return storage.fingerprint("hub", source, split)


def import_dataset(cfg: DataConfig, out_uri: str, shard_docs: int = SHARD_DOCS) -> dict:
    """Write the dataset's documents as ``shard-<n>.parquet`` files of ``shard_docs`` rows under ``out_uri``; rows
    whose text is blank are skipped (they have no tokens to curate by)."""
    seen: set[str] = set()
    batch: list[dict] = []
    shards = skipped = 0

    def flush() -> None:
        nonlocal shards, batch
        storage.write_parquet(pa.Table.from_pylist(batch), storage.join(out_uri, f"shard-{shards:05d}.parquet"))
        shards, batch = shards + 1, []

    for number, row in enumerate(open_rows(cfg.dataset, cfg.split)):
        doc_id = row_id(cfg.id_column, row, number)
        if doc_id in seen:
            raise ValueError(f"data.id_column={cfg.id_column!r} repeats the id {doc_id!r}; give a column of unique ids")
        seen.add(doc_id)
        text = document_text(cfg.text, row)
        if not text.strip():
            skipped += 1
            continue
        batch.append({"doc_id": doc_id, "text": text})
        if len(batch) == shard_docs:
            flush()
    if batch:
        flush()
    if not shards:
        raise ValueError(f"data.dataset={cfg.dataset!r} has no document with text (data.text={cfg.text!r})")
    return {"n_docs": len(seen) - skipped, "shards": shards, "skipped_blank": skipped}


def first_row(source: str, split: str, field: str = "data.dataset") -> dict:
    """The dataset's first row, read without loading the rest (what the preflight checks build on)."""
    first = next(iter(open_rows(source, split, field)), None)
    if first is None:
        raise ValueError(f"{field}={source!r} is empty")
    return first


def check_dataset(cfg: DataConfig) -> None:
    """Open the dataset and render its first row's text: a bad source, split, column or template fails here, before
    any work."""
    first = first_row(cfg.dataset, cfg.split)
    document_text(cfg.text, first)
    row_id(cfg.id_column, first, 0)
