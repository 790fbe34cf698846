"""Selection: score every pool document by its best similarity to any seed (cosine or generalised Jaccard,
optionally with pseudo-relevance feedback, or standardised scores combined), keep the top M clean documents.

Scoring is chunked over the pool, so memory stays bounded and a million documents score in seconds. Walking down
the ranking, a document is skipped if it duplicates a kept one (same normalised text, or cosine above a threshold)
or shares a 13-gram with the eval sets, until the budget is filled.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from finescope_core.embed import l2_normalise
from finescope_core.ngrams import NgramIndex

SCORE_CHUNK = 65_536


def max_cosine(docs: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """For each document, the highest cosine similarity to any seed (inputs need not be normalised)."""
    if len(seeds) == 0:
        raise ValueError("no seed embeddings: the seeds file is empty")
    seeds = l2_normalise(np.asarray(seeds, np.float32))
    scores = np.empty(len(docs), np.float32)
    for start in range(0, len(docs), SCORE_CHUNK):
        chunk = np.asarray(docs[start : start + SCORE_CHUNK], np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
        scores[start : start + SCORE_CHUNK] = (chunk @ seeds.T).max(1) / np.maximum(norms, 1e-12)
    return scores


def max_jaccard(docs: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """For each document, the highest generalised (weighted) Jaccard similarity to any seed: the sum of elementwise
    minima over the sum of maxima (MoNA, arXiv 2503.15573). Vectors are scaled to sum to 1 first, so that a
    document's length does not count. It rewards sharing the same active features at similar strength, where the
    cosine can be carried by a few large ones. Features must be non-negative, as SAE codes are."""
    if len(seeds) == 0:
        raise ValueError("no seed embeddings: the seeds file is empty")
    seeds = _unit_sum(np.asarray(seeds, np.float32))
    scores = np.empty(len(docs), np.float32)
    step = max(1, SCORE_CHUNK // max(1, len(seeds) * 16))
    for start in range(0, len(docs), step):
        chunk = _unit_sum(np.asarray(docs[start : start + step], np.float32))[:, None, :]
        overlap = np.minimum(chunk, seeds).sum(-1) / np.maximum(np.maximum(chunk, seeds).sum(-1), 1e-12)
        scores[start : start + step] = overlap.max(1)
    return scores


def _unit_sum(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(vectors.sum(-1, keepdims=True), 1e-12)


def seed_scores(docs: np.ndarray, seeds: np.ndarray, similarity: str = "cosine", feedback_docs: int = 0) -> np.ndarray:
    """Each document's best similarity to any seed (``cosine`` or generalised ``jaccard``). With ``feedback_docs``,
    pseudo-relevance feedback (Rocchio): the score is averaged with the similarity to the centroid of the
    ``feedback_docs`` documents that score best. The top of a first ranking is written in the pool's own style, so
    it can bridge seeds written in another."""
    measure = max_jaccard if similarity == "jaccard" else max_cosine
    scores = measure(docs, seeds)
    if feedback_docs == 0:
        return scores
    best = np.argsort(-scores, kind="stable")[:feedback_docs]
    top = np.asarray(docs[best], np.float32)
    centroid = (_unit_sum(top) if similarity == "jaccard" else l2_normalise(top)).mean(0, keepdims=True)
    return (scores + measure(docs, centroid)) / 2


def combined_scores(*scores: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """The weighted mean of several methods' scores (equal weights by default), each standardised over the pool
    (mean 0, standard deviation 1), so that no method's scale decides the ranking, only its weight."""
    standardised = [(s - s.mean()) / max(float(s.std()), 1e-12) for s in (np.asarray(x, np.float64) for x in scores)]
    return np.average(standardised, axis=0, weights=weights)


def hybrid_scores(sae: np.ndarray, embedder: np.ndarray, sae_weight: float) -> np.ndarray:
    """``select.method hybrid``'s score: the SAE score weighted ``sae_weight`` and the sentence embedder's cosine the
    rest, each standardised over the pool."""
    return combined_scores(sae, embedder, weights=(sae_weight, 1 - sae_weight))


def hybrid_vectors(sae: np.ndarray, embedder: np.ndarray, sae_weight: float) -> np.ndarray:
    """The SAE vectors and the sentence embeddings side by side, each L2-normalised and scaled by the square root of
    its weight, so that the cosine of two documents is the hybrid's weighted mean of their two cosines."""
    return np.concatenate([np.sqrt(sae_weight) * l2_normalise(np.asarray(sae, np.float32)),
                           np.sqrt(1 - sae_weight) * l2_normalise(np.asarray(embedder, np.float32))], axis=1)


def graph_vectors(sae: np.ndarray, embedder: np.ndarray | None,
                  sae_weight: float) -> Callable[[np.ndarray], np.ndarray]:
    """What the graph re-ranking compares, made for the rows it is given only: the SAE vectors, or, with a sentence
    embedder's (method hybrid), both side by side as the hybrid weighs them (:func:`hybrid_vectors`)."""
    if embedder is None:
        return lambda rows: sae[rows]
    return lambda rows: hybrid_vectors(sae[rows], embedder[rows], sae_weight)


def text_key(text: str) -> str:
    """Exact-duplicate key: the text with case and whitespace folded."""
    return hashlib.sha1(re.sub(r"\s+", " ", text.strip().lower()).encode()).hexdigest()


@dataclass(frozen=True)
class Selection:
    """Kept rows (indices into the pool, best first), their scores, and why others were skipped."""

    indices: list[int]
    scores: list[float]
    skipped: dict[str, int]


def select_top(scores: np.ndarray, embeddings: np.ndarray, texts: Sequence[str], budget: int,
               threshold: float | None = None, near_duplicate_cosine: float = 0.98,
               contamination: NgramIndex | None = None) -> Selection:
    """Walk the ranking and keep up to ``budget`` documents that are neither duplicates nor contaminated. The walk
    stops at the first score below ``threshold`` or at -inf (a document a re-ranking excluded)."""
    if budget > len(scores):
        raise ValueError(f"select.budget={budget} is larger than the pool ({len(scores)} documents); lower it")
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    kept_vectors = np.empty((budget, embeddings.shape[1]), np.float32)
    seen_text: set[str] = set()
    skipped = {"below_threshold": 0, "exact_duplicate": 0, "near_duplicate": 0, "contaminated": 0}
    for index in order:
        if len(kept) == budget:
            break
        if not np.isfinite(scores[index]) or (threshold is not None and scores[index] < threshold):
            skipped["below_threshold"] = len(order) - len(kept) - sum(skipped.values())
            break
        key = text_key(texts[index])
        if key in seen_text:
            skipped["exact_duplicate"] += 1
            continue
        vector = l2_normalise(embeddings[index : index + 1].astype(np.float32))[0]
        if kept and float((kept_vectors[: len(kept)] @ vector).max()) >= near_duplicate_cosine:
            skipped["near_duplicate"] += 1
            continue
        if contamination is not None and contamination.overlaps(texts[index]):
            skipped["contaminated"] += 1
            continue
        seen_text.add(key)
        kept_vectors[len(kept)] = vector
        kept.append(int(index))
    return Selection(kept, [float(scores[i]) for i in kept], skipped)
