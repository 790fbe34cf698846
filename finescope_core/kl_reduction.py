"""Selection quality without labels: DSIR's KL reduction (Xie et al., arXiv 2302.03169).

A selection is good when its text looks like the target domain, whatever its documents' labels say. Each text is
reduced to hashed word unigrams and bigrams (``ngrams.ngram_hashes``, into ``BUCKETS`` buckets), a smoothed
distribution is fitted to each set of texts, and the KL reduction is how much closer the selection's distribution is to
a held-out sample of the target domain than a baseline's: KL(target || baseline) - KL(target || selected), in nats.
As in DSIR, the baseline is a random selection of the same size from the same pool (a smaller sample has a flatter
smoothed distribution, so comparing with the whole pool would penalise every selection). Positive means the
selection moved towards the domain; 0 means it is no closer than chance.
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


def kl_reduction(target: Iterable[str], selected: Iterable[str], baseline: Iterable[str]) -> float:
    """KL(target || baseline) - KL(target || selected): how much closer the selection is to the target than the
    baseline (a random selection of the same size)."""
    reference = ngram_distribution(target)
    before, after = ngram_distribution(baseline), ngram_distribution(selected)
    return kl_divergence(reference, before) - kl_divergence(reference, after)
