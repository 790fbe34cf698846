"""Curation precision on the demo pool: SAE selection against the MiniLM, raw-activation and random baselines.

Usage: .venv/bin/python bench/curation.py [--max-pool-docs 5000] [--layer L] [--max-tokens 64] [--pooling idf]
       [--power 0.5]
For every demo domain, its seeds file selects M documents (M in 100, 500) from the same mixed pool with each method;
precision@M is the fraction of selected documents whose source domain is the target. Stages are cached under
--output, so a second run with other selection settings reuses the dump and the SAE.
Last line: {"precision_at_100": {METHOD: {DOMAIN: p}}, "precision_at_500": {...}}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from finescope_core import stages, storage
from finescope_core.config import DOMAINS, DataConfig, DumpConfig, ModelConfig, SAEConfig, SelectConfig
from finescope_core.embed import (
    minilm_embeddings,
    raw_activation_embeddings,
    read_embeddings,
    selection_vectors,
    token_pooling,
)
from finescope_core.formats import DOCS_FILE, EMBEDDINGS_FILE
from finescope_core.ngrams import NgramIndex
from finescope_core.select import max_cosine, select_top

REPO = Path(__file__).resolve().parent.parent
BUDGETS = (100, 500)
METHODS = ("sae", "minilm", "raw_act", "random")


def aligned(order: list[str], ids: list[str], matrix: np.ndarray) -> np.ndarray:
    row = {doc_id: i for i, doc_id in enumerate(ids)}
    return matrix[[row[d] for d in order]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-curation"))
    parser.add_argument("--max-pool-docs", type=int, default=5000)
    parser.add_argument("--layer", type=int, default=None, help="captured layer (default: the middle one)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--pooling", choices=["mean", "max", "idf"], default=SelectConfig().pooling)
    parser.add_argument("--power", type=float, default=SelectConfig().power, help="power normalisation of SAE codes")
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--training-tokens", type=int, default=204_800)
    parser.add_argument("--input-coordinates", type=int, default=None,
                        help="the paper's variant: the SAE reads only the K most gradient-sensitive coordinates")
    parser.add_argument("--sensitivity-docs", type=int, default=64)
    args = parser.parse_args()

    root, model_cfg = args.output, ModelConfig()
    data = DataConfig(max_pool_docs=args.max_pool_docs)
    dump_cfg = DumpConfig(layers=[args.layer] if args.layer is not None else None, max_tokens=args.max_tokens,
                          sae_sample_tokens=100_000,
                          sensitivity_docs=args.sensitivity_docs if args.input_coordinates else 0)
    sae_cfg = SAEConfig(expansion=args.expansion, k=args.k, lr=3e-3, batch_size=512,
                        training_tokens=args.training_tokens, input_coordinates=args.input_coordinates)
    model = stages.model_ref(model_cfg)
    corpus = stages.corpus(root, data)
    pool = stages.pool(root, corpus, data)
    pool_table = storage.read_parquet(storage.join(pool["uri"], DOCS_FILE))
    order, texts = pool_table["doc_id"].to_pylist(), pool_table["text"].to_pylist()
    domains_of = np.array(pool_table["domain"].to_pylist())
    acts = stages.acts(root, model, pool, dump_cfg, model_cfg)
    sae = stages.sae(root, acts, sae_cfg, model_cfg.device)
    pooling = token_pooling(args.pooling)
    layer = acts["info"]["layers"][0]
    pool_vectors = {
        "sae": aligned(order, *read_embeddings(storage.join(
            stages.embeddings(root, acts, sae, pooling, "cpu")["uri"], EMBEDDINGS_FILE))),
        "raw_act": aligned(order, *raw_activation_embeddings(storage.join(acts["uri"], "pooled"), layer)),
        "minilm": minilm_embeddings(texts),
    }
    pool_codes = pool_vectors["sae"]
    contamination = NgramIndex(stages.eval_texts(corpus["eval"]))
    precision = {f"precision_at_{m}": {method: {} for method in METHODS} for m in BUDGETS}
    for domain in DOMAINS:
        seeds = stages.seeds(root, str(REPO / "seeds" / f"{domain}.jsonl"))
        seed_table = storage.read_parquet(storage.join(seeds["uri"], DOCS_FILE))
        seed_acts = stages.acts(root, model, seeds, dump_cfg, model_cfg)
        seed_ids = seed_table["doc_id"].to_pylist()
        seed_emb = stages.embeddings(root, seed_acts, sae, pooling, "cpu")
        seed_vectors = {
            "sae": aligned(seed_ids, *read_embeddings(storage.join(seed_emb["uri"], EMBEDDINGS_FILE))),
            "raw_act": aligned(seed_ids, *raw_activation_embeddings(storage.join(seed_acts["uri"], "pooled"), layer)),
            "minilm": minilm_embeddings(seed_table["text"].to_pylist()),
        }
        pool_vectors["sae"], seed_vectors["sae"] = selection_vectors(pool_codes, seed_vectors["sae"], args.pooling,
                                                                     args.power)
        for method in METHODS:
            if method == "random":
                rng = np.random.default_rng(0)
                scores, vectors = rng.random(len(order)), rng.standard_normal((len(order), 64))
            else:
                scores, vectors = max_cosine(pool_vectors[method], seed_vectors[method]), pool_vectors[method]
            for budget in BUDGETS:
                chosen = select_top(scores, vectors, texts, budget, None,
                                    SelectConfig().near_duplicate_cosine, contamination)
                hits = domains_of[chosen.indices] == domain
                precision[f"precision_at_{budget}"][method][domain] = round(float(hits.mean()), 3)
    print(f"pool: {len(order)} documents ({', '.join(f'{d} {int((domains_of == d).sum())}' for d in DOMAINS)}); "
          f"layer {layer}, {args.max_tokens} tokens/doc, SAE {sae['info']}, pooling {args.pooling}, power {args.power}")
    for key, table in precision.items():
        print(f"\n{key}")
        print(f"{'method':<10}" + "".join(f"{d:>10}" for d in DOMAINS) + f"{'mean':>10}")
        for method, row in table.items():
            cells = "".join(f"{row[d]:>10.3f}" for d in DOMAINS)
            print(f"{method:<10}{cells}{np.mean(list(row.values())):>10.3f}")
    print(json.dumps(precision))


if __name__ == "__main__":
    main()
