"""On-disk formats, in one place: the artifact file names, the Parquet schemas, the two record types of the eval
sets, and the reference that stages return.

A newcomer looking for "what does stage X write?" finds the names here and the stage in ``stages.py``:

* ``pool/``, ``seeds/``, ``merged/``: ``docs.parquet`` (``DOC_COLUMNS``);
* ``embeddings/``, ``merged/``: ``embeddings.parquet`` (``doc_id``, ``emb``: each captured layer's pooled SAE codes
  side by side, their number in the file's metadata);
* ``sentences/``, ``merged/``: ``sentences.parquet`` (``doc_id``, ``emb``: a sentence embedder's vector per document);
* ``curated/``: ``curated.parquet`` (the documents kept, with their scores); ``distilled/``: ``distilled.parquet``;
* ``acts/``: ``manifest.json`` and ``pooled/``, ``sample/``, ``tokens/`` shards; ``sae/``: ``layer-<L>/`` per captured
  layer, each sae-lens' own files;
* ``pruned/``, ``recovered/``: a transformers folder ``model/``; ``eval/``: ``metrics.json``;
* eval sets: ``<domain>/mc.parquet`` (``MC_SCHEMA``) and ``<domain>/text.parquet`` (``TEXT_SCHEMA``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import ConfigDict, with_config
from typing_extensions import TypedDict

DOCS_FILE = "docs.parquet"
CURATED_FILE = "curated.parquet"
DISTILLED_FILE = "distilled.parquet"
EMBEDDINGS_FILE = "embeddings.parquet"
SENTENCES_FILE = "sentences.parquet"
MC_FILE = "mc.parquet"
TEXT_FILE = "text.parquet"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
MODEL_FOLDER = "model"

POOL_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("domain", pa.string()),
        ("prompt", pa.string()),
        ("response", pa.string()),
    ]
)
DOC_COLUMNS = tuple(POOL_SCHEMA.names)  # every stage's documents, in this order
REQUIRED_DOC_COLUMNS = ("doc_id", "text")  # what a user's pool shard must have; the rest may be missing

MC_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("context", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("answer", pa.int64()),
        ("source", pa.string()),
    ]
)
TEXT_SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string()), ("source", pa.string())])
REQUIRED_MC_COLUMNS = ("item_id", "context", "choices", "answer")  # source is optional
REQUIRED_TEXT_COLUMNS = ("doc_id", "text")
EVAL_SET_FIX = (
    f"build the eval sets with the corpus stage, or point data.eval_sets at a folder holding "
    f"<domain>/{MC_FILE} and <domain>/{TEXT_FILE}"
)


@dataclass(frozen=True)
class ClozeItem:
    """One cloze multiple-choice item: each choice is scored as a continuation of ``context``."""

    item_id: str
    context: str
    choices: tuple[str, ...]
    answer: int
    source: str = ""


@dataclass(frozen=True)
class Document:
    """One document; ``text`` is ``prompt + separator + response`` where the source has an instruction/answer
    split (both None otherwise)."""

    doc_id: str
    text: str
    source: str = ""
    prompt: str | None = None
    response: str | None = None


@with_config(ConfigDict(extra="allow"))
class Ref(TypedDict, total=False):
    """What a stage returns and flows pass between tasks instead of data: where the output is and what it is.

    Every stage output has ``uri``, ``fingerprint`` (its content-addressed identity) and ``info`` (its summary, as
    in its completion marker); some carry more (the corpus its ``pool`` and ``eval`` URIs, a model its ``name``).
    """

    uri: str
    fingerprint: str
    info: dict[str, Any]
    reused: bool
