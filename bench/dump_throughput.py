"""Activation-dump throughput against a plain forward pass over the same tokens, in one process.

Usage: .venv/bin/python bench/dump_throughput.py [--model smollm2-135m-instruct] [--docs 256] [--max-tokens 64]
The dump (model load, forward up to the captured layer, hooks, Parquet shards written atomically) and a plain forward
of the same layers (same length-bucketed batches, no hooks, nothing written) alternate for --rounds rounds, and their
medians are compared: the ratio is the dump's throughput against the same computation without capture and I/O. One
forward of the whole model is timed too, for context (the dump never runs the layers after the captured one).
Last line: {"dump_tok_s": ..., "forward_tok_s": ..., "ratio": ...}. Goal: ratio >= 0.90.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time

import pyarrow.compute as pc
import torch

from finescope_core import storage
from finescope_core.activations import dump_activations, plan_shards, resolve_layers, tokenize
from finescope_core.config import CorpusConfig, DumpConfig
from finescope_core.corpus import build_demo_corpus
from finescope_core.model_structure import decoder_layers, truncated
from finescope_core.models import load_model, load_tokenizer, resolve


@torch.no_grad()
def plain_forward(model, shards, batch_size: int, pad_id: int) -> None:
    for shard in shards:
        for start in range(0, len(shard.token_ids), batch_size):
            batch = shard.token_ids[start : start + batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([seq + [pad_id] * (width - len(seq)) for seq in batch])
            mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in batch])
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="dump-bench-")
    corpus = storage.join(work, "corpus")
    build_demo_corpus(corpus, CorpusConfig(docs_per_domain=max(1, args.docs // 5), eval_mc_per_domain=5,
                                           eval_text_per_domain=5))
    table = storage.read_parquet_dir(storage.join(corpus, "pool")).slice(0, args.docs)
    ids, texts = table["doc_id"].to_pylist(), table["text"].to_pylist()
    folder = resolve(args.model)
    cfg = DumpConfig(max_tokens=args.max_tokens, shard_docs=64, batch_size=16)
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    shards = plan_shards(ids, tokenize(tokenizer, texts, cfg.max_tokens), cfg.shard_docs)
    n_tokens = sum(len(t) for s in shards for t in s.token_ids)
    depth = max(resolve_layers(cfg.layers, len(decoder_layers(model)))) + 1
    start = time.perf_counter()
    plain_forward(model, shards, cfg.batch_size, tokenizer.pad_token_id)
    whole_s = time.perf_counter() - start
    dump_s, forward_s = [], []
    for round_ in range(args.rounds):
        start = time.perf_counter()
        with truncated(model, depth):
            plain_forward(model, shards, cfg.batch_size, tokenizer.pad_token_id)
        forward_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        dump_activations(folder, ids, texts, storage.join(work, f"acts-{round_}"), cfg)
        dump_s.append(time.perf_counter() - start)
    stored = storage.read_parquet_dir(storage.join(work, "acts-0", "tokens"), ["position"])
    shutil.rmtree(work)
    dump_tok_s, forward_tok_s = n_tokens / statistics.median(dump_s), n_tokens / statistics.median(forward_s)
    print(f"{args.docs} documents, {n_tokens} tokens (max {args.max_tokens} each), {args.rounds} alternating rounds, "
          f"1 thread; stored token rows: {len(stored)} (first token of each document, the attention sink, "
          f"not stored: {int(pc.sum(pc.equal(stored['position'], 0)).as_py() or 0)} at position 0)")
    print(f"{'pass':<34}{'median s':>10}{'tokens/s':>12}")
    print(f"{'plain forward, whole model (once)':<34}{whole_s:>10.2f}{n_tokens / whole_s:>12.0f}")
    print(f"{f'plain forward, layers 0..{depth - 1}':<34}{statistics.median(forward_s):>10.2f}{forward_tok_s:>12.0f}")
    print(f"{'dump (load + capture + Parquet)':<34}{statistics.median(dump_s):>10.2f}{dump_tok_s:>12.0f}")
    print(json.dumps({"dump_tok_s": round(dump_tok_s, 1), "forward_tok_s": round(forward_tok_s, 1),
                      "ratio": round(dump_tok_s / forward_tok_s, 3)}))


if __name__ == "__main__":
    main()
