"""Splitting a domain's records: eval items first, then held-out texts, then the pool from what is left, free of
any n-gram the eval data holds."""

from __future__ import annotations

import dataclasses
import random

from finescope_core.config import CorpusConfig
from finescope_core.corpus.records import Unit
from finescope_core.corpus.sources import DOMAIN_SOURCES, load_source
from finescope_core.formats import ClozeItem, Document
from finescope_core.ngrams import NgramIndex

MIN_WORDS = 20


@dataclasses.dataclass
class DomainSplit:
    """One domain's held-out material and its remaining pool candidates (per source, in sampling order)."""

    mc: list[tuple[str, ClozeItem]]
    text: list[tuple[str, Document]]
    candidates: dict[str, list[Document]]


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


def fit(doc: Document, max_chars: int) -> Document | None:
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


def size_error(field: str, value: int, domain: str, available: int, what: str) -> ValueError:
    return ValueError(f"corpus.{field}={value}: domain '{domain}' has only {available} {what}; lower it")


def _take_mc(domain: str, units: dict[str, list[Unit]], n: int) -> list[tuple[str, ClozeItem]]:
    """The domain's cloze items, balanced over its MC sources; their records leave ``units``."""
    sources = DOMAIN_SOURCES[domain].mc
    capacity = {s: sum(u.mc is not None for u in units[s]) for s in sources}
    if sum(capacity.values()) < n:
        raise size_error("eval_mc_per_domain", n, domain, sum(capacity.values()), "multiple-choice items")
    items = []
    for source, count in allocate(n, capacity).items():
        chosen = [u for u in units[source] if u.mc is not None][:count]
        items += [(source, u.mc) for u in chosen if u.mc is not None]
        units[source] = _without(units[source], chosen)
    return items


def _take_text(domain: str, units: dict[str, list[Unit]], n: int, rng: random.Random) -> list[tuple[str, Document]]:
    """Held-out documents, one per record and balanced over the pool sources; their records leave ``units``."""
    sources = DOMAIN_SOURCES[domain].pool
    capacity = {s: sum(bool(u.docs) for u in units[s]) for s in sources}
    if sum(capacity.values()) < n:
        raise size_error("eval_text_per_domain", n, domain, sum(capacity.values()), "held-out documents")
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
        raise size_error("docs_per_domain", cfg.docs_per_domain, domain, available, "documents")
    return DomainSplit(mc=mc, text=text, candidates=candidates)


def eval_references(splits: dict[str, DomainSplit]) -> list[str]:
    """Every text a model reads at evaluation: each context with each of its choices, and each held-out document."""
    refs = [item.context + choice for s in splits.values() for _, item in s.mc for choice in item.choices]
    return refs + [doc.text for s in splits.values() for _, doc in s.text]


@dataclasses.dataclass
class PoolFill:
    """The pool documents chosen for one domain, and how many candidates were rejected on the way."""

    docs: dict[str, list[Document]]
    contaminated: int = 0
    duplicates: int = 0


def fill_pool(candidates: dict[str, list[Document]], n: int, index: NgramIndex, seen: set[str]) -> PoolFill:
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
