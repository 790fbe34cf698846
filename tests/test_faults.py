"""Faults during a run: two runs of one config at once, a run killed (SIGKILL) at each stage in turn, and an
object store restarted mid-run. Each run finishes, with the artifacts of an uninterrupted one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults

# The stages a kill interrupts, in the order the pipeline reaches them (distilled: the teacher's rewrites).
STAGES = ("corpus", "acts", "sae", "embeddings", "curated", "pruned", "distilled", "recovered", "eval")
TIMED = {"speed", "report"}  # throughput figures, which differ from run to run

# Runs the CLI with a stage's work followed by SIGKILL, before the stage's completion marker is written.
KILLED_AT = """
import os, signal, sys
from finescope_core import stages
from finescope.cli import main

def run_stage(root, name, inputs, config, work, ignore=frozenset()):
    def then_die(out):
        work(out)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(root, name, inputs, config, then_die if name == sys.argv[1] else work, ignore)

real, stages.run_stage = stages.run_stage, run_stage
sys.exit(main(sys.argv[2:]))
"""


def cli(repo: Path, api: dict[str, str], output: Path, kill_at: str | None = None) -> subprocess.Popen:
    args = ["run", "configs/tiny.yaml", "--set", f"output={output}", "--set", "recover.targets=self_distilled"]
    command = [sys.executable, "-c", KILLED_AT, kill_at, *args] if kill_at else [sys.executable, "-m", "finescope.cli",
                                                                                 *args]
    return subprocess.Popen(command, cwd=repo, env={**os.environ, **api}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen) -> int:
    output, _ = process.communicate(timeout=900)
    assert process.returncode in (0, -9), output[-3000:]
    return process.returncode


def artifacts(output: Path) -> dict[str, dict[str, str]]:
    """Every untimed artifact of a run with its files' content hashes (from the manifest)."""
    manifest = json.loads((output / "manifest.json").read_text())["artifacts"]
    return {name: entry["files"] for name, entry in manifest.items() if name not in TIMED}


def hidden_leftovers(output: Path) -> list[Path]:
    """Scratch files and folders left in stage folders (locks beside them and Prefect's results excepted)."""
    return [path for path in output.rglob(".*") if not path.name.endswith(".lock") and ".prefect-results" not in
            path.parts and path.parent != output]


@pytest.fixture(scope="module")
def uninterrupted(repo: Path, tmp_path_factory, prefect_api: dict[str, str]) -> Path:
    """Two runs of one config started at once against one output: both finish."""
    output = tmp_path_factory.mktemp("together") / "run"
    runs = [cli(repo, prefect_api, output) for _ in range(2)]
    assert [finished(run) for run in runs] == [0, 0]
    return output


def test_two_runs_at_once_share_every_artifact(uninterrupted: Path):
    made = {name.split("_")[0] for name in artifacts(uninterrupted)}  # eval_base, eval_pruned... as eval
    assert made >= set(STAGES) and not hidden_leftovers(uninterrupted)


def test_a_run_killed_at_each_stage_resumes_to_the_artifacts_of_an_uninterrupted_one(
        repo: Path, tmp_path: Path, uninterrupted: Path, prefect_api: dict[str, str]):
    output = tmp_path / "run"
    for stage in STAGES:
        assert finished(cli(repo, prefect_api, output, kill_at=stage)) == -9, stage
        assert not (output / "manifest.json").exists()
    assert finished(cli(repo, prefect_api, output)) == 0
    assert artifacts(output) == artifacts(uninterrupted)
    assert not hidden_leftovers(output)


class Gate:
    """A TCP proxy in front of a server: ``close`` cuts open connections and refuses new ones (the clients see the
    server gone), ``open`` listens again on the same port."""

    def __init__(self, target: int, port: int):
        self.target, self.port, self.connections = target, port, []
        self.open()

    def open(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self.accept, args=(self.server,), daemon=True).start()

    def accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            self.connections.append(client)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:  # the server is down: the client sees its connection dropped
                close(client)
                continue
            self.connections.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self.server.close()
        for connection in self.connections:
            close(connection)


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    close(source)
    close(sink)


def close(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()


def start_moto(port: int, recording: Path) -> subprocess.Popen:
    """A moto S3 server that records every request to ``recording`` (a restarted one replays it to get its state
    back: moto keeps its state in memory only)."""
    env = {**os.environ, "MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(recording)}
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "moto did not start"
            time.sleep(0.1)


def test_a_run_to_object_storage_survives_a_restart_of_the_server(repo: Path, tmp_path: Path, free_port,
                                                                  prefect_api: dict[str, str]):
    import httpx
    import s3fs

    port, recording = free_port(), tmp_path / "moto-requests.jsonl"
    servers = [start_moto(port, recording)]
    try:
        direct = s3fs.S3FileSystem(key="moto", secret="moto", endpoint_url=f"http://127.0.0.1:{port}")
        direct.mkdir("bucket")
        gate = Gate(port, free_port())
        env = {**os.environ, **prefect_api, "AWS_ACCESS_KEY_ID": "moto",
               "AWS_SECRET_ACCESS_KEY": "moto", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{gate.port}"}
        run = subprocess.Popen([sys.executable, "-m", "finescope.cli", "run", "configs/tiny.yaml", "--set",
                                "output=s3://bucket/run"], cwd=repo, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while not direct.exists("bucket/run/acts") and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        gate.close()  # mid-run, during the activation dump or just after it: the server goes away...
        servers[0].terminate()
        servers[0].wait(timeout=10)
        servers.append(start_moto(port, recording))  # ...and comes back empty, then gets its state back
        httpx.post(f"http://127.0.0.1:{port}/moto-api/recorder/replay-recording", timeout=120).raise_for_status()
        gate.open()
        output, _ = run.communicate(timeout=900)
        assert run.returncode == 0, output[-3000:]
        direct.invalidate_cache()
        manifest = json.loads(direct.cat("bucket/run/manifest.json"))["artifacts"]
        assert all(direct.exists(entry["uri"].removeprefix("s3://") + "/_COMPLETE.json")
                   for entry in manifest.values())
        assert {"acts", "sae", "curated", "pruned", "recovered", "report"} <= set(manifest)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
