"""Tests of the corpus package (the demo corpus builder), ngrams.py and the seed files; no model is involved."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finescope_core.config import DEMO_DOMAINS, DOMAINS, CorpusConfig
from finescope_core.corpus import build_demo_corpus
from finescope_core.corpus import split as corpus_split
from finescope_core.corpus.python_source import code_chunks
from finescope_core.corpus.records import Unit
from finescope_core.corpus.sources import DOMAIN_SOURCES, MMLU_SUBJECTS
from finescope_core.corpus.split import allocate, fit, split_domain
from finescope_core.formats import ClozeItem, Document
from finescope_core.ngrams import NgramIndex, count_overlaps, ngrams, normalise

ROOT = Path(__file__).resolve().parents[1]
SMALL = CorpusConfig(domains=list(DOMAINS), docs_per_domain=50, eval_mc_per_domain=20, eval_text_per_domain=20,
                     shard_docs=64)  # every domain, the held-out ones included


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("corpus")
    return out, build_demo_corpus(str(out), SMALL)


@pytest.fixture(scope="module")
def pool(built: tuple[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    shards = sorted((built[0] / "pool").glob("shard-*.parquet"))
    return pa.concat_tables([pq.read_table(s) for s in shards]).to_pylist()


def _eval_rows(out: Path, kind: str) -> list[dict[str, Any]]:
    return [row for d in DOMAINS for row in pq.read_table(out / "eval" / d / f"{kind}.parquet").to_pylist()]


# ------------------------------------------------------------------------------------------------------------------
# the corpus package


def test_pool_schema_and_counts(built: tuple[Path, dict[str, Any]], pool: list[dict[str, Any]]) -> None:
    out, manifest = built
    schema = pq.read_schema(out / "pool" / "shard-00000.parquet")
    assert {f.name: f.type for f in schema} == {
        "doc_id": pa.string(), "text": pa.string(), "source": pa.string(), "domain": pa.string(),
        "prompt": pa.string(), "response": pa.string(),
    }  # fmt: skip
    assert len(list((out / "pool").glob("*.parquet"))) == manifest["pool"]["shards"] == 6  # 350 docs / 64 per shard
    assert len({r["doc_id"] for r in pool}) == len(pool) == len(DOMAINS) * 50
    for domain in DOMAINS:
        rows = [r for r in pool if r["domain"] == domain]
        assert len(rows) == manifest["pool"]["domains"][domain]["total"] == 50
        assert {r["source"] for r in rows} <= set(DOMAIN_SOURCES[domain].pool)
    for row in pool:
        assert row["doc_id"].startswith(f"{row['domain']}/{row['source']}/")
        assert 20 <= len(row["text"].split()) and len(row["text"]) <= SMALL.max_chars
        assert (row["prompt"] is None) == (row["response"] is None)
        if row["prompt"] is not None:
            assert row["text"].startswith(row["prompt"]) and row["text"].endswith(row["response"])
    first_shard = pq.read_table(out / "pool" / "shard-00000.parquet").column("domain").to_pylist()
    assert len(set(first_shard)) == len(DOMAINS)  # domains are shuffled together


def test_held_out_domains_are_exam_questions_from_mmlu_subjects_no_demo_domain_reads(pool: list[dict[str, Any]]):
    held_out = [d for d in DOMAINS if d not in DEMO_DOMAINS]
    assert held_out == ["law", "business"] and CorpusConfig().domains == list(DEMO_DOMAINS)
    demo_subjects = {subject for domain in DEMO_DOMAINS for subject in MMLU_SUBJECTS[domain]}
    for domain in held_out:
        assert not set(MMLU_SUBJECTS[domain]) & demo_subjects
        rows = [r for r in pool if r["domain"] == domain]
        assert rows and {r["source"] for r in rows} == {"mmlu"}
        for row in rows:
            assert row["prompt"].startswith("Question: ") and "\nA. " in row["prompt"]
            assert row["text"] == f"{row['prompt']}\nAnswer: {row['response']}" and row["response"][:3] in (
                "A. ", "B. ", "C. ", "D. ")


def test_eval_schema_and_counts(built: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = built
    for domain in DOMAINS:
        mc = pq.read_table(out / "eval" / domain / "mc.parquet")
        assert mc.schema.field("choices").type == pa.list_(pa.string())
        assert mc.schema.field("answer").type == pa.int64()
        rows = mc.to_pylist()
        assert len(rows) == manifest["eval"][domain]["mc"]["total"] == 20
        assert {r["source"] for r in rows} <= set(DOMAIN_SOURCES[domain].mc)
        for row in rows:
            assert row["item_id"].startswith(f"{domain}/{row['source']}/") and row["context"]
            assert len(row["choices"]) >= 2 and 0 <= row["answer"] < len(row["choices"])
            assert all(c.startswith(" ") and c.strip() for c in row["choices"])
        text = pq.read_table(out / "eval" / domain / "text.parquet").to_pylist()
        assert len(text) == manifest["eval"][domain]["text"]["total"] == 20
        assert {r["source"] for r in text} <= set(DOMAIN_SOURCES[domain].pool)


def test_code_is_also_scored_on_completing_python_functions(built: tuple[Path, dict[str, Any]]) -> None:
    rows = pq.read_table(built[0] / "eval" / "code" / "mc.parquet").to_pylist()
    completions = [r for r in rows if r["source"] == "basic_skills_coding"]
    assert 0 < len(completions) < len(rows)  # shared with MMLU's computer-science questions
    for row in completions:
        assert row["context"].startswith("def ")  # a function to complete
        assert len(set(row["choices"])) == len(row["choices"]) >= 4 and 0 <= row["answer"] < len(row["choices"])


def test_math_is_also_scored_on_sums_after_worked_examples(built: tuple[Path, dict[str, Any]]) -> None:
    rows = pq.read_table(built[0] / "eval" / "math" / "mc.parquet").to_pylist()
    sums = [r for r in rows if r["source"] == "basic_skills_arithmetic"]
    assert 0 < len(sums) < len(rows)  # shared with MMLU's math questions
    for row in sums:
        *examples, question = row["context"].split("\n\n")
        assert len(examples) == 5 and all(e.count(" = ") == 1 for e in examples)  # AI2's worked sums, each answered
        assert question.endswith(" =")  # the item's own sum, the choices its candidate results
        assert all(c.strip().lstrip("-").isdigit() for c in row["choices"])


def test_pool_and_eval_are_disjoint(built: tuple[Path, dict[str, Any]], pool: list[dict[str, Any]]) -> None:
    out, manifest = built
    mc, text = _eval_rows(out, "mc"), _eval_rows(out, "text")
    pool_ids, pool_texts = {r["doc_id"] for r in pool}, [r["text"] for r in pool]
    assert not pool_ids & ({r["item_id"] for r in mc} | {r["doc_id"] for r in text})
    assert not set(pool_texts) & {r["text"] for r in text}
    refs = [r["context"] + c for r in mc for c in r["choices"]] + [r["text"] for r in text]
    assert count_overlaps(pool_texts, refs, 13) == 0 == manifest["overlap_13gram"]
    assert manifest["pool_eval_duplicates"] == 0

    def record(doc_id: str) -> str:  # a paper or a module: its chunks never straddle the split
        return doc_id.split(":")[0] if "/python_stdlib/" in doc_id else doc_id.rsplit("-", 1)[0]

    chunked = ("/qasper/", "/python_stdlib/")
    held_out = {record(r["doc_id"]) for r in text if any(s in r["doc_id"] for s in chunked)}
    assert held_out and not held_out & {record(i) for i in pool_ids if any(s in i for s in chunked)}


def test_manifest_lists_every_file_with_its_hash(built: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = built
    files = {p.relative_to(out).as_posix() for p in out.rglob("*.parquet")}
    assert set(manifest["files"]) == files
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not (out / "_COMPLETE.json").exists()  # the stage's marker is run_stage's to write


def test_second_build_is_a_noop(built: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = built
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    started = time.perf_counter()
    again = build_demo_corpus(str(out), SMALL.model_copy())
    assert time.perf_counter() - started < 2
    assert again == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes


def test_impossible_sizes_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"corpus\.docs_per_domain=1000000: domain 'math' has only \d+ documents"):
        build_demo_corpus(str(tmp_path), CorpusConfig(domains=["math"], docs_per_domain=10**6))
    with pytest.raises(ValueError, match=r"corpus\.eval_mc_per_domain=1000000: domain 'math'"):
        build_demo_corpus(str(tmp_path), CorpusConfig(domains=["math"], eval_mc_per_domain=10**6))
    assert not list(tmp_path.iterdir())  # nothing written by a failed build
    with pytest.raises(ValueError, match="docs_per_domain"):
        CorpusConfig(docs_per_domain=0)
    with pytest.raises(ValueError, match="domains"):
        CorpusConfig(domains=["math", "math"])
    with pytest.raises(ValueError, match="extra"):
        CorpusConfig(doc_per_domain=5)


def _fake_source(domain: str, source: str) -> list[Unit]:
    """40 records per source: documents for pool sources, cloze items for the others."""
    words = " ".join(f"{source}{j}" for j in range(25))
    if source in DOMAIN_SOURCES[domain].pool:
        return [Unit(docs=(Document(f"{i:03d}", f"{i} {words}"),)) for i in range(40)]
    return [Unit(mc=ClozeItem(f"{i:03d}", f"Question {i}?\nAnswer:", (" yes", " no"), 0)) for i in range(40)]


def test_split_is_seeded_balanced_and_disjoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_split, "load_source", _fake_source)
    cfg = CorpusConfig(domains=["math"], docs_per_domain=10, eval_mc_per_domain=5, eval_text_per_domain=6)

    def split(seed: int) -> tuple[list[str], list[str], dict[str, list[str]]]:
        s = split_domain("math", cfg.model_copy(update={"seed": seed}))
        candidates = {source: [d.doc_id for d in docs] for source, docs in s.candidates.items()}
        return [f"{src}/{i.item_id}" for src, i in s.mc], [f"{src}/{d.doc_id}" for src, d in s.text], candidates

    mc, text, candidates = split(0)
    assert split(0) == (mc, text, candidates) and split(1) != (mc, text, candidates)
    assert len(mc) == 5 and len(text) == 6 and sorted(s.split("/")[0] for s in text) == ["gsm8k"] * 3 + ["math"] * 3
    for source, keys in candidates.items():
        assert len(keys) == 40 - 3 and not {f"{source}/{k}" for k in keys} & set(text)


@pytest.mark.parametrize("module", ["ast.py", "tokenize.py", "json/decoder.py", "dataclasses.py"])
def test_code_chunks_are_the_top_level_definitions(module: str) -> None:
    source = (Path(sysconfig.get_paths()["stdlib"]) / module).read_text(encoding="utf-8")
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    starts = [min([n.lineno, *(d.lineno for d in n.decorator_list)]) for n in ast.parse(source).body
              if isinstance(n, definitions)]  # fmt: skip
    chunks = code_chunks(module, source)
    assert [d.doc_id for d in chunks] == [f"{module}:{line}" for line in starts]
    for chunk in chunks:
        ast.parse(chunk.text)


def test_allocate_balances_and_redistributes() -> None:
    assert allocate(10, {"a": 2, "b": 100, "c": 100}) == {"a": 2, "b": 4, "c": 4}
    assert allocate(3, {"a": 5, "b": 5}) == {"a": 2, "b": 1}
    assert allocate(9, {"a": 3, "b": 0}) == {"a": 3, "b": 0}  # short: the caller reports the shortfall


def test_fit_cuts_the_response_and_drops_short_documents() -> None:
    prompt, response = "Question: " + "why " * 30, "because " * 200
    doc = fit(Document("k", prompt + "\nAnswer: " + response, prompt=prompt, response=response), 400)
    assert doc is not None and len(doc.text) <= 400
    assert doc.text.startswith(prompt) and doc.text.endswith(doc.response) and doc.prompt == prompt
    assert fit(Document("k", "too short to keep"), 400) is None


# ------------------------------------------------------------------------------------------------------------------
# ngrams.py

LONG = "The mitochondrion is the powerhouse of the cell and produces most of the ATP that the cell needs to live."


def test_ngram_overlap_is_found_despite_case_and_punctuation() -> None:
    doc = "Intro text. " + LONG.upper().replace(" ", "  ,") + " Outro."
    assert NgramIndex([LONG]).overlaps(doc)
    assert count_overlaps([doc, "Nothing in common with the reference at all, not one long phrase."], [LONG]) == 1


def test_ngram_non_overlap_is_not_found() -> None:
    shuffled = " ".join(reversed(normalise(LONG)))
    index = NgramIndex([LONG])
    assert not index.overlaps(shuffled)
    assert index.overlapping([shuffled, LONG]).tolist() == [False, True]
    assert len(ngrams(LONG, 13)) == len(normalise(LONG)) - 12


def test_short_texts_give_one_ngram_of_all_their_words() -> None:
    assert len(ngrams("only five words right here", 13)) == 1
    assert ngrams("Only five words, right here!") == ngrams("only five words right here")
    assert ngrams("") == set() and not NgramIndex([""]).overlaps("")
    assert NgramIndex(["only five words right here"]).overlaps("Only five words right here.")
    assert not NgramIndex(["the cell"]).overlaps(LONG)  # a short reference never matches inside a longer text


def test_ngram_hashes_are_stable_across_processes() -> None:
    code = "from finescope_core.ngrams import ngrams; print(sorted(ngrams('a b c d e f', 3)))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }  # fmt: skip
    assert outputs == {str(sorted(ngrams("a b c d e f", 3))) + "\n"}


# ------------------------------------------------------------------------------------------------------------------
# seeds/


@pytest.mark.parametrize("domain", DOMAINS)
def test_seed_files_have_fifteen_documents(domain: str) -> None:
    lines = (ROOT / "seeds" / f"{domain}.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 15
    for line in lines:
        row = json.loads(line)
        assert set(row) == {"text", "prompt", "response"} and all(isinstance(v, str) for v in row.values())
        assert row["text"].startswith(row["prompt"]) and row["text"].endswith(row["response"])
        assert len(row["text"].split()) >= 20


@pytest.mark.parametrize("domain", DOMAINS)
def test_prose_seed_files_follow_no_pool_template(domain: str) -> None:
    """The second seed style: fifteen plain texts, none in the question/answer, problem/solution or test-case shape
    of the pool's sources, so that a selection cannot succeed by matching a template."""
    lines = (ROOT / "seeds" / "prose" / f"{domain}.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 15
    for line in lines:
        row = json.loads(line)
        assert set(row) == {"text"} and len(row["text"].split()) >= 20
        assert not any(marker in row["text"] for marker in ("Question:", "Answer:", "Problem:", "Solution:",
                                                              "The answer is", "should pass these tests"))
