"""Recovery ablation: what curated data and self-data distillation add to fine-tuning a pruned model.

Usage: .venv/bin/python bench/ablation.py [--quick] [--domains science code] [--seeds 3]
For each domain, at the config's pruning ratio (25% by default), cloze accuracy on the domain's eval set of: the base
model; the pruned model; and the pruned model fine-tuned on random pool data, on FineScope-curated data, and on
curated data rewritten by the unpruned model (self-data distillation). Every fine-tune sees the same number of
tokens with the same recipe (--method, --lr); each runs with several seeds, and its 95% CI resamples items of the
seed-averaged correctness. Finished fine-tunes are kept under --output, so a rerun resumes. Writes ablation.png there.
The default domains are those where the 135M base model scores clearly above chance (medicine and math sit at it).
Last line: {DOMAIN: {"base": acc, "pruned": acc, "random_ft": [mean, lo, hi], "curated_ft": [...],
"curated_sdd": [...]}}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, cached, curated_refs

from finescope_core import stages, storage
from finescope_core.config import DistillConfig, RunConfig, load_config
from finescope_core.evaluate import bootstrap_counts, mc_correct, percentile_ci, read_mc_items
from finescope_core.finetune import encode_example, finetune
from finescope_core.models import load_model, load_tokenizer
from finescope_core.report import ablation_png
from finescope_core.stage import STAGE_VERSIONS

FINE_TUNES = ("random_ft", "curated_ft", "curated_sdd")


def within_budget(examples: list[dict], tokenizer, max_length: int, budget: int) -> list[dict]:
    """The leading examples whose encoded tokens add up to ``budget`` (the last one may cross it)."""
    chosen, used = [], 0
    for example in examples:
        if used >= budget:
            break
        ids, _ = encode_example(tokenizer, example, max_length)
        chosen.append(example)
        used += len(ids)
    if used < budget:
        raise ValueError(f"only {used} tokens of fine-tuning data for a budget of {budget}; lower --train-tokens")
    return chosen


def training_sets(config: RunConfig, model_ref: dict, refs: dict, seed: int, tokenizer, budget: int) -> dict:
    """Each fine-tune's examples, equal in tokens: random pool rows, curated rows, self-distilled curated rows."""
    max_length = config.distill.max_length
    pool = storage.read_parquet(storage.join(refs["generic"]["uri"], "docs.parquet")).to_pylist()
    shuffled = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    curated = [stages.as_original(r, "self_distill_off") for r in stages.finetune_examples(refs["curated"], None)]
    curated = within_budget(curated, tokenizer, max_length, budget)
    rewrite = config.distill.model_copy(update={"self_distill": True, "max_examples": len(curated) * 3 // 2 + 8})
    distilled = stages.distilled(config.output, model_ref, refs["curated"], rewrite, config.model.device)
    rewritten = storage.read_parquet(storage.join(distilled["uri"], "distilled.parquet")).to_pylist()
    return {
        "random_ft": within_budget(shuffled, tokenizer, max_length, budget),
        "curated_ft": curated,
        "curated_sdd": within_budget(rewritten, tokenizer, max_length, budget),
        "acceptance_rate": distilled["info"]["acceptance_rate"],
    }


def correctness(folder: Path, items, config: RunConfig) -> list[int]:
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    return mc_correct(model, tokenizer, items, config.eval.batch_size, config.eval.mc_max_tokens).astype(int).tolist()


def summary(runs: list[list[int]], resamples: int = 2000) -> list[float]:
    """[mean, lo, hi]: accuracy averaged over seeds, with a 95% CI that resamples items."""
    per_item = np.mean(np.array(runs, dtype=np.float64), axis=0)
    resampled = bootstrap_counts(len(per_item), resamples, 0) @ per_item / len(per_item)
    return [round(float(per_item.mean()), 4), *(round(v, 4) for v in percentile_ci(resampled))]


def fine_tuned_correctness(pruned: Path, examples: list[dict], cfg: DistillConfig, items, config: RunConfig):
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "model"
        finetune(pruned, examples, out, cfg, Path(scratch) / "checkpoints", config.model.device)
        return correctness(out, items, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-ablation"))
    parser.add_argument("--domains", nargs="+", default=["science", "code"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mc-items", type=int, default=200)
    parser.add_argument("--train-tokens", type=int, default=8000, help="tokens every fine-tune sees")
    parser.add_argument("--method", choices=["lora", "full"], default="full",
                        help="fine-tuning method of every fine-tune")
    parser.add_argument("--lr", type=float, default=5e-5, help="learning rate of every fine-tune")
    parser.add_argument("--rewrite-tokens", type=int, default=128, help="tokens the teacher may write per rewrite")
    parser.add_argument("--quick", action="store_true", help="one domain, one seed, 60 items, 3,000 tokens")
    args = parser.parse_args()
    if args.quick:
        args.domains, args.seeds, args.mc_items, args.train_tokens = args.domains[:1], 1, 60, 3000
    torch.manual_seed(0)
    started = time.monotonic()

    overrides = {"method": args.method, "lr": args.lr, "max_new_tokens": args.rewrite_tokens}
    config = load_config(args.config, {"output": args.output})
    config = config.model_copy(update={"distill": config.distill.model_copy(update=overrides)})
    results_dir = Path(args.output) / "results"
    # part of every fine-tune's cache key, with the fine-tuning code's version
    recipe = f"{args.method}-{args.lr:g}-{args.rewrite_tokens}-v{STAGE_VERSIONS['recovered']}"
    table: dict[str, dict] = {}
    notes = {}
    for domain in args.domains:
        model_ref, corpus, refs = curated_refs(config, domain)
        items = read_mc_items(corpus["eval"], domain, args.mc_items)
        pruned = stages.pruned(config.output, model_ref, refs["curated"], "curated.parquet", config.prune,
                               config.model.device)
        pruned_folder = stages.model_folder(pruned)
        tag = f"{domain}-{args.mc_items}"
        base = cached(results_dir / f"{tag}-base.json", correctness, Path(model_ref["uri"]), items, config)
        pruned_runs = cached(results_dir / f"{tag}-pruned-{pruned['fingerprint']}.json", correctness, pruned_folder,
                             items, config)
        row = {"base": round(float(np.mean(base)), 4), "pruned": round(float(np.mean(pruned_runs)), 4)}
        runs: dict[str, list[list[int]]] = {name: [] for name in FINE_TUNES}
        tokenizer = load_tokenizer(model_ref["uri"])
        for seed in range(args.seeds):
            sets = training_sets(config, model_ref, refs, seed, tokenizer, args.train_tokens)
            notes[domain] = {"acceptance_rate": sets["acceptance_rate"],
                             **{f"{name}_examples": len(sets[name]) for name in FINE_TUNES}}
            cfg = config.distill.model_copy(update={"seed": seed})
            for name in FINE_TUNES:
                key = f"{tag}-{name}-{seed}-{args.train_tokens}-{recipe}-{pruned['fingerprint']}"
                runs[name].append(cached(results_dir / f"{key}.json", fine_tuned_correctness, pruned_folder,
                                         sets[name], cfg, items, config))
        row |= {name: summary(seed_runs) for name, seed_runs in runs.items()}
        table[domain] = row

    print(f"cloze accuracy, {args.mc_items} items per domain; fine-tunes ({args.method}, lr {args.lr:g}): "
          f"{args.train_tokens} tokens each, {args.seeds} seed(s), mean [95% CI]; "
          f"prune: {config.prune.model_dump(exclude_defaults=True)}; {time.monotonic() - started:.0f} s")
    print(f"{'domain':<10}{'base':>8}{'pruned':>8}" + "".join(f"{name:>26}" for name in FINE_TUNES))
    for domain, row in table.items():
        cells = "".join(f"{row[n][0]:>10.3f} [{row[n][1]:.3f}, {row[n][2]:.3f}]" for n in FINE_TUNES)
        print(f"{domain:<10}{row['base']:>8.3f}{row['pruned']:>8.3f}{cells}")
    for domain, row in table.items():
        share, beats = row["curated_sdd"][0] / row["base"], row["curated_sdd"][0] > row["random_ft"][0]
        print(f"goal, {domain}: curated_sdd keeps {share:.1%} of base (>= 90%: {round(share, 6) >= 0.9}); "
              f"beats random_ft: {beats}")
    print(f"data: {json.dumps(notes)}")
    png = Path(args.output) / "ablation.png"
    storage.write_bytes(str(png), ablation_png(table, "Recovery ablation (cloze accuracy)"))
    print(f"plot: {png}")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
