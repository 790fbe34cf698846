import numpy as np

from finescope_core.config import SelectConfig
from finescope_core.manifold import manifold_scores, neighbour_graph
from finescope_core.select import max_cosine, select_top


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def pool_with_decoys(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seed on axis 0; ten documents of its domain, all fairly like it (cosine 0.8); three decoys more like it
    (0.85), each at the edge of its own cluster of six documents that are not (0.3)."""
    width = 8
    seed = np.eye(width)[:1]
    domain = unit(0.8 * np.eye(width)[0] + 0.6 * np.eye(width)[1] + 0.01 * rng.standard_normal((10, width)))
    decoys, clusters = [], []
    for axis in (2, 3, 4):
        decoys.append(0.85 * np.eye(width)[0] + 0.53 * np.eye(width)[axis])
        clusters.append(0.3 * np.eye(width)[0] + 0.95 * np.eye(width)[axis] + 0.01 * rng.standard_normal((6, width)))
    pool = np.concatenate([domain, unit(np.array(decoys)), unit(np.concatenate(clusters))]).astype(np.float32)
    return pool, seed.astype(np.float32), np.arange(10)


def test_graph_is_symmetric_normalised_and_links_nearest_neighbours():
    pool, _, domain = pool_with_decoys(np.random.default_rng(0))
    graph = neighbour_graph(pool, 3).toarray()
    assert np.allclose(graph, graph.T)
    assert np.all(np.diag(graph) == 0)
    assert graph[np.ix_(domain, domain)].sum(1).min() > 0  # each domain document links within the domain
    assert (graph[10, 13:19] > 0).sum() == 3 and graph[10, domain].max() == 0  # a decoy: to its own cluster


def test_reranking_takes_the_cluster_the_seed_reaches_over_isolated_lookalikes():
    pool, seed, domain = pool_with_decoys(np.random.default_rng(0))
    first = max_cosine(pool, seed)
    assert set(np.argsort(-first)[:10]) != set(domain)  # the decoys outscore part of the domain
    ranked = manifold_scores(first, pool.__getitem__, candidates=len(pool), neighbours=3, alpha=0.99)
    assert set(np.argsort(-ranked)[:10]) == set(domain)


def test_documents_beyond_the_candidates_keep_their_order_below_them_and_excluded_ones_stay_out():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((12, 5)).astype(np.float32)
    first = rng.random(12)
    first[3] = -np.inf
    ranked = manifold_scores(first, vectors.__getitem__, candidates=4, neighbours=2, alpha=0.9)
    order = np.argsort(-first, kind="stable")
    top, rest = order[:4], order[4:11]
    assert ranked[top].min() > ranked[rest].max()
    assert list(np.argsort(-ranked[rest], kind="stable")) == list(range(len(rest)))
    assert ranked[3] == -np.inf
    texts = [f"document {i}" for i in range(12)]
    assert 3 not in select_top(ranked, vectors, texts, budget=12).indices
    assert len(select_top(ranked, vectors, texts, budget=12).indices) == 11


def test_selection_reranks_the_sae_score_by_default_after_its_threshold():
    from finescope_core.stages import _selection_scores

    pool, seed, domain = pool_with_decoys(np.random.default_rng(0))
    settings = {"method": "sae", "budget": 10, "power": 1.0, "feedback_docs": 0, "manifold_neighbours": 3}
    reranked = _selection_scores(SelectConfig(**settings), pool, seed, None)
    plain = _selection_scores(SelectConfig(**settings, manifold_alpha=0), pool, seed, None)
    assert set(np.argsort(-reranked)[:10]) == set(domain) != set(np.argsort(-plain)[:10])
    kept = _selection_scores(SelectConfig(**settings, threshold=0.5), pool, seed, None)
    assert np.isfinite(kept).sum() == (plain >= 0.5).sum() == 13  # the domain and the decoys; their clusters out


def test_the_graph_is_the_same_found_a_few_rows_at_a_time(monkeypatch):
    from finescope_core import manifold

    pool, _, _ = pool_with_decoys(np.random.default_rng(2))
    whole = neighbour_graph(pool, 3).toarray()
    monkeypatch.setattr(manifold, "GRAPH_CHUNK_ENTRIES", 2 * len(pool))  # two rows per chunk
    assert np.array_equal(neighbour_graph(pool, 3).toarray(), whole)


def test_a_single_candidate_leaves_the_rest_in_their_first_pass_order():
    first = np.array([0.2, 0.9, 0.5, 0.7])
    ranked = manifold_scores(first, np.eye(4, dtype=np.float32).__getitem__, candidates=1, neighbours=2, alpha=0.9)
    assert list(np.argsort(-ranked, kind="stable")) == [1, 3, 2, 0]
    assert np.isfinite(ranked).all()
