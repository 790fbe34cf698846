"""Run the demo twice with the same config: the rerun must reuse every cached stage.

Usage: .venv/bin/python bench/demo_cache.py [--config configs/demo.yaml] [--output runs/bench-demo-cache]
Prints a table and, as its last line, {"first_s": ..., "rerun_s": ..., "ratio": ...}. Goal: ratio <= 0.10.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_demo(config: str, output: Path, prefect_home: Path) -> tuple[float, str]:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "finescope.cli", "run", config, "--set", f"output={output}"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"demo failed:\n{done.stderr[-4000:]}")
    return elapsed, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "bench-demo-cache")
    args = parser.parse_args()
    shutil.rmtree(args.output, ignore_errors=True)
    with tempfile.TemporaryDirectory() as prefect_home:
        first_s, _ = run_demo(args.config, args.output, Path(prefect_home))
        rerun_s, log = run_demo(args.config, args.output, Path(prefect_home))
    cached = log.count("Cached(type=COMPLETED)")
    recomputed = [line for line in log.splitlines() if "(computed)" in line and " model: " not in line]
    print(f"{'run':<8}{'wall s':>10}")
    print(f"{'first':<8}{first_s:>10.1f}")
    print(f"{'rerun':<8}{rerun_s:>10.1f}   ({cached} tasks served from cache, {len(recomputed)} stages recomputed)")
    print(json.dumps({"first_s": round(first_s, 1), "rerun_s": round(rerun_s, 1),
                      "ratio": round(rerun_s / first_s, 3)}))


if __name__ == "__main__":
    main()
