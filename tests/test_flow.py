"""The whole flow on a tiny config, twice: every artifact is made, then every stage is reused."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from finescope_core import storage


@pytest.fixture
def finescope(repo: Path, tmp_path: Path, prefect_api: dict[str, str]) -> Callable[..., subprocess.CompletedProcess]:
    """Runs the CLI with the given arguments against the session's Prefect server; it must succeed."""

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), **prefect_api}
        done = subprocess.run([sys.executable, "-m", "finescope.cli", *args], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    return run


def progress_shown(api: str, since: str) -> dict[str, float]:
    """The progress artifacts of the flow runs started since ``since``: their descriptions and last values."""
    runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"start_time": {"after_": since}}}).json()
    artifacts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {
        "type": {"any_": ["progress"]}, "flow_run_id": {"any_": [run["id"] for run in runs]}}}).json()
    return {artifact["description"]: artifact["data"] for artifact in artifacts}


def test_tiny_flow_end_to_end_then_cached(tmp_path: Path, finescope, prefect_api: dict[str, str]):
    out = tmp_path / "run"
    started = datetime.now(UTC).isoformat()
    first = finescope("run", "configs/tiny.yaml", "--set", f"output={out}")
    shown = progress_shown(prefect_api["PREFECT_API_URL"], started)
    for loop in ("dump-pool: activation dump (shards)", "sae-layers-1: SAE fit, layer 1 (batches)",
                 "recover-512-tokens: recovery (steps)", "eval-recovered: perplexity (batches)"):
        assert shown.get(loop) == 100.0, (loop, shown)  # each long loop of the run, in the UI, finished
    report_line = next(line for line in first.stdout.splitlines() if line.startswith("Report: "))
    report = Path(report_line.removeprefix("Report: "))
    assert report.is_file() and report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(report.with_suffix(".json").read_text())
    metrics = saved["models"]
    assert set(metrics) == set(saved["speed"]) == {"base", "pruned", "recovered"}
    assert saved["paired"]["medicine"]["recovered"]["gap_closed"] is not None
    assert metrics["pruned"]["params"] < metrics["base"]["params"]
    assert "Beginning flow run 'finescope-medicine-tiny-random-llama'" in first.stderr
    for task_run in ("dump-pool", "dump-seeds", "sae-layers-1", "sentences-pool", "sentences-seeds",
                     "select-hybrid-20", "prune-0.01", "recover-512-tokens",
                     "eval-tiny-random-llama", "eval-pruned", "eval-recovered"):
        assert f"Task run '{task_run}'" in first.stderr, task_run
    lookups = [line for line in first.stderr.splitlines() if " - model: " in line or " - corpus: " in line]
    assert len(lookups) == 2, lookups  # resolved once each: curation is handed them, not made to look again

    manifest = json.loads((out / "manifest.json").read_text())["artifacts"]
    for name in ("corpus", "acts", "sae", "curated", "calibration", "pruned", "recovered", "speed", "report"):
        assert name in manifest, name
        for rel, digest in list(manifest[name]["files"].items())[:20]:
            assert storage.sha256_uri(storage.join(manifest[name]["uri"], rel)) == digest
    curated = pq.read_table(Path(manifest["curated"]["uri"]) / "curated.parquet")
    assert curated.num_rows == 20 and curated["rank"].to_pylist() == list(range(1, 21))
    # pruning calibrates on the same selection before its graph re-ranking, reaching calibration_breadth (3) times
    # as far down the ranking: a second selection, of three times the budget
    assert manifest["calibration"]["uri"] != manifest["curated"]["uri"]
    assert pq.read_table(Path(manifest["calibration"]["uri"]) / "curated.parquet").num_rows == 60
    assert (Path(manifest["sae"]["uri"]) / "layer-1" / "cfg.json").is_file()  # the one captured layer's SAE
    assert (Path(manifest["pruned"]["uri"]) / "model" / "config.json").is_file()
    assert not (Path(manifest["recovered"]["uri"]) / "checkpoint").exists()

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    second = finescope("run", "configs/tiny.yaml", "--set", f"output={out}")
    recomputed = [line for line in second.stderr.splitlines() if "(computed)" in line and " model: " not in line]
    assert recomputed == []  # only the model lookup runs again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == mtimes

    curated = finescope("curate", "--config", "configs/tiny.yaml", "--out", str(out),
                           "--seeds", "seeds/medicine.jsonl", "--budget", "20")
    line = next(line for line in curated.stdout.splitlines() if line.startswith("Curated: "))
    assert line.startswith(f"Curated: {manifest['curated']['uri']}/curated.parquet (20 documents)")

    calibration = Path(manifest["curated"]["uri"]) / "curated.parquet"
    pruned = finescope("prune", "--config", "configs/tiny.yaml", "--out", str(tmp_path / "alone"),
                       "--calibration", str(calibration), "--ratio", "0.01")
    line = next(line for line in pruned.stdout.splitlines() if line.startswith("Pruned: "))
    folder = Path(line.removeprefix("Pruned: ").split(" (")[0])
    assert folder.is_relative_to(tmp_path / "alone") and (folder / "config.json").is_file()
    assert json.loads((folder / "pruning.json").read_text())["params_after"] == metrics["pruned"]["params"]


def test_sweep_prunes_and_recovers_at_each_ratio_and_picks_the_smallest_that_keeps_enough(tmp_path, finescope):
    out = tmp_path / "run"
    done = finescope("sweep", "configs/tiny.yaml", "--ratios", "0.014", "0.008", "--keep", "0.5",
                     "--set", f"output={out}")
    sweep_md = Path(next(line for line in done.stdout.splitlines() if line.startswith("Sweep: ")).split(": ", 1)[1])
    summary = json.loads(sweep_md.with_suffix(".json").read_text())
    rows = {row["model"]: row for row in summary["rows"]}
    assert list(rows) == ["base", "pruned 1.4%, recovered", "pruned 0.8%, recovered"]  # base, then by size
    assert rows["pruned 1.4%, recovered"]["params"] < rows["pruned 0.8%, recovered"]["params"] < rows["base"]["params"]
    assert rows["base"]["share"] == 1.0
    kept = [row for row in summary["rows"] if row["share"] >= 0.5]
    assert summary["chosen"] == min(kept, key=lambda row: row["params"])["model"]
    assert f"Chosen: {summary['chosen']}" in done.stdout
    assert sweep_md.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_scores_one_model_on_an_eval_set_read_from_a_dataset(tmp_path: Path, finescope):
    questions = [f"Which organ is affected in case {i}?" for i in range(6)]
    (tmp_path / "items.jsonl").write_text("".join(
        json.dumps({"question": q, "options": ["heart", "lung", "liver"], "gold": i % 3}) + "\n"
        for i, q in enumerate(questions)))
    entry = {"domain": "medicine", "dataset": str(tmp_path / "items.jsonl"), "choices": "options", "answer": "gold"}
    done = finescope("evaluate", "--config", "configs/tiny.yaml", "--out", str(tmp_path / "run"),
                     "--set", f"data.eval_datasets={json.dumps([entry])}")
    report = Path(next(line for line in done.stdout.splitlines() if line.startswith("Report: ")).split(": ", 1)[1])
    medicine = json.loads(report.with_suffix(".json").read_text())["models"]["tiny-random-llama"]["domains"]["medicine"]
    assert medicine["n_mc"] == 6 and medicine["n_docs"] == 0 and medicine["bpb"] is None
    assert 0 <= medicine["acc"] <= 1
    assert "| tiny-random-llama |" in report.read_text()
