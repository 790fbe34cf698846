"""Curation quality on a mixed pool of seven domains: SAE selection and its variants against the MiniLM,
raw-activation and random baselines, with the SAE's settings chosen leave-one-domain-out.

Usage: .venv/bin/python bench/curation.py [--max-pool-docs 5000] [--layers L ...] [--max-tokens 64]

The pool mixes the five demo domains with two held-out ones, law and business, built from MMLU subjects that no
demo domain reads (their documents are exam questions). For every domain, each of two seed files selects M documents
(M in 100, 500) with each method: ``seeds/<domain>.jsonl``, written in the template of one of the domain's pool
sources, and ``seeds/prose/<domain>.jsonl``, plain statements and short notes in no source's template.

SAE settings form a grid: token pooling (mean, max, idf) x power normalisation (0.5, 1) x scoring (cosine;
generalised Jaccard, MoNA's; pseudo-relevance feedback from the top 20; hybrid, ``select.method hybrid`` as shipped:
the feedback score and MiniLM's cosine, each standardised, weighted by ``select.hybrid_weight``) x graph re-ranking
(off, or ``select.manifold_*`` as shipped: manifold ranking of the top budget x 4 on their neighbour graph). A setting
is chosen by its mean precision@500 over both seed styles on the tuning domains only:
- ``lodo``: for each demo domain, the setting chosen on the other four; for law and business, the setting chosen on
  all five demo domains (they chose nothing);
- ``hybrid``: FineScope's default (``SelectConfig``: the SAE score with idf pooling, power 0.5 and feedback from the
  top 20, weighted ``select.hybrid_weight`` against MiniLM's cosine, then re-ranked on the graph), its settings
  chosen on the five demo domains, so its demo-domain figures are in-sample and only law and business measure it;
- ``sae``: the SAE score alone with the same settings (``select.method sae``); ``sae_cosine``, ``sae_jaccard``: the
  same pooling, power and re-ranking, scored otherwise; ``hybrid_first_pass`` and ``sae_first_pass``: the two
  without the graph re-ranking (the defaults before it).
Two measures:
- precision@M: the fraction of selected documents whose source domain is the target (labels);
- KL reduction at M = 500 (DSIR's, ``finescope_core.kl_reduction``): how much closer the selection's hashed word
  n-gram distribution is to the domain's held-out documents than a random selection of 500 is (no labels).
Where the default's 500 go is counted by pool source ("domain/source"), so a shortfall can be read: documents of
another domain that resemble the seeds, or sources of the target that the seeds do not describe.
Stages are cached under --output, so a second run reuses the dump and the SAE.
Last line: {"default": METHOD, "precision_at_100": {METHOD: {DOMAIN: p}}, "precision_at_500": {...},
"precision_at_500_other_seeds": {...}, "kl_reduction": {METHOD: {DOMAIN: x}}, "kl_reduction_other_seeds": {...},
"lodo_settings": {DOMAIN: SETTING}, "grid_precision_at_500": {SETTING: {"demo": p, "held_out": p}},
"default_sources": {STYLE: {DOMAIN: {"domain/source": n}}}, "held_out_domains": [...], "tuned_on": [...]}.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finescope_core import stages, storage
from finescope_core.config import (
    DEMO_DOMAINS,
    DOMAINS,
    CorpusConfig,
    DataConfig,
    DumpConfig,
    ModelConfig,
    SAEConfig,
    SelectConfig,
)
from finescope_core.embed import (
    raw_activation_embeddings,
    selection_vectors,
    token_pooling,
)
from finescope_core.evaluate import read_docs
from finescope_core.formats import DOCS_FILE, EMBEDDINGS_FILE, SENTENCES_FILE
from finescope_core.kl_reduction import kl_reduction
from finescope_core.manifold import manifold_scores
from finescope_core.ngrams import NgramIndex
from finescope_core.select import graph_vectors, hybrid_scores, max_cosine, seed_scores, select_top

REPO = Path(__file__).resolve().parent.parent
BUDGETS = (100, 500)
FEEDBACK_DOCS = 20  # set before any run, not tuned
SHIPPED = SelectConfig()  # the selection settings as shipped: the default's, and the hybrid's feedback and weight
SEED_STYLES = {"template": REPO / "seeds", "other": REPO / "seeds" / "prose"}
HELD_OUT = [domain for domain in DOMAINS if domain not in DEMO_DOMAINS]
KL_BUDGET = 500
# Pool documents per domain before --max-pool-docs subsamples the pool; the held-out domains' MMLU subjects have
# room for it once 200 items and 200 texts are held out.
CORPUS = CorpusConfig(domains=list(DOMAINS), docs_per_domain=1000, eval_mc_per_domain=200, eval_text_per_domain=200)


@dataclass(frozen=True)
class Setting:
    """One way of scoring the pool by SAE codes."""

    pooling: str
    power: float
    scoring: str  # cosine, jaccard, feedback (select.feedback_docs 20) or hybrid (select.method hybrid)
    graph: bool  # re-ranked on the candidates' neighbour graph (select.manifold_* as shipped)

    def __str__(self) -> str:
        return f"{self.pooling}/power {self.power}/{self.scoring}" + ("/graph" if self.graph else "")


@dataclass(frozen=True)
class Ranking:
    """A method's first-pass scores of the pool, the vectors its near-duplicate test compares, and, for a setting
    with the graph re-ranking, the vectors of given rows that its graph compares."""

    scores: np.ndarray
    vectors: np.ndarray
    graph_vectors: Callable[[np.ndarray], np.ndarray] | None = None


SCORINGS = ("cosine", "jaccard", "feedback", "hybrid")


def shipped_settings() -> tuple[Setting, dict[str, Setting]]:
    """FineScope's default as a grid setting, and the methods the figures name: the shipped SAE score ("sae"), the
    hybrid, the shipped pooling, power and re-ranking with each other scoring ("sae_<scoring>"), and the first two
    without the re-ranking ("<name>_first_pass")."""
    assert SHIPPED.feedback_docs in (0, FEEDBACK_DOCS) and SHIPPED.method in ("sae", "hybrid"), \
        "the default is outside the grid"
    assert SHIPPED.similarity == "cosine" or SHIPPED.method == "sae", "the grid's hybrid scores by cosine"
    sae_scoring = "feedback" if SHIPPED.feedback_docs else SHIPPED.similarity
    named = {("sae" if scoring == sae_scoring else "hybrid" if scoring == "hybrid" else f"sae_{scoring}"):
             Setting(SHIPPED.pooling, SHIPPED.power, scoring, SHIPPED.reranks) for scoring in SCORINGS}
    if SHIPPED.reranks:
        named |= {f"{name}_first_pass": Setting(SHIPPED.pooling, SHIPPED.power, scoring, False)
                  for name, scoring in (("hybrid", "hybrid"), ("sae", sae_scoring))}
    return named[SHIPPED.method], named


DEFAULT, NAMED = shipped_settings()
GRID = [DEFAULT] + [s for s in itertools.starmap(Setting, itertools.product(("mean", "max", "idf"), (0.5, 1.0),
                                                                             SCORINGS, (False, True))) if s != DEFAULT]
BASELINES = ("minilm", "raw_act", "random")


def aligned(order: list[str], ids: list[str], matrix: np.ndarray) -> np.ndarray:
    row = {doc_id: i for i, doc_id in enumerate(ids)}
    return matrix[[row[d] for d in order]]


def sae_ranking(setting: Setting, pool_codes: np.ndarray, seed_codes: np.ndarray, blocks: int,
                minilm_scores: np.ndarray, pool_minilm: np.ndarray, shared: dict) -> Ranking:
    """The pool's first-pass scores under ``setting``, with the vectors its near-duplicate test and its graph
    compare. The pool's selection vectors depend on pooling and power only: ``shared`` holds one copy of each for
    every ranking (a copy per setting and seed file would not fit in memory with several layers' codes)."""
    docs, seeds = selection_vectors(pool_codes, seed_codes, setting.pooling, setting.power, blocks)
    docs = shared.setdefault((setting.pooling, setting.power), docs)
    similarity = "jaccard" if setting.scoring == "jaccard" else "cosine"
    feedback = {"feedback": FEEDBACK_DOCS, "hybrid": SHIPPED.feedback_docs}.get(setting.scoring, 0)
    scores = seed_scores(docs, seeds, similarity, feedback)
    hybrid = setting.scoring == "hybrid"
    if hybrid:
        scores = hybrid_scores(scores, minilm_scores, SHIPPED.hybrid_weight)
    compared = graph_vectors(docs, pool_minilm if hybrid else None, SHIPPED.hybrid_weight)
    return Ranking(scores, docs, compared if setting.graph else None)


Precisions = dict[Setting, dict[str, dict[str, float]]]  # setting -> seed style -> domain -> precision@500


def chosen_setting(p500: Precisions, tuning: list[str]) -> Setting:
    """The grid's best setting by mean precision@500 over both seed styles on ``tuning`` (the default wins ties)."""
    return max(GRID, key=lambda s: np.mean([p500[s][style][d] for style in SEED_STYLES for d in tuning]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-curation"))
    parser.add_argument("--max-pool-docs", type=int, default=5000)
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="captured layers, an SAE on each (default: DumpConfig's)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--training-tokens", type=int, default=204_800)
    args = parser.parse_args()

    root, model_cfg = args.output, ModelConfig()
    data = DataConfig(max_pool_docs=args.max_pool_docs, demo=CORPUS)
    dump_cfg = DumpConfig(layers=args.layers, max_tokens=args.max_tokens,
                          sae_sample_tokens=100_000, sensitivity_docs=0)
    sae_cfg = SAEConfig(expansion=args.expansion, k=args.k, lr=3e-3, batch_size=512,
                        training_tokens=args.training_tokens)
    model = stages.model_ref(model_cfg)
    corpus = stages.corpus(root, data)
    pool = stages.pool(root, corpus, data)
    pool_table = storage.read_parquet(storage.join(pool["uri"], DOCS_FILE))
    order, texts = pool_table["doc_id"].to_pylist(), pool_table["text"].to_pylist()
    domains_of = np.array(pool_table["domain"].to_pylist())
    sources_of = np.char.add(np.char.add(domains_of, "/"), np.array(pool_table["source"].to_pylist()))
    acts = stages.acts(root, model, pool, dump_cfg, model_cfg)
    sae = stages.sae(root, acts, sae_cfg, model_cfg.device)
    layers, layer = acts["info"]["layers"], stages.middle_layer(acts["info"]["layers"])

    def codes(dump: dict, ids: list[str], pooling: str) -> np.ndarray:
        embeddings = stages.embeddings(root, dump, sae, token_pooling(pooling), "cpu")
        return stages.stored_vectors(embeddings, EMBEDDINGS_FILE, ids)

    pool_codes = {pooling: codes(acts, order, pooling) for pooling in ("mean", "max")}
    pool_baseline = {"minilm": stages.stored_vectors(stages.sentences(root, pool), SENTENCES_FILE, order),
                     "raw_act": aligned(order, *raw_activation_embeddings(storage.join(acts["uri"], "pooled"),
                                                                          layer)),
                     "random": np.random.default_rng(0).standard_normal((len(order), 64))}
    contamination = NgramIndex(stages.eval_texts(corpus["eval"]))
    chance = [texts[i] for i in np.random.default_rng(1).choice(len(texts), KL_BUDGET, replace=False)]

    def selected(ranking: Ranking, budget: int) -> list[int]:
        scores = ranking.scores
        if ranking.graph_vectors is not None:
            scores = manifold_scores(scores, ranking.graph_vectors, budget * SHIPPED.manifold_candidates,
                                     SHIPPED.manifold_neighbours, SHIPPED.manifold_alpha)
        return select_top(scores, ranking.vectors, texts, budget, None, SHIPPED.near_duplicate_cosine,
                          contamination).indices

    def precision(indices: list[int], domain: str) -> float:
        return round(float((domains_of[indices] == domain).mean()), 3)

    p500: Precisions = {s: {style: {} for style in SEED_STYLES} for s in GRID}
    rankings: dict[tuple[str, str], dict] = {}  # (style, domain) -> the ranking of every setting and baseline
    shared: dict[tuple[str, float], np.ndarray] = {}
    for domain, (style, folder) in itertools.product(DOMAINS, SEED_STYLES.items()):
        seeds = stages.seeds(root, str(folder / f"{domain}.jsonl"))
        seed_table = storage.read_parquet(storage.join(seeds["uri"], DOCS_FILE))
        seed_ids = seed_table["doc_id"].to_pylist()
        seed_acts = stages.acts(root, model, seeds, dump_cfg, model_cfg)
        seed_codes = {pooling: codes(seed_acts, seed_ids, pooling) for pooling in ("mean", "max")}
        seed_baseline = {"minilm": stages.stored_vectors(stages.sentences(root, seeds), SENTENCES_FILE, seed_ids),
                         "raw_act": aligned(seed_ids, *raw_activation_embeddings(
                             storage.join(seed_acts["uri"], "pooled"), layer))}
        minilm = max_cosine(pool_baseline["minilm"], seed_baseline["minilm"])
        ranked = {"minilm": Ranking(minilm, pool_baseline["minilm"]),
                  "raw_act": Ranking(max_cosine(pool_baseline["raw_act"], seed_baseline["raw_act"]),
                                     pool_baseline["raw_act"]),
                  "random": Ranking(np.random.default_rng(0).random(len(order)), pool_baseline["random"])}
        for setting in GRID:
            pooled = token_pooling(setting.pooling)
            ranked[setting] = sae_ranking(setting, pool_codes[pooled], seed_codes[pooled], len(layers), minilm,
                                          pool_baseline["minilm"], shared)
            p500[setting][style][domain] = precision(selected(ranked[setting], 500), domain)
        rankings[style, domain] = ranked
        print(f"scored {domain} ({style} seeds)", flush=True)

    lodo = {d: chosen_setting(p500, [t for t in DEMO_DOMAINS if t != d]) for d in DEMO_DOMAINS}
    lodo |= dict.fromkeys(HELD_OUT, chosen_setting(p500, list(DEMO_DOMAINS)))
    methods = [*NAMED, "lodo", *BASELINES]
    keys = [*(f"precision_at_{m}" for m in BUDGETS), "precision_at_500_other_seeds", "kl_reduction",
            "kl_reduction_other_seeds"]
    figures = {key: {method: {} for method in methods} for key in keys}
    sources: dict[str, dict[str, dict[str, int]]] = {style: {} for style in SEED_STYLES}
    for (style, domain), ranked in rankings.items():
        target = [doc.text for doc in read_docs(corpus["eval"], domain, 200)]
        suffix = "" if style == "template" else "_other_seeds"
        for method in methods:
            key = lodo[domain] if method == "lodo" else NAMED.get(method, method)
            top = {budget: selected(ranked[key], budget)
                   for budget in (BUDGETS if style == "template" else (KL_BUDGET,))}
            for budget, indices in top.items():
                figures[f"precision_at_{budget}{suffix}"][method][domain] = precision(indices, domain)
            if method == SHIPPED.method:
                names, counts = np.unique(sources_of[top[KL_BUDGET]], return_counts=True)
                sources[style][domain] = {str(n): int(c) for c, n in sorted(zip(counts, names), reverse=True)}
            figures[f"kl_reduction{suffix}"][method][domain] = round(
                kl_reduction(target, [texts[i] for i in top[KL_BUDGET]], chance), 4)

    def mean_p500(setting: Setting, domains: list[str]) -> float:
        return round(float(np.mean([p500[setting][style][d] for style in SEED_STYLES for d in domains])), 3)

    grid = {str(s): {"demo": mean_p500(s, list(DEMO_DOMAINS)), "held_out": mean_p500(s, HELD_OUT)} for s in GRID}
    print(f"\npool: {len(order)} documents ({', '.join(f'{d} {int((domains_of == d).sum())}' for d in DOMAINS)}); "
          f"layers {layers} (raw activations: {layer}), {args.max_tokens} tokens/doc, SAE {sae['info']}")
    print("\ngrid, mean precision@500 over both seed styles (demo domains / held-out domains):")
    for name, row in sorted(grid.items(), key=lambda item: -item[1]["demo"]):
        print(f"  {name:<32}{row['demo']:>8.3f}{row['held_out']:>8.3f}")
    print("\nleave-one-domain-out choices: " + ", ".join(f"{d}: {s}" for d, s in lodo.items()))
    for key, table in figures.items():
        print(f"\n{key}")
        print(f"{'method':<19}" + "".join(f"{d:>10}" for d in DOMAINS) + f"{'mean':>10}")
        for method, row in table.items():
            cells = "".join(f"{row[d]:>10.3f}" for d in DOMAINS)
            print(f"{method:<19}{cells}{np.mean(list(row.values())):>10.3f}")
    print(f"\nwhere the default's {KL_BUDGET} go, by pool source:")
    for style, rows in sources.items():
        for domain, counts in rows.items():
            print(f"  {domain} ({style} seeds): " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    print(json.dumps({"default": SHIPPED.method, **figures, "lodo_settings": {d: str(s) for d, s in lodo.items()},
                      "grid_precision_at_500": grid, "default_sources": sources, "held_out_domains": HELD_OUT,
                      "tuned_on": list(DEMO_DOMAINS)}))


if __name__ == "__main__":
    main()
