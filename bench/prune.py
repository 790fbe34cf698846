"""Pruning quality, memory and speed on SmolLM2 at 25% of parameters removed, against LLM-Pruner's figures.

Usage: .venv/bin/python bench/prune.py [--domains medicine math] [--ratio 0.25] [--eval-docs 200]
    [--pool-docs N --budget M]
For each domain the demo config (its pool and budget changed by --pool-docs and --budget) curates calibration data
(dump -> SAE -> select, cached under --output); the model is pruned with the default settings calibrated on the
curation's first-pass selection (the default: before the graph re-ranking), on the curated data itself and on
generic pool text, with the refit aimed at either target (the unpruned model's layer outputs, or the layer's own
weights on the pruned model's inputs) and without the gradient refinement of the pruned MLPs (the least-squares
refit alone) and with each token's error counted as it is or relative to its residual stream, then with magnitude,
random and LLM-Pruner's first-order Taylor importance (param_first, also without the least-squares refit), and each
is scored by held-out perplexity (no recovery). The first variant calibrated on curated text (first pass or not) is
pruned once more in a child process to read its peak RSS (on every domain's curated text in turn, so that it reads
the windows it asks for), and its forward alternates with the dense model's in another fresh process for the
speed-up. Gemma-3-270M, the second real model, is curated for the same domains and pruned with the defaults, its
ratio counting the decoder layers' parameters (its embedding is most of the model).
Last line: {"params_before", "params_after", "peak_rss_ratio", "speedup", "ppl": {VARIANT: {DOMAIN: ppl}},
"gemma3": {"params_before", "params_after", "ppl": {"dense" | "curated": {DOMAIN: ppl}}}}.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import REPO, cached, curated_refs, domain_config

from finescope_core import curation, stages
from finescope_core.addressing import STAGE_VERSIONS
from finescope_core.config import PruneConfig, RunConfig, load_config, parse_overrides
from finescope_core.evaluate import document_scores, read_docs
from finescope_core.formats import DOCS_FILE
from finescope_core.importance import attention_shape, taylor_scores
from finescope_core.model_structure import decoder_layers
from finescope_core.models import count_parameters, load_model, load_tokenizer
from finescope_core.prune import Plan, calibration_sequences, choose_blocks, parts, prune_part

VARIANTS = {  # label -> prune settings that differ from the library's defaults
    "curated": {},
    "curated_graph": {"calibration": "curated"},  # the curated set itself, after the selection's graph re-ranking
    "curated_dense_target": {"refit_target": "dense"},  # refit to the unpruned model's layer outputs
    "curated_own_target": {"refit_target": "own"},  # refit to the layer's weights on the pruned inputs
    "curated_no_refine": {"refine_steps": 0},  # the least-squares refit alone, no gradient steps
    "curated_residual_scale": {"error_scale": "residual"},  # errors relative to the residual stream
    "curated_absolute_scale": {"error_scale": "absolute"},  # every token's squared error as it is
    "generic": {"calibration": "generic"},
    "magnitude": {"importance": "magnitude"},
    "random": {"importance": "random"},
    "param_first": {"importance": "param_first"},  # LLM-Pruner's first-order scoring, with our refit
    "param_first_no_refit": {"importance": "param_first", "reconstruct": False},  # and without
}
SPEED_SHAPE = (8, 256)
GEMMA3 = "gemma3-270m"  # the second real model (registry name)
# LLM-Pruner's published recipe as scaled to SmolLM2 (../shared/notes/anchor-llm-pruner.md): layers 3-27 of 30,
# param_first importance from 10 generic sequences of 64 tokens, no refit.
RECIPE, RECIPE_LAYERS, RECIPE_SAMPLES, RECIPE_TOKENS = "llm_pruner_recipe", range(3, 28), 10, 64


def llm_pruner_recipe(model_uri: str, generic_texts: list[str], ratio: float):
    """Our implementation of LLM-Pruner's recipe (not its code), pruned in memory: the layers outside the range keep
    their widths, so no stock folder can hold the result. Inside the range, a third of each kv group's query heads
    goes (LLM-Pruner removes whole kv heads, which our pruner does not) and the MLP channels that bring the total
    removed to ``ratio`` of all parameters."""
    model = load_model(model_uri, in_memory=True)
    sequences = calibration_sequences(load_tokenizer(model_uri), generic_texts, RECIPE_SAMPLES, RECIPE_TOKENS)
    scores = taylor_scores(model, sequences, "param_first", "cpu")
    shape, layers = attention_shape(model), decoder_layers(model)
    hidden = model.config.hidden_size
    heads = shape.n_rep // 3
    per_layer = ratio * count_parameters(model) / len(RECIPE_LAYERS) - shape.n_kv * heads * 2 * shape.head_dim * hidden
    plan = Plan(heads, round(per_layer / (3 * hidden)))
    cfg = PruneConfig(importance="param_first", reconstruct=False)
    for index in RECIPE_LAYERS:
        for part, part_scores in zip(parts(shape, plan), scores[index]):
            blocks = choose_blocks(layers[index].get_submodule(part.projection).weight, part, cfg, None, part_scores)
            with torch.no_grad():
                prune_part(layers[index], part, blocks, shape, None, refit=False)
    return model


def peak_rss_of_pruning(model_uri: str, texts: list[str], cfg: PruneConfig) -> tuple[float, int]:
    """Peak resident memory (bytes) of a fresh process that loads the model and prunes it, and the calibration
    tokens it read.

    Read from the child's VmHWM: its ru_maxrss would carry this (larger) process's high-water mark across exec.
    """
    with tempfile.TemporaryDirectory() as scratch:
        texts_file = Path(scratch) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        code = ("import json, sys; from pathlib import Path; from finescope_core.config import PruneConfig;"
                "from finescope_core.prune import prune_model;"
                "info = prune_model(sys.argv[1], json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3]) / 'out',"
                "PruneConfig.model_validate_json(sys.argv[4]));"
                "print(info['calibration_tokens'],"
                "next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))")
        done = subprocess.run([sys.executable, "-c", code, model_uri, str(texts_file), scratch, cfg.model_dump_json()],
                              check=True, capture_output=True, text=True)
    tokens, peak_kib = done.stdout.strip().splitlines()[-1].split()
    return int(peak_kib) * 1024, int(tokens)


def speed_in_fresh_process(dense_uri: str, pruned_uri: str) -> tuple[float, float]:
    """Forward tokens/s (all logits) of both models on one random batch, timed alternately in a fresh process, as
    the peer's figures were, so that nothing this process did before weighs on either model."""
    code = ("import json, sys; from finescope_core.speed import alternating_throughput;"
            f"print(json.dumps(alternating_throughput({{'dense': sys.argv[1], 'pruned': sys.argv[2]}}, rounds=9,"
            f"shape={SPEED_SHAPE}, all_logits=True)))")
    done = subprocess.run([sys.executable, "-c", code, dense_uri, str(pruned_uri)], check=True, capture_output=True,
                          text=True)
    tok_s = json.loads(done.stdout.strip().splitlines()[-1])
    return tok_s["dense"], tok_s["pruned"]


def held_out_ppl(model, key: str, tokenizer, docs, cache: Path, eval_tokens: int) -> float:
    """Perplexity on a domain's held-out docs of a model (its folder, or a function that makes it), kept per model
    so a rerun resumes."""
    def compute() -> float:
        loaded = model() if callable(model) else load_model(model)
        scores = document_scores(loaded, tokenizer, docs, eval_tokens, 8)
        return math.exp(sum(scores["nll"]) / sum(scores["tokens"]))

    return cached(cache / f"{key}-{len(docs)}x{eval_tokens}.json", compute)


def curation_config(args: argparse.Namespace, extra: dict | None = None) -> RunConfig:
    """The curation settings: the config file's, with the pool and budget the command line gives."""
    chosen = {"data.max_pool_docs": args.pool_docs, "select.budget": args.budget}
    overrides = {key: value for key, value in chosen.items() if value is not None}
    return load_config(args.config, {"output": args.output, **overrides, **(extra or {})})


def calibration_of(config: RunConfig, domain: str, cfg: PruneConfig, refs: dict) -> tuple[dict, str]:
    """The calibration text ``cfg.calibration`` names for ``domain``'s curation (its ``refs``), as the flows pick it."""
    return curation.calibration_text(domain_config(config, domain).model_copy(update={"prune": cfg}), refs)


def gemma3_figures(args: argparse.Namespace, base_prune: PruneConfig, score) -> dict:
    """Gemma-3-270M curated for each domain and pruned with the default settings, ``ratio`` of its decoder layers'
    parameters removed: parameter counts and held-out perplexity, dense and pruned."""
    config = curation_config(args, {"model.name": GEMMA3})
    cfg = base_prune.model_copy(update={"ratio_of": "decoder"})
    figures: dict = {"ppl": {"dense": {}, "curated": {}}}
    for domain in args.domains:
        model_ref, corpus, refs = curated_refs(config, domain)
        docs = read_docs(corpus["eval"], domain, args.eval_docs)
        tokenizer = load_tokenizer(model_ref["uri"])
        figures["ppl"]["dense"][domain] = score(model_ref["uri"], f"{domain}-dense-{model_ref['fingerprint']}",
                                                tokenizer, docs)
        ref = stages.pruned(config.output, model_ref, *calibration_of(config, domain, cfg, refs), cfg, "cpu")
        figures["ppl"]["curated"][domain] = score(str(stages.model_folder(ref)), f"{domain}-{ref['fingerprint']}",
                                                  tokenizer, docs)
        figures.update(params_before=ref["info"]["params_before"], params_after=ref["info"]["params_after"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"), help="curation settings")
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-prune"))
    parser.add_argument("--pool-docs", type=int, default=None,
                        help="pool documents curated from (default: the config's)")
    parser.add_argument("--budget", type=int, default=None,
                        help="documents the curation keeps, the calibration text (default: the config's)")
    parser.add_argument("--domains", nargs="+", default=["medicine", "math"])
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--eval-docs", type=int, default=200)
    parser.add_argument("--eval-tokens", type=int, default=256)
    parser.add_argument("--variants", nargs="+", choices=[*VARIANTS, RECIPE], default=[*VARIANTS, RECIPE])
    parser.add_argument("--seeds", type=int, default=1,
                        help="calibration seeds of the curated variant (its perplexity is their mean; spread printed)")
    parser.add_argument("--skip-gemma3", action="store_true", help="leave out the second model (Gemma-3-270M)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a prune setting for every variant, e.g. --set calibration_samples=64")
    args = parser.parse_args()

    config = curation_config(args)
    overrides = parse_overrides(args.set)
    base_prune = PruneConfig(ratio=args.ratio, **overrides)  # the library's defaults, not the demo's
    variants = {label: VARIANTS[label] for label in args.variants if label != RECIPE}
    ppl: dict[str, dict[str, float]] = {"dense": {}, **{label: {} for label in args.variants}}
    spread: dict[str, float] = {}  # half the range of the curated variant's perplexity over calibration seeds

    score = functools.partial(held_out_ppl, cache=Path(args.output) / "perplexity", eval_tokens=args.eval_tokens)
    # the peak is read on the first curated variant's settings and every domain's text for it, so that the pruner
    # gets the calibration windows it asks for, as it does from a user's curation (the bench's may hold fewer)
    pruned_uri, memory_cfg, memory_texts, counts = None, None, [], {}
    first_curated = next((label for label, settings in variants.items()
                          if settings.get("calibration", base_prune.calibration) != "generic"), None)
    for domain in args.domains:
        model_ref, corpus, refs = curated_refs(config, domain)
        docs = read_docs(corpus["eval"], domain, args.eval_docs)
        tokenizer = load_tokenizer(model_ref["uri"])
        ppl["dense"][domain] = score(model_ref["uri"], f"{domain}-dense-{model_ref['fingerprint']}", tokenizer, docs)
        for label, settings in variants.items():
            seeds = range(args.seeds) if label == "curated" else [base_prune.seed]
            by_seed = []
            for seed in seeds:
                cfg = base_prune.model_copy(update={"seed": seed, **settings})
                calibration, filename = calibration_of(config, domain, cfg, refs)
                ref = stages.pruned(config.output, model_ref, calibration, filename, cfg, "cpu")
                folder = str(stages.model_folder(ref))
                by_seed.append(score(folder, f"{domain}-{ref['fingerprint']}", tokenizer, docs))
                counts = {"params_before": ref["info"]["params_before"], "params_after": ref["info"]["params_after"]}
                if label == first_curated and seed == seeds[0]:
                    if pruned_uri is None:  # the first domain's model and settings; every domain's text
                        pruned_uri, memory_cfg = stages.model_folder(ref), cfg
                    memory_texts += stages.calibration_texts(calibration, filename, cfg.calibration_samples,
                                                             cfg.seed, sample=False)
            ppl[label][domain] = statistics.mean(by_seed)
            if label == "curated":
                spread[domain] = (max(by_seed) - min(by_seed)) / 2
        if RECIPE in args.variants:
            generic = stages.calibration_texts(refs["generic"], DOCS_FILE, RECIPE_SAMPLES, base_prune.seed,
                                               sample=True)
            recipe = functools.partial(llm_pruner_recipe, model_ref["uri"], generic, args.ratio)
            # the recipe shares the pruned stage's code, so that stage's version marks a change of it
            key = f"{domain}-{RECIPE}-{refs['generic']['fingerprint']}-{args.ratio}-v{STAGE_VERSIONS['pruned']}"
            ppl[RECIPE][domain] = score(recipe, key, tokenizer, docs)
    model_bytes = 4 * counts["params_before"]
    peak, peak_tokens = peak_rss_of_pruning(model_ref["uri"], memory_texts, memory_cfg)
    dense_tok_s, pruned_tok_s = speed_in_fresh_process(model_ref["uri"], pruned_uri)
    gemma3 = None if args.skip_gemma3 else gemma3_figures(args, base_prune, score)

    print(f"SmolLM2 {counts['params_before'] / 1e6:.1f}M -> {counts['params_after'] / 1e6:.1f}M parameters "
          f"({1 - counts['params_after'] / counts['params_before']:.2%} removed); prune settings: "
          f"{base_prune.model_dump(exclude_defaults=True)}; {args.eval_docs} docs x {args.eval_tokens} tokens/domain")
    print(f"{'perplexity':<22}" + "".join(f"{d:>12}" for d in args.domains))
    for label, row in ppl.items():
        print(f"{label:<22}" + "".join(f"{row[d]:>12.2f}" for d in args.domains))
    print(f"curated, {args.seeds} calibration seed(s): +-" + ", ".join(f"{d} {v:.2f}" for d, v in spread.items()))
    print(f"peak RSS of pruning on {peak_tokens} calibration tokens: {peak / 2**30:.2f} GiB = "
          f"{peak / model_bytes:.2f}x the fp32 model ({model_bytes / 2**30:.2f} GiB)")
    print(f"forward {SPEED_SHAPE}: dense {dense_tok_s:.0f} tok/s, pruned {pruned_tok_s:.0f} tok/s")
    summary = {**counts, "peak_rss_ratio": round(peak / model_bytes, 3),
               "speedup": round(pruned_tok_s / dense_tok_s, 3), "ppl": rounded(ppl)}
    if gemma3:
        print(f"Gemma-3-270M {gemma3['params_before'] / 1e6:.1f}M -> {gemma3['params_after'] / 1e6:.1f}M parameters, "
              f"{args.ratio:.0%} of its decoder layers' removed; perplexity dense / pruned: " + ", ".join(
                  f"{d} {gemma3['ppl']['dense'][d]:.2f} / {gemma3['ppl']['curated'][d]:.2f}" for d in args.domains))
        summary["gemma3"] = {**gemma3, "ppl": rounded(gemma3["ppl"])}
    print(json.dumps(summary))


def rounded(ppl: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {label: {domain: round(value, 2) for domain, value in row.items()} for label, row in ppl.items()}


if __name__ == "__main__":
    main()
