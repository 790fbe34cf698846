"""Selection speed at scale: max-over-seeds cosine over N documents, the graph re-ranking of the top M x 4 (as
``select.manifold_*`` ship), then the top-M walk with duplicate checks.

Usage: .venv/bin/python bench/select_speed.py [--docs 1000000] [--dim 2304] [--seeds 15] [--budget 2000]
Random embeddings stand in for SAE codes (the cost does not depend on their values).
Last line: {"docs": N, "score_s": ..., "docs_per_s": ..., "rerank_s": ..., "select_s": ...}.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from finescope_core.config import SelectConfig
from finescope_core.manifold import manifold_scores
from finescope_core.select import max_cosine, select_top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--seeds", type=int, default=15)
    parser.add_argument("--budget", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((args.docs, args.dim), dtype=np.float32)
    seeds = rng.standard_normal((args.seeds, args.dim), dtype=np.float32)
    start = time.perf_counter()
    scores = max_cosine(docs, seeds)
    score_s = time.perf_counter() - start
    shipped, start = SelectConfig(), time.perf_counter()
    candidates = args.budget * shipped.manifold_candidates
    scores = manifold_scores(scores, docs.__getitem__, candidates, shipped.manifold_neighbours, shipped.manifold_alpha)
    rerank_s = time.perf_counter() - start
    start = time.perf_counter()
    select_top(scores, docs, [f"document {i}" for i in range(args.docs)], args.budget)
    select_s = time.perf_counter() - start
    print(f"{'step':<40}{'seconds':>10}")
    print(f"{f'score {args.docs} x {args.dim} vs {args.seeds} seeds':<40}{score_s:>10.2f}")
    print(f"{f're-rank the top {candidates} on their graph':<40}{rerank_s:>10.2f}")
    print(f"{f'walk to top {args.budget} (dedup checks)':<40}{select_s:>10.2f}")
    print(json.dumps({"docs": args.docs, "score_s": round(score_s, 2), "docs_per_s": round(args.docs / score_s),
                      "rerank_s": round(rerank_s, 2), "select_s": round(select_s, 2)}))


if __name__ == "__main__":
    main()
