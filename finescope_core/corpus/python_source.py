"""The Python standard library's own source as code documents: one record per module, one document per top-level
function or class."""

from __future__ import annotations

import os
import re
import sysconfig
from pathlib import Path

from finescope_core.corpus.records import Unit, passage
from finescope_core.formats import Document

_STDLIB_SKIP = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "encodings", "ensurepip"}


def stdlib_modules(root: Path) -> list[Path]:
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


def code_chunks(relative: str, source: str) -> list[Document]:
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
            docs.append(passage(f"{relative}:{first + 1}", f"# {relative}\n" + "\n".join(block)))
        i += 1
    return docs


def read_python_stdlib() -> list[Unit]:
    """The running interpreter's standard library: one record per module, one document per top-level definition."""
    root = Path(sysconfig.get_paths()["stdlib"])
    units = []
    for path in stdlib_modules(root):
        docs = code_chunks(path.relative_to(root).as_posix(), path.read_text(encoding="utf-8", errors="replace"))
        if docs:
            units.append(Unit(docs=tuple(docs)))
    return units
