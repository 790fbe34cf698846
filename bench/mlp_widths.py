"""MLP time per channel at the widths pruning could choose: whether some width multiple is faster on this machine.

Usage: .venv/bin/python bench/mlp_widths.py [--widths 864 872 880 888 896 904 912] [--tokens 2048] [--repeats 15]
A SmolLM2-shaped gated MLP (hidden 576) at each width, on random inputs, one thread, the widths alternating within each
repeat so that the machine's drift falls on all of them alike; the dense width (1,536) is timed beside them.
Last line: {"us_per_channel": {WIDTH: median microseconds per channel}, "dense_width": 1536, "threads": 1}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

HIDDEN, DENSE_WIDTH = 576, 1536  # SmolLM2-135M's hidden size and MLP width


def gated_mlp(width: int, inputs: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One forward of a Llama MLP (down(silu(gate(x)) * up(x))) of ``width`` channels on ``inputs``."""
    gate, up = torch.nn.Linear(HIDDEN, width, bias=False), torch.nn.Linear(HIDDEN, width, bias=False)
    down = torch.nn.Linear(width, HIDDEN, bias=False)
    return lambda: down(torch.nn.functional.silu(gate(inputs)) * up(inputs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[864, 872, 880, 888, 896, 904, 912])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    inputs = torch.randn(args.tokens, HIDDEN)
    widths = [*args.widths, DENSE_WIDTH]
    forwards = {width: gated_mlp(width, inputs) for width in widths}
    seconds: dict[int, list[float]] = {width: [] for width in widths}
    with torch.no_grad():
        for forward in forwards.values():
            forward()  # warm-up
        for _ in range(args.repeats):
            for width, forward in forwards.items():
                start = time.perf_counter()
                forward()
                seconds[width].append(time.perf_counter() - start)
    per_channel = {width: round(statistics.median(seconds[width]) / width * 1e6, 2) for width in widths}
    for width, us in per_channel.items():
        print(f"width {width:5d}: {us:6.2f} us per channel, {statistics.median(seconds[width]) * 1e3:6.2f} ms")
    print(json.dumps({"us_per_channel": per_channel, "dense_width": DENSE_WIDTH, "threads": 1}))


if __name__ == "__main__":
    main()
