"""A killed CLI leaves no process behind: its watchdog stops Prefect's temporary server."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil


def servers(cli: psutil.Process) -> list[psutil.Process]:
    return [child for child in cli.children(recursive=True) if "uvicorn" in " ".join(child.cmdline())]


def test_kill_9_of_the_cli_stops_its_temporary_prefect_server(repo: Path, tmp_path: Path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    cli = subprocess.Popen([sys.executable, "-m", "finescope.cli", "run", "configs/tiny.yaml", "--set",
                            f"output={tmp_path / 'run'}"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline, started = time.monotonic() + 240, []
        while not started and time.monotonic() < deadline and cli.poll() is None:
            time.sleep(0.5)
            started = servers(psutil.Process(cli.pid))
        assert started, "the CLI never started Prefect's temporary server"
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        alive = psutil.wait_procs(started, timeout=15)[1]
        assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    finally:
        cli.kill()
