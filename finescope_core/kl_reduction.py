"""Selection quality without labels: DSIR's KL reduction (Xie et al., arXiv 2302.03169).

A selection is good when its text looks like the target domain, whatever its documents' labels say. Each text is
reduced to hashed word unigrams and bigrams (``ngrams.ngram_hashes``, into ``BUCKETS`` buckets), a smoothed
distribution is fitted to each set of texts, and the KL reduction is how much closer the selection's distribution is to
a held-out sample of the target domain than the pool's: KL(target || pool) - KL(target || selected), in nats.
Positive means the selection moved towards the domain; 0 means it is no closer than the pool itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from finescope_core.ngrams import ngram_hashes

BUCKETS = 10_000
ORDERS = (1, 2)


def ngram_distribution(texts: Iterable[str], buckets: int = BUCKETS, smoothing: float = 1.0) -> np.ndarray:
    """The add-``smoothing`` distribution of hashed word unigrams and bigrams over ``texts``."""
    counts = np.zeros(buckets, dtype=np.float64)
    for text in texts:
        for order in ORDERS:
            hashes = ngram_hashes(text, order)
            np.add.at(counts, (hashes % np.uint64(buckets)).astype(np.int64), 1.0)
    counts += smoothing
    return counts / counts.sum()


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats, for strictly positive distributions over the same buckets."""
    return float(np.sum(p * (np.log(p) - np.log(q))))


def kl_reduction(target: Iterable[str], selected: Iterable[str], pool: Iterable[str]) -> float:
    """KL(target || pool) - KL(target || selected): how much closer the selection is to the target than the pool."""
    reference = ngram_distribution(target)
    return kl_divergence(reference, ngram_distribution(pool)) - kl_divergence(reference, ngram_distribution(selected))
