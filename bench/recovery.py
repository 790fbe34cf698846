"""Recovery bench: how much of what pruning lost distillation wins back, by training text, at equal tokens.

Usage: .venv/bin/python bench/recovery.py [--domains science code] [--seeds 3] [--tokens N] [--workers 2]
[--set KEY=VALUE (a recovery setting)] [--quick]
Per domain, from the demo config (with --pool-docs and --budget): the pool is curated as the config selects
(``select.method``: by default the hybrid of SAE codes and MiniLM), with MiniLM alone and at random, at the same
budget; the base model is pruned on the curated text; the curated set is self-distilled. Arms, each at --tokens
supervised tokens with the library's recipe (``RecoverConfig``):
- random, minilm, curated: the pruned model distilled from the unpruned one on that selection's text;
- curated_sdd: the same on the curated documents with answers rewritten by the unpruned model;
- dense_curated: the unpruned model itself trained on the curated text with the LM loss (the paper's "not pruned"
  row; distilling a model from itself teaches nothing).
Every arm runs --seeds seeds (its window order); dense_curated, a reference, --dense-seeds. Evaluation on the
domain: --mc-items cloze items and --ppl-docs held-out documents (256 tokens each); off the domain: --ppl-docs
general documents. Per item and document the seeds are averaged; every interval is a 95% bootstrap over items or
documents, and each "vs_X" is the arm minus X, paired on the same units. Scoring and training run in bfloat16
autocast where the CPU computes it natively, in float32 elsewhere (every model alike). Jobs run in --workers
processes (each job on one thread; the stages every domain shares run first, on every core); every stage is cached
under --output, so a rerun resumes.
The recipe's defaults (learning rate, budget, LM weight) were tuned on medicine, which is not among the default
domains.
Last line: {DOMAIN: {"base": {"bpb", "acc", "acc_by_source"}, "pruned": {...}, ARM: {"bpb", "acc", "acc_by_source",
"gap_closed", "gap_closed_by_source": {SOURCE: [m, lo, hi]}, "vs_random_bpb", "vs_random_acc", "vs_pruned_acc",
"vs_pruned_acc_by_source", "vs_pruned_bpb", "vs_pruned_margin", "offdomain_bpb", "vs_pruned_offdomain_bpb"}},
"budget_tokens": N, "recipe": {KEY: VALUE}}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from common import REPO, cached, curated_refs, selection

from finescope_core import stages
from finescope_core.config import EvalConfig, RecoverConfig, RunConfig, load_config, parse_overrides
from finescope_core.evaluate import document_scores, read_docs, scoring_precision
from finescope_core.formats import CURATED_FILE, DISTILLED_FILE
from finescope_core.models import load_model, load_tokenizer
from finescope_core.precision import resolve_precision
from finescope_core.stats import bpb_ci, gap_closed, mean_ci, paired_bpb_difference, paired_difference

ARMS = ("random", "minilm", "curated", "curated_sdd", "dense_curated")
OFF_DOMAIN = "general"
RESAMPLES = 2000


def prepare(config: RunConfig, domain: str, arms: list[str], threads: int) -> dict:
    """The domain's pruned model and the training text of each arm asked for (each a cached stage), computed on
    ``threads`` threads: the workers' share of the cores, as more threads than cores slow generation down."""
    torch.set_num_threads(threads)
    model, corpus, refs = curated_refs(config, domain)
    pruned = stages.pruned(config.output, model, refs["curated"], CURATED_FILE, config.prune, "cpu")
    texts = {arm: (selection(config, domain, corpus, refs, arm), CURATED_FILE)
             for arm in ("random", "minilm") if arm in arms}
    texts |= {arm: (refs["curated"], CURATED_FILE) for arm in ("curated", "dense_curated") if arm in arms}
    prep = {"model": model, "pruned": pruned, "eval": corpus["eval_sets"], "texts": texts}
    if "curated_sdd" in arms:  # the unpruned model's rewrites: minutes of generation, so only when asked for
        distilled = stages.distilled(config.output, model, refs["curated"], config.distill, "cpu")
        texts["curated_sdd"] = (distilled, DISTILLED_FILE)
        prep["acceptance"] = distilled["info"]
    return prep


def trained(config: RunConfig, prep: dict, arm: str, seed: int, tokens: int, recipe: dict) -> dict:
    """The arm's recovered model (a cached stage), with the library's recipe changed by ``recipe``."""
    cfg = RecoverConfig(**{**recipe, "tokens": tokens, "seed": seed,
                           **({"lm_weight": 1.0} if arm == "dense_curated" else {})})
    student = prep["model"] if arm == "dense_curated" else prep["pruned"]
    texts, filename = prep["texts"][arm]
    return stages.recovered(config.output, student, prep["model"], texts, filename, cfg, "cpu")


def scores(config: RunConfig, prep: dict, model: dict, domain: str, evaluation: EvalConfig) -> dict:
    """Per-unit scores of one model: its domain evaluation and its off-domain documents."""
    domain_units = stages.eval_results(stages.evaluation(config.output, model, prep["eval"], [domain], evaluation,
                                                         config.model))["units"][domain]

    precision = resolve_precision(evaluation.precision, "cpu")

    def off_domain() -> dict:
        folder = stages.model_folder(model)
        docs = read_docs(prep["eval"]["uri"], OFF_DOMAIN, evaluation.ppl_docs)
        scored = load_model(folder)
        with scoring_precision(scored, precision):
            return document_scores(scored, load_tokenizer(folder), docs, evaluation.max_tokens, evaluation.batch_size)

    path = Path(config.output) / "offdomain" / f"{model['fingerprint']}-{evaluation.ppl_docs}-{precision}.json"
    return {"domain": domain_units, "off": {"docs": cached(path, off_domain)}}


def job(config: RunConfig, prep: dict, domain: str, arm: str, seed: int, tokens: int, recipe: dict,
        evaluation: EvalConfig) -> tuple[str, str, int, dict]:
    """One worker's task: train the arm (or take the base or pruned model) and score it."""
    torch.set_num_threads(1)
    model = prep[arm] if arm in ("model", "pruned") else trained(config, prep, arm, seed, tokens, recipe)
    return domain, arm, seed, scores(config, prep, model, domain, evaluation)


def seed_mean(runs: list[dict], part: str, kind: str, column: str) -> np.ndarray:
    return np.mean([np.asarray(run[part][kind][column], dtype=np.float64) for run in runs], axis=0)


def rounded(values: list[float] | None) -> list[float] | None:
    return None if values is None else [round(v, 4) for v in values]


def domain_row(units: dict[str, list[dict]]) -> dict:
    """The bench's figures for one domain from every model's per-unit scores (arms averaged over seeds)."""
    nll = {name: seed_mean(runs, "domain", "docs", "nll") for name, runs in units.items()}
    correct = {name: seed_mean(runs, "domain", "items", "correct") for name, runs in units.items()}
    margin = {name: seed_mean(runs, "domain", "items", "margin") for name, runs in units.items()}
    off = {name: seed_mean(runs, "off", "docs", "nll") for name, runs in units.items()}
    n_bytes = np.asarray(units["model"][0]["domain"]["docs"]["bytes"], dtype=np.float64)
    off_bytes = np.asarray(units["model"][0]["off"]["docs"]["bytes"], dtype=np.float64)
    sources = np.asarray(units["model"][0]["domain"]["docs"]["source"])
    by_source = {source: sources == source for source in dict.fromkeys(sources.tolist())}
    item_sources = np.asarray(units["model"][0]["domain"]["items"]["source"])
    items_by_source = {source: item_sources == source for source in dict.fromkeys(item_sources.tolist())}
    row = {label: {"bpb": round(bpb_ci(nll[name], n_bytes, RESAMPLES, 0)[0], 4),
                   "acc": round(float(correct[name].mean()), 4),
                   "acc_by_source": {source: round(float(correct[name][rows].mean()), 4)
                                     for source, rows in items_by_source.items()},
                   "offdomain_bpb": round(bpb_ci(off[name], off_bytes, RESAMPLES, 0)[0], 4)}
           for label, name in (("base", "model"), ("pruned", "pruned"))}
    for arm in (a for a in ARMS if a in units):
        row[arm] = {
            "bpb": rounded(bpb_ci(nll[arm], n_bytes, RESAMPLES, 0)),
            "acc": rounded(mean_ci(correct[arm], RESAMPLES, 0)),
            "acc_by_source": {source: rounded(mean_ci(correct[arm][rows], RESAMPLES, 0))
                              for source, rows in items_by_source.items()},
            "gap_closed": rounded(gap_closed(nll["model"], nll["pruned"], nll[arm], n_bytes, RESAMPLES, 0)),
            "gap_closed_by_source": {
                source: rounded(gap_closed(nll["model"][rows], nll["pruned"][rows], nll[arm][rows], n_bytes[rows],
                                           RESAMPLES, 0))
                for source, rows in by_source.items()},
            "vs_pruned_bpb": rounded(paired_bpb_difference(nll[arm], nll["pruned"], n_bytes, RESAMPLES, 0)),
            "vs_pruned_acc": rounded(paired_difference(correct[arm], correct["pruned"], RESAMPLES, 0)),
            "vs_pruned_acc_by_source": {
                source: rounded(paired_difference(correct[arm][rows], correct["pruned"][rows], RESAMPLES, 0))
                for source, rows in items_by_source.items()},
            "vs_pruned_margin": rounded(paired_difference(margin[arm], margin["pruned"], RESAMPLES, 0)),
            "offdomain_bpb": rounded(bpb_ci(off[arm], off_bytes, RESAMPLES, 0)),
            "vs_pruned_offdomain_bpb": rounded(paired_bpb_difference(off[arm], off["pruned"], off_bytes,
                                                                     RESAMPLES, 0)),
        }
        if "random" in units:
            row[arm]["vs_random_bpb"] = rounded(paired_bpb_difference(nll[arm], nll["random"], n_bytes, RESAMPLES, 0))
            row[arm]["vs_random_acc"] = rounded(paired_difference(correct[arm], correct["random"], RESAMPLES, 0))
    return row


def print_table(table: dict, notes: dict) -> None:
    cells = ("bpb", "gap_closed", "vs_random_bpb", "acc", "vs_pruned_acc", "offdomain_bpb")
    for domain, row in table.items():
        print(f"\n{domain}: base bpb {row['base']['bpb']:.4f} acc {row['base']['acc']:.3f} (off-domain bpb "
              f"{row['base']['offdomain_bpb']:.4f}); pruned bpb {row['pruned']['bpb']:.4f} acc "
              f"{row['pruned']['acc']:.3f} (off-domain {row['pruned']['offdomain_bpb']:.4f}){notes[domain]}")
        print(f"{'arm':<15}" + "".join(f"{c:>28}" for c in cells))
        for arm in (a for a in ARMS if a in row):
            print(f"{arm:<15}" + "".join(
                f"{'n/a' if row[arm].get(c) is None else '{:+.4f} [{:+.4f}, {:+.4f}]'.format(*row[arm][c]):>28}"
                for c in cells))
        for arm in (a for a in ARMS if a in row):
            print(f"{arm:<15}gap closed by held-out source: " + ", ".join(
                f"{source} {'n/a' if share is None else f'{share[0]:.1%}'}"
                for source, share in row[arm]["gap_closed_by_source"].items()))
        print("accuracy by item source (base, pruned" + "".join(f", {a}" for a in ARMS if a in row) + "): " + "; ".join(
            f"{source} " + " ".join(f"{row[name]['acc_by_source'][source]:.3f}" for name in ("base", "pruned"))
            + "".join(f" {row[arm]['acc_by_source'][source][0]:.3f}" for arm in ARMS if arm in row)
            for source in row["base"]["acc_by_source"]))
        curated = row.get("curated")
        if curated and "vs_random_bpb" in curated:
            print(f"goal, {domain}: curated closes {curated['gap_closed'][0]:.1%} of the bpb gap (>= 60%: "
                  f"{curated['gap_closed'][0] >= 0.6}); beats random on bpb (hi < 0): "
                  f"{curated['vs_random_bpb'][2] < 0}; accuracy >= pruned: {curated['vs_pruned_acc'][0] >= 0}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-recovery"))
    parser.add_argument("--domains", nargs="+", default=["science", "code"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each arm")
    parser.add_argument("--dense-seeds", type=int, default=1, help="seeds of dense_curated (a reference row)")
    parser.add_argument("--tokens", type=int, default=RecoverConfig().tokens, help="supervised tokens per arm")
    parser.add_argument("--mc-items", type=int, default=1000)
    parser.add_argument("--ppl-docs", type=int, default=200)
    parser.add_argument("--pool-docs", type=int, default=3000, help="pool documents curated from")
    parser.add_argument("--budget", type=int, default=300, help="documents each selection keeps")
    parser.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a recovery setting for every arm, e.g. --set lm_weight=0")
    parser.add_argument("--quick", action="store_true",
                        help="one domain, one seed, 300 items, 100 documents, at most 16,384 tokens")
    args = parser.parse_args()
    if args.quick:
        args.domains, args.seeds, args.mc_items, args.ppl_docs = args.domains[:1], 1, 300, 100
        args.tokens = min(args.tokens, 16384)
    recipe = parse_overrides(args.set)
    RecoverConfig(**recipe)  # a mistyped setting fails here, before any work
    started = time.monotonic()
    overrides = {"output": args.output, "data.max_pool_docs": args.pool_docs, "select.budget": args.budget}
    config = load_config(args.config, overrides)
    evaluation = config.eval.model_copy(update={"mc_items": args.mc_items, "ppl_docs": args.ppl_docs,
                                                "max_tokens": 256, "precision": "auto"})
    curated_refs(config, args.domains[0])  # the stages every domain shares, once, on every core, before the workers
    context = multiprocessing.get_context("spawn")
    threads = max(1, torch.get_num_threads() // min(args.workers, len(args.domains)))
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        preps = dict(zip(args.domains, pool.map(prepare, [config] * len(args.domains), args.domains,
                                                 [args.arms] * len(args.domains), [threads] * len(args.domains))))
        # the arms' jobs (training and scoring) first, the base and pruned models' (scoring only) last: the short
        # jobs fill the time a worker would otherwise wait for the other's last long one
        jobs = [(domain, arm, seed) for seed in range(args.seeds) for domain in args.domains for arm in args.arms
                if arm != "dense_curated" or seed < args.dense_seeds]
        jobs += [(domain, arm, 0) for domain in args.domains for arm in ("model", "pruned")]
        done = pool.map(job, *zip(*[(config, preps[d], d, a, s, args.tokens, recipe, evaluation) for d, a, s in jobs]))
        units: dict[str, dict[str, list[dict]]] = {d: {} for d in args.domains}
        for domain, arm, _, result in done:
            units[domain].setdefault(arm, []).append(result)
    table = {domain: domain_row(units[domain]) for domain in args.domains}
    notes = {d: f"; self-distillation acceptance {preps[d]['acceptance']['acceptance_rate']}, rejected "
                f"{preps[d]['acceptance']['rejected']}" if "acceptance" in preps[d] else "" for d in args.domains}
    print(f"recovery at {args.tokens} supervised tokens per arm, {args.seeds} seed(s), recipe changes "
          f"{recipe or 'none'}; {args.mc_items} items and {args.ppl_docs} documents per domain; pool "
          f"{args.pool_docs}, budget {args.budget}; {time.monotonic() - started:.0f} s")
    print_table(table, notes)
    print(json.dumps({**table, "budget_tokens": args.tokens, "recipe": recipe}))


if __name__ == "__main__":
    main()
