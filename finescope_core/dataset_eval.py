"""Eval sets from the datasets ecosystem: each entry of ``data.eval_datasets`` reads a Hugging Face dataset (a hub id,
a ``save_to_disk`` folder, or data files) and writes one eval set of one domain, the form the evaluation reads:

* cloze multiple choice, ``<domain>/mc.parquet``: a context (a column or a template over columns), the choices (a
  column holding a list, or a dict with ``text`` and ``label`` lists as ARC's, or one column per choice as SciQ's), and
  the gold choice (a 0-based index, a label or letter, or the choice's text);
* held-out documents, ``<domain>/text.parquet``: a document's text, a column or a template.

Choices are scored as continuations of the context, each with one leading space (``corpus.records.cloze``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import pyarrow as pa

from finescope_core import storage
from finescope_core.config import EvalDatasetConfig
from finescope_core.corpus.records import cloze
from finescope_core.dataset_pool import (
    data_files,
    document_text,
    first_row,
    is_saved_dataset,
    open_rows,
    row_id,
    source_identity,
)
from finescope_core.formats import MC_FILE, MC_SCHEMA, TEXT_FILE, TEXT_SCHEMA, ClozeItem

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def field_of(index: int) -> str:
    return f"data.eval_datasets[{index}]"


def file_of(entry: EvalDatasetConfig) -> str:
    """The eval set file an entry writes under its domain's folder."""
    return MC_FILE if entry.choices else TEXT_FILE


def source_name(entry: EvalDatasetConfig) -> str:
    """The items' ``source`` (the per-source breakdown's key): a saved dataset's own name and configuration (as
    ``ai2_arc/ARC-Easy``), a data file's name without its suffixes, or the hub id."""
    source = Path(entry.dataset)
    if is_saved_dataset(entry.dataset):
        for info in (source / "dataset_info.json", source / entry.split / "dataset_info.json"):
            described = json.loads(info.read_text()) if info.is_file() else {}
            if described.get("dataset_name"):
                config = described.get("config_name")
                return described["dataset_name"] + (f"/{config}" if config not in (None, "default") else "")
        return source.name
    files = data_files(entry.dataset)
    if len(files) == 1:
        return Path(files[0]).name.split(".")[0]
    return Path(os.path.commonpath(files)).name if files else entry.dataset


def rows_of(entry: EvalDatasetConfig, field: str) -> Iterable[dict]:
    """The entry's rows, at most ``max_rows``, never loaded whole."""
    return islice(open_rows(entry.dataset, entry.split, f"{field}.dataset"), entry.max_rows)


def choice_texts(entry: EvalDatasetConfig, row: dict, field: str) -> tuple[list[str], list[str] | None]:
    """A row's choices and their labels (None where the dataset has none)."""
    columns = [entry.choices] if isinstance(entry.choices, str) else list(entry.choices)
    missing = [name for name in columns if name not in row]
    if missing:
        raise ValueError(f"{field}.choices names column {missing[0]!r}, which the dataset lacks; its columns: "
                         f"{sorted(row)}")
    if not isinstance(entry.choices, str):
        return [str(row[name]) for name in columns], None
    value = row[entry.choices]
    if isinstance(value, dict) and isinstance(value.get("text"), list):
        labels = value.get("label")
        return [str(text) for text in value["text"]], [str(label) for label in labels] if labels else None
    if isinstance(value, list):
        return [str(text) for text in value], None
    raise ValueError(f"{field}.choices={entry.choices!r} holds {type(value).__name__}, not a list of choices or a dict "
                     "with a 'text' list; name the column of choices, or list one column per choice")


def answer_index(value: object, choices: list[str], labels: list[str] | None) -> int | None:
    """The gold choice's index: ``value`` as a 0-based index, a label, a letter, or a choice's text (None: none)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if 0 <= value < len(choices) else None
    text = str(value).strip()
    for candidates in (labels or [], choices):
        stripped = [candidate.strip() for candidate in candidates]
        if text in stripped:
            return stripped.index(text)
    if len(text) == 1 and text.upper() in LETTERS[:len(choices)]:
        return LETTERS.index(text.upper())
    return None


def cloze_item(entry: EvalDatasetConfig, row: dict, number: int, field: str) -> ClozeItem | None:
    """One row as a cloze item; None when two choices are the same or one is empty (scoring cannot tell them)."""
    context = document_text(entry.context, row, f"{field}.context")
    choices, labels = choice_texts(entry, row, field)
    if entry.answer not in row:
        raise ValueError(f"{field}.answer={entry.answer!r} is not a column of the dataset; its columns: {sorted(row)}")
    item_id = row_id(entry.id_column, row, number, f"{field}.id_column")
    answer = answer_index(row[entry.answer], choices, labels)
    if answer is None:
        raise ValueError(f"{field}.answer: row {item_id!r} has answer {row[entry.answer]!r}, which is neither a "
                         f"0-based index, a label, a letter nor the text of one of its {len(choices)} choices")
    return cloze(item_id, context, choices, answer)


def record(entry: EvalDatasetConfig, row: dict, number: int, field: str, source: str) -> dict | None:
    """One row as a record of the entry's file, from ``source``: None for an unusable item or a blank document."""
    if entry.choices:
        item = cloze_item(entry, row, number, field)
        if item is None:
            return None
        return {"item_id": item.item_id, "context": item.context, "choices": list(item.choices),
                "answer": item.answer, "source": source}
    text = document_text(entry.text, row, f"{field}.text")
    doc_id = row_id(entry.id_column, row, number, f"{field}.id_column")
    return {"doc_id": doc_id, "text": text, "source": source} if text.strip() else None


def eval_table(entry: EvalDatasetConfig, field: str) -> tuple[pa.Table, int]:
    """The entry's eval set as a table of its file's schema, and the number of rows skipped."""
    source = source_name(entry)
    records = [record(entry, row, number, field, source) for number, row in enumerate(rows_of(entry, field))]
    kept = [r for r in records if r is not None]
    if not kept:
        raise ValueError(f"{field}: {entry.dataset!r} gives no usable {'item' if entry.choices else 'document'}")
    ids = [r.get("item_id", r.get("doc_id")) for r in kept]
    if len(set(ids)) < len(ids):
        raise ValueError(f"{field}.id_column={entry.id_column!r} repeats an id; give a column of unique ids")
    return pa.Table.from_pylist(kept, schema=MC_SCHEMA if entry.choices else TEXT_SCHEMA), len(records) - len(kept)


def import_eval_sets(entries: list[EvalDatasetConfig], out_uri: str) -> dict:
    """Write each entry's eval set under ``out_uri``; returns the rows written and skipped per file."""
    written = {}
    for index, entry in enumerate(entries):
        table, skipped = eval_table(entry, field_of(index))
        path = f"{entry.domain}/{file_of(entry)}"
        storage.write_parquet(table, storage.join(out_uri, path))
        written[path] = {"rows": table.num_rows, "skipped": skipped}
    return written


def eval_datasets_identity(entries: list[EvalDatasetConfig]) -> str:
    """What the imported eval sets depend on: each dataset's content (see ``dataset_pool.source_identity``)."""
    return storage.fingerprint(*[source_identity(entry.dataset, entry.split) for entry in entries])


def check_eval_dataset(entry: EvalDatasetConfig, index: int) -> None:
    """Open the entry's dataset and build its first row: a bad source, split, column, template or answer fails here,
    before any work."""
    field = field_of(index)
    record(entry, first_row(entry.dataset, entry.split, f"{field}.dataset"), 0, field, source_name(entry))
