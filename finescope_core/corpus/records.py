"""What the source readers produce: records (``Unit``) of documents and cloze items, and the helpers that make them.

Documents and items carry their key within their source here; the builder prefixes domain and source when it
writes them.
"""

from __future__ import annotations

import dataclasses
import re

from finescope_core.formats import ClozeItem, Document


@dataclasses.dataclass(frozen=True)
class Unit:
    """A source record that stays on one side of the pool/eval split: its documents and/or its cloze item."""

    docs: tuple[Document, ...] = ()
    mc: ClozeItem | None = None


def clean(text: str) -> str:
    """Unify newlines, drop trailing spaces and runs of blank lines; indentation is kept so code stays valid."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def qa_doc(key: str, prompt: str, sep: str, response: str) -> Document:
    """A document with an instruction/answer split; the response keeps its indentation (code bodies)."""
    prompt, response = clean(prompt).strip(), clean(response)
    return Document(key, prompt + sep + response, prompt=prompt, response=response)


def passage(key: str, text: str) -> Document:
    return Document(key, clean(text).strip())


def question_prompt(question: str) -> str:
    return f"Question: {clean(question)}\nAnswer:"


def cloze(key: str, context: str, options: list[str], answer: int) -> ClozeItem | None:
    """A cloze item, or None when an option is empty or repeated (it could not be told apart by scoring)."""
    choices = tuple(" " + " ".join(o.split()) for o in options)
    if any(not c.strip() for c in choices) or len(set(choices)) != len(choices) or not 0 <= answer < len(choices):
        return None
    return ClozeItem(key, context, choices, answer)


def exam_question(key: str, question: str, options: list[str], answer: int, explanation: str | None = None) -> Unit:
    """An exam question: the document shows the lettered options, the answer and any explanation; the cloze item
    scores the option texts after the bare question."""
    letters = "ABCDEFGH"
    prompt = f"Question: {question}\n" + "\n".join(f"{letter}. {o}" for letter, o in zip(letters, options))
    response = f"{letters[answer]}. {options[answer]}" + (f"\nExplanation: {explanation}" if explanation else "")
    item = cloze(key, question_prompt(question), options, answer)
    return Unit(docs=(qa_doc(key, prompt, "\nAnswer: ", response),), mc=item)
