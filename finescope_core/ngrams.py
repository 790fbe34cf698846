"""Word n-gram fingerprints for decontamination: does a training document share a long n-gram with an eval item?

Texts are lowercased and split into ``\\w+`` words. Each word gets a stable 64-bit hash (BLAKE2b, so results are the
same in every process, unlike Python's salted ``hash``), and each n-gram hash is a fixed weighted sum of its word
hashes modulo 2**64, computed for all positions at once with NumPy. A text with fewer than ``n`` words (but at least
one) yields exactly one "n-gram" made of all its words: two identical short texts then still match each other, while a
short text can never match a full-length n-gram of a longer text.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence

import numpy as np

_WORD = re.compile(r"\w+")
_WORD_HASHES: dict[str, int] = {}
_WORD_CACHE_LIMIT = 2_000_000
_EMPTY = np.zeros(0, dtype=np.uint64)


def normalise(text: str) -> list[str]:
    """Lowercase ``\\w+`` word tokens: punctuation, spacing and case never decide an overlap."""
    return _WORD.findall(text.lower())


def _stable_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


@functools.cache
def _weights(k: int) -> np.ndarray:
    """Odd 64-bit multipliers, one per position in an n-gram, fixed for all processes and versions."""
    return np.array([_stable_hash(f"ngram-position-{j}") | 1 for j in range(k)], dtype=np.uint64)


def _word_hashes(words: list[str]) -> np.ndarray:
    """Stable per-word hashes, memoised because vocabularies are small compared with corpora."""
    if len(_WORD_HASHES) > _WORD_CACHE_LIMIT:
        _WORD_HASHES.clear()
    cache = _WORD_HASHES
    for word in set(words).difference(cache):
        cache[word] = _stable_hash(word)
    return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))


def ngram_hashes(text: str, n: int = 13) -> np.ndarray:
    """Hashes of every word n-gram of ``text`` (with repeats), in order; see the module docstring for short texts."""
    if n < 1:
        raise ValueError(f"n={n}: n-grams need n >= 1")
    words = _word_hashes(normalise(text))
    if not len(words):
        return _EMPTY
    k = min(n, len(words))
    count = len(words) - k + 1
    out = np.zeros(count, dtype=np.uint64)
    for j, weight in enumerate(_weights(k)):
        out += words[j : j + count] * weight
    return out


def ngrams(text: str, n: int = 13) -> set[int]:
    """The set of n-gram hashes of ``text``: empty for a text without words, one hash for a text shorter than n."""
    return set(ngram_hashes(text, n).tolist())


class NgramIndex:
    """The n-grams of a set of reference texts (eval items), kept as one sorted array for fast batch look-ups."""

    def __init__(self, refs: Iterable[str], n: int = 13) -> None:
        self.n = n
        arrays = [ngram_hashes(text, n) for text in refs]
        self._hashes = np.unique(np.concatenate(arrays)) if arrays else _EMPTY

    def __len__(self) -> int:
        return len(self._hashes)

    def _contains(self, hashes: np.ndarray) -> np.ndarray:
        if not len(self._hashes) or not len(hashes):
            return np.zeros(len(hashes), dtype=bool)
        pos = np.minimum(np.searchsorted(self._hashes, hashes), len(self._hashes) - 1)
        return self._hashes[pos] == hashes

    def overlaps(self, text: str) -> bool:
        """Whether ``text`` shares at least one n-gram with the references."""
        return bool(self._contains(ngram_hashes(text, self.n)).any())

    def overlapping(self, docs: Sequence[str]) -> np.ndarray:
        """A boolean mask over ``docs``: True where a document shares an n-gram with the references (one batch)."""
        arrays = [ngram_hashes(text, self.n) for text in docs]
        mask = np.zeros(len(docs), dtype=bool)
        if not arrays:
            return mask
        owners = np.repeat(np.arange(len(docs)), [len(a) for a in arrays])
        hits = self._contains(np.concatenate(arrays))
        mask[owners[hits]] = True
        return mask


def count_overlaps(docs: Sequence[str], refs: Iterable[str], n: int = 13) -> int:
    """Number of ``docs`` sharing at least one n-gram with ``refs``."""
    return int(NgramIndex(refs, n).overlapping(docs).sum())
