"""Graph re-ranking of a selection's best candidates (manifold ranking, Zhou et al., NIPS 2004).

Seeds written in another style or covering a domain partly reach only part of it: a first-pass score ranks the
documents most like some seed, not those most like the domain's other documents. Manifold ranking lets each score
spread along a nearest-neighbour graph of the candidates, so a document rises when its neighbours score well, and a
cluster that the seeds touch at its edge is taken whole, while an isolated document that resembles one seed falls.

The graph covers only the top ``candidates`` documents of the first pass: its cost grows with their square (times
the vectors' width), so it is bounded by the budget, not the pool.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg

from finescope_core.embed import l2_normalise

GRAPH_CHUNK_ENTRIES = 1 << 24  # similarities held at once while finding neighbours (64 MB in float32)


def neighbour_graph(vectors: np.ndarray, neighbours: int) -> sparse.csr_matrix:
    """The symmetrically normalised affinity D^-1/2 W D^-1/2 of the ``neighbours``-nearest-neighbour graph of the
    rows by cosine (negative similarities count as 0; an edge is kept if either end chose it)."""
    unit = l2_normalise(np.asarray(vectors, np.float32))
    rows, k = len(unit), min(neighbours, len(unit) - 1)
    nearest = np.empty((rows, k), np.int64)
    weights = np.empty((rows, k), np.float32)
    chunk = max(1, GRAPH_CHUNK_ENTRIES // rows)
    for start in range(0, rows, chunk):
        similarity = unit[start : start + chunk] @ unit.T
        similarity[np.arange(len(similarity)), np.arange(start, start + len(similarity))] = -np.inf
        chosen = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        nearest[start : start + chunk] = chosen
        weights[start : start + chunk] = np.take_along_axis(similarity, chosen, axis=1)
    affinity = sparse.csr_matrix((np.maximum(weights.ravel(), 0), (np.repeat(np.arange(rows), k), nearest.ravel())),
                                 shape=(rows, rows))
    affinity = affinity.maximum(affinity.T)
    inverse_root_degree = 1 / np.sqrt(np.maximum(np.asarray(affinity.sum(1)).ravel(), 1e-12))
    return sparse.diags(inverse_root_degree) @ affinity @ sparse.diags(inverse_root_degree)


def manifold_scores(scores: np.ndarray, vectors_of: Callable[[np.ndarray], np.ndarray], candidates: int,
                    neighbours: int, alpha: float) -> np.ndarray:
    """The pool's scores with the top ``candidates`` re-ranked: their first-pass scores, standardised over the
    candidates and clipped at 0, are the prior y, and the new score f solves f = alpha S f + (1 - alpha) y on the
    candidates' neighbour graph S (``vectors_of``: the vectors the graph compares, of the rows it is given, so
    that only the candidates' are made). Every other document keeps its first-pass order, below every candidate.
    Documents scored -inf (excluded by a threshold) stay -inf and out of the graph."""
    scores = np.asarray(scores, np.float64)
    eligible = np.flatnonzero(np.isfinite(scores))
    order = eligible[np.argsort(-scores[eligible], kind="stable")]
    top, rest = order[:candidates], order[candidates:]
    ranked = np.full(len(scores), -np.inf)
    if len(top) == 0:
        return ranked
    solution = np.zeros(len(top))  # a single candidate has no graph
    if len(top) > 1:
        first = scores[top]
        prior = np.maximum((first - first.mean()) / max(float(first.std()), 1e-12), 0)
        system = sparse.identity(len(top)) - alpha * neighbour_graph(vectors_of(top), neighbours)
        solution, info = sparse_linalg.cg(system, (1 - alpha) * prior, rtol=1e-8, maxiter=10 * len(top))
        if info != 0:
            raise RuntimeError(f"manifold ranking did not converge ({info}); lower select.manifold_alpha")
    ranked[top] = solution
    # The rest keep their first-pass order, each below the lowest candidate.
    ranked[rest] = solution.min() - 1 - np.arange(1, len(rest) + 1) / (len(rest) + 1)
    return ranked
