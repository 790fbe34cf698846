"""The whole flow on a tiny config, twice: every artifact is made, then every stage is reused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from finescope_core import storage


def finescope(repo: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_tiny_flow_end_to_end_then_cached(repo: Path, tmp_path: Path):
    out = tmp_path / "run"
    first = finescope(repo, tmp_path, "run", "configs/tiny.yaml", "--set", f"output={out}")
    report_line = next(line for line in first.stdout.splitlines() if line.startswith("Report: "))
    report = Path(report_line.removeprefix("Report: "))
    assert report.is_file() and report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads(report.with_suffix(".json").read_text())
    assert set(metrics) == {"base", "pruned", "recovered"}
    assert metrics["pruned"]["params"] < metrics["base"]["params"]

    manifest = json.loads((out / "manifest.json").read_text())["artifacts"]
    for name in ("corpus", "acts", "sae", "curated", "pruned", "recovered", "report"):
        assert name in manifest, name
        for rel, digest in list(manifest[name]["files"].items())[:20]:
            assert storage.sha256_uri(storage.join(manifest[name]["uri"], rel)) == digest
    curated = pq.read_table(Path(manifest["curated"]["uri"]) / "curated.parquet")
    assert curated.num_rows == 20 and curated["rank"].to_pylist() == list(range(1, 21))
    assert (Path(manifest["sae"]["uri"]) / "cfg.json").is_file()
    assert (Path(manifest["pruned"]["uri"]) / "model" / "config.json").is_file()

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    second = finescope(repo, tmp_path, "run", "configs/tiny.yaml", "--set", f"output={out}")
    recomputed = [line for line in second.stderr.splitlines() if "(computed)" in line and " model: " not in line]
    assert recomputed == []  # only the model lookup runs again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == mtimes

    curated = finescope(repo, tmp_path, "curate", "--config", "configs/tiny.yaml", "--out", str(out),
                           "--seeds", "seeds/medicine.jsonl", "--budget", "20")
    line = next(line for line in curated.stdout.splitlines() if line.startswith("Curated: "))
    assert line.startswith(f"Curated: {manifest['curated']['uri']}/curated.parquet (20 documents)")

    calibration = Path(manifest["curated"]["uri"]) / "curated.parquet"
    pruned = finescope(repo, tmp_path, "prune", "--config", "configs/tiny.yaml", "--out", str(tmp_path / "alone"),
                       "--calibration", str(calibration), "--ratio", "0.01")
    line = next(line for line in pruned.stdout.splitlines() if line.startswith("Pruned: "))
    folder = Path(line.removeprefix("Pruned: ").split(" (")[0])
    assert folder.is_relative_to(tmp_path / "alone") and (folder / "config.json").is_file()
    assert json.loads((folder / "pruning.json").read_text())["params_after"] == metrics["pruned"]["params"]
