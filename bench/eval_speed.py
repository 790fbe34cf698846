"""Multiple-choice scoring speed: each item's choices packed into one row against one sequence per choice.

Usage: .venv/bin/python bench/eval_speed.py [--items 60] [--domains science code general]
Scores the demo eval set's first items of each domain with the base model both ways, and checks that the scores agree.
Last line: {DOMAIN: {"unpacked_s": ..., "packed_s": ..., "speedup": ..., "max_abs_diff": ..., "same_choice": ...}}.
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import numpy as np
from common import REPO

from finescope_core import evaluate, stages
from finescope_core.config import load_config
from finescope_core.evaluate import choice_logliks, predict_scores, read_mc_items
from finescope_core.models import load_model, load_tokenizer
from finescope_core.packed import can_pack


def timed_logliks(model, tokenizer, items, batch_size: int, max_tokens: int, packed: bool):
    with mock.patch.object(evaluate, "can_pack", lambda m: packed and can_pack(m)):
        start = time.perf_counter()
        logliks = choice_logliks(model, tokenizer, items, batch_size, max_tokens)
        return logliks, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-recovery"), help="where the corpus is built")
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--domains", nargs="+", default=["science", "code", "general"])
    args = parser.parse_args()
    config = load_config(args.config, {"output": args.output})
    corpus = stages.corpus(config.output, config.data)
    folder = stages.model_ref(config.model)["uri"]
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    batch, max_tokens = config.eval.batch_size, config.eval.mc_max_tokens
    table = {}
    for domain in args.domains:
        items = read_mc_items(corpus["eval"], domain, args.items)
        unpacked, unpacked_s = timed_logliks(model, tokenizer, items, batch, max_tokens, packed=False)
        packed, packed_s = timed_logliks(model, tokenizer, items, batch, max_tokens, packed=True)
        picks = [(np.argmax(predict_scores(i, a)), np.argmax(predict_scores(i, b))) for i, a, b in
                 zip(items, unpacked, packed)]
        table[domain] = {"unpacked_s": round(unpacked_s, 1), "packed_s": round(packed_s, 1),
                         "speedup": round(unpacked_s / packed_s, 2),
                         "max_abs_diff": float(f"{max(np.abs(a - b).max() for a, b in zip(unpacked, packed)):.2e}"),
                         "same_choice": float(np.mean([a == b for a, b in picks]))}
    print(f"{args.items} items per domain, batch {batch}, {model.config._attn_implementation} attention")
    print(f"{'domain':<10}{'unpacked s':>12}{'packed s':>10}{'speed-up':>10}{'max |diff|':>12}{'same pick':>11}")
    for domain, row in table.items():
        print(f"{domain:<10}{row['unpacked_s']:>12.1f}{row['packed_s']:>10.1f}{row['speedup']:>10.2f}"
              f"{row['max_abs_diff']:>12.1e}{row['same_choice']:>11.2f}")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
