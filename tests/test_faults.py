"""Faults during a run: two runs of one config at once, a run killed (SIGKILL) at each stage in turn, and an
object store gone mid-run. Each run finishes, with the artifacts of an uninterrupted one."""

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


def start_moto(port: int) -> subprocess.Popen:
    """A moto S3 server on ``port``, up when this returns."""
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "moto did not start"
            time.sleep(0.1)


def test_a_run_to_object_storage_survives_an_outage_of_the_store(repo: Path, free_port, prefect_api: dict[str, str]):
    """The store goes away mid-run, as in a restart: open connections are cut and new ones refused until a task has
    failed on it and been scheduled for a retry; then it answers again, with its objects (a real store keeps them on
    disk; moto's in-memory state stays up behind the gate)."""
    import s3fs

    port = free_port()
    server = start_moto(port)
    try:
        direct = s3fs.S3FileSystem(key="moto", secret="moto", endpoint_url=f"http://127.0.0.1:{port}")
        direct.mkdir("bucket")
        gate = Gate(port, free_port())
        env = {**os.environ, **prefect_api, "AWS_ACCESS_KEY_ID": "moto",
               "AWS_SECRET_ACCESS_KEY": "moto", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{gate.port}"}
        run = subprocess.Popen([sys.executable, "-m", "finescope.cli", "run", "configs/tiny.yaml", "--set",
                                "output=s3://bucket/run"], cwd=repo, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        output, retried = [], threading.Event()

        def read_output() -> None:
            for line in run.stdout:
                output.append(line)
                if " - Retry 1/" in line:  # Prefect's line for a failed task run that will be retried
                    retried.set()

        reader = threading.Thread(target=read_output, daemon=True)
        reader.start()
        deadline = time.monotonic() + 300
        while not direct.exists("bucket/run/acts") and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        gate.close()  # mid-run, during the activation dump or just after it
        deadline = time.monotonic() + 300
        while not retried.is_set() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        gate.open()
        run.wait(timeout=900)
        reader.join(timeout=10)
        log = "".join(output)[-3000:]
        assert retried.is_set(), f"no task met the outage and was retried:\n{log}"
        assert run.returncode == 0, log
        direct.invalidate_cache()
        manifest = json.loads(direct.cat("bucket/run/manifest.json"))["artifacts"]
        assert all(direct.exists(entry["uri"].removeprefix("s3://") + "/_COMPLETE.json")
                   for entry in manifest.values())
        assert {"acts", "sae", "curated", "pruned", "recovered", "report"} <= set(manifest)
    finally:
        server.terminate()
        server.wait(timeout=10)
