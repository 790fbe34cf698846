"""Bootstrap statistics over eval units (items or documents), single and paired.

Two models scored on the same units are compared through their per-unit differences, resampled together: the
noise that comes from which units happen to be in the eval set is then shared by both sides and cancels, so the
interval of a difference is much narrower than the two models' own intervals suggest. Every function resamples
whole units with one seeded multinomial draw, so equal seeds give equal resamples across calls.

Bits per byte is a ratio of sums (nats over bytes), so its resamples are ratios of resampled sums, not means of
per-document ratios: a long document weighs as much as its bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LN2 = float(np.log(2))


def bootstrap_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of ``n`` units appears in each of ``resamples`` bootstrap samples: shape (resamples, n)."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval ``[lo, hi]``."""
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return [float(lo), float(hi)]


def mean_ci(values: Sequence[float], resamples: int, seed: int) -> list[float]:
    """``[mean, lo, hi]`` of per-unit values (accuracy from 0/1, a mean margin, a mean difference)."""
    values = np.asarray(values, dtype=np.float64)
    resampled = bootstrap_counts(len(values), resamples, seed) @ values / len(values)
    return [float(values.mean()), *percentile_ci(resampled)]


def paired_difference(a: Sequence[float], b: Sequence[float], resamples: int, seed: int) -> list[float]:
    """``[mean(a - b), lo, hi]`` over units scored by both (same order): a paired bootstrap."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired units differ in number: {a.shape} and {b.shape}")
    return mean_ci(a - b, resamples, seed)


def bpb_ci(nll: Sequence[float], n_bytes: Sequence[float], resamples: int, seed: int) -> list[float]:
    """``[bpb, lo, hi]`` from per-document NLL (nats) and UTF-8 bytes."""
    nll, n_bytes = np.asarray(nll, dtype=np.float64), np.asarray(n_bytes, dtype=np.float64)
    counts = bootstrap_counts(len(nll), resamples, seed)
    return [float(nll.sum() / n_bytes.sum() / LN2), *percentile_ci((counts @ nll) / (counts @ n_bytes) / LN2)]


def paired_bpb_difference(nll_a: Sequence[float], nll_b: Sequence[float], n_bytes: Sequence[float],
                          resamples: int, seed: int) -> list[float]:
    """``[bpb_a - bpb_b, lo, hi]`` on the same documents; negative means ``a`` predicts the text better."""
    diff = np.asarray(nll_a, dtype=np.float64) - np.asarray(nll_b, dtype=np.float64)
    return bpb_ci(diff, n_bytes, resamples, seed)


def gap_closed(nll_base: Sequence[float], nll_pruned: Sequence[float], nll_recovered: Sequence[float],
               n_bytes: Sequence[float], resamples: int, seed: int) -> list[float] | None:
    """``[share, lo, hi]`` of the pruning loss that recovery wins back, (bpb_pruned - bpb_recovered) /
    (bpb_pruned - bpb_base), with the three models resampled on the same documents (1 = back to the base); None
    where pruning lost nothing to win back."""
    base, pruned, recovered = (np.asarray(x, dtype=np.float64) for x in (nll_base, nll_pruned, nll_recovered))
    counts = bootstrap_counts(len(base), resamples, seed)
    won, lost = pruned - recovered, pruned - base
    with np.errstate(divide="ignore", invalid="ignore"):
        resampled = (counts @ won) / (counts @ lost)
    finite = resampled[np.isfinite(resampled)]
    if lost.sum() == 0 or not len(finite):
        return None
    return [float(won.sum() / lost.sum()), *percentile_ci(finite)]
