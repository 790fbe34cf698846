"""What a user sees in the Prefect UI: a finished run's report, opened in headless Chromium from the page the test's
Prefect server serves, shows the report's table values and its plot (what the UI renders, not what it stores)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.service

# As a sandboxed root process with no network beyond 127.0.0.1 needs it (background services would only fail).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1400,2400", "--virtual-time-budget=30000"]
EVALUATE = """
import sys
from finescope.flows.evaluate import evaluate
from finescope_core.config import load_config
evaluate(load_config("configs/tiny.yaml", {"output": sys.argv[1]}))
"""


@pytest.fixture(scope="module")
def ui(tmp_path_factory, free_port, prefect_server) -> Iterator[str]:
    """A Prefect server with its UI on 127.0.0.1; yields its address."""
    port = free_port()
    settings = {"PREFECT_UI_ENABLED": "true",
                "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}  # where the pages' scripts call the API
    with prefect_server(tmp_path_factory.mktemp("prefect-ui"), port, settings) as address:
        yield address


def chromium(url: str, *args: str, profile: Path) -> str:
    """Run headless Chromium on ``url``; returns what it prints (the rendered DOM with ``--dump-dom``)."""
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is needed: apt-get install chromium (.ci/run installs it)"
    done = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_ui_shows_a_finished_run_s_report_with_its_table_and_plot(ui: str, repo: Path, tmp_path: Path):
    output = tmp_path / "run"
    env = {**os.environ, "PREFECT_API_URL": f"{ui}/api", "PREFECT_HOME": str(tmp_path / "client")}
    done = subprocess.run([sys.executable, "-c", EVALUATE, str(output)], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    artifacts = httpx.post(f"{ui}/api/artifacts/filter",
                           json={"artifacts": {"key": {"any_": ["finescope-report"]}}}).json()
    assert len(artifacts) == 1
    report = json.loads(next(output.glob("report/*/report.json")).read_text())
    bpb = report["models"]["tiny-random-llama"]["domains"]["medicine"]["bpb"]

    page = f"{ui}/artifacts/artifact/{artifacts[0]['id']}"
    dom = chromium(page, "--dump-dom", profile=tmp_path / "profile-dom")
    text = re.sub(r"<[^>]+>", " ", dom)
    assert "Can't connect to Server API" not in text
    assert f"{bpb:.3f}" in text and "tiny-random-llama" in text  # the report's table, rendered
    assert re.search(r'<img[^>]+src="data:image/png;base64,iVBORw0KGgo', dom)  # the plot, rendered as an image
    evaluation = next(path for path in output.glob("eval/*") if not path.name.startswith("."))  # not its lock
    assert str(evaluation) in text  # where the evaluation lies in storage

    screenshot = tmp_path / "prefect-ui-report.png"
    chromium(page, f"--screenshot={screenshot}", profile=tmp_path / "profile-shot")
    assert screenshot.read_bytes()[:4] == b"\x89PNG" and screenshot.stat().st_size > 50_000
