"""The service end to end, on 127.0.0.1 only: a Prefect server with basic auth on a PostgreSQL database, the process
work pool, deployments from deployments/prefect.yaml, a worker, REST- and event-triggered runs, artifacts and results
in a moto S3 bucket. Every process is started here and stopped at the end."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import s3fs
import yaml

pytestmark = pytest.mark.service
BIN = Path(sys.executable).parent
BUCKET = "finescope"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Service:
    api: str
    auth: tuple[str, str]
    s3: s3fs.S3FileSystem
    s3_secret: str
    deployments: dict[str, str]  # name -> id
    worker_log: Path
    server_log: Path

    def request(self, method: str, path: str, **body) -> httpx.Response:
        """An authenticated request that must succeed; a failure shows the server's answer. A 503 (the server's
        database busy, which Prefect marks retryable) is retried, as Prefect's own client does."""
        for wait in (1, 2, 4, 8, 16, 0):
            response = httpx.request(method, f"{self.api}{path}", json=body if method in ("POST", "PATCH") else None,
                                     auth=self.auth, timeout=30)
            if response.status_code != 503 or not wait:
                break
            time.sleep(wait)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text[:2000]}"
        return response

    def post(self, path: str, **body) -> httpx.Response:
        return self.request("POST", path, **body)

    def wait(self, run_id: str, timeout: float = 420) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.request("GET", f"/flow_runs/{run_id}").json()
            if run["state"]["type"] in TERMINAL:
                return run
            time.sleep(2)
        raise AssertionError(f"flow run {run_id} did not finish in {timeout} s; worker log:\n"
                             + self.worker_log.read_text()[-3000:])


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not up after {timeout} s:\n{log.read_text()[-3000:]}")


def tiny_config(output: str, pool: str, repo: Path) -> dict:
    config = yaml.safe_load((repo / "configs" / "tiny.yaml").read_text())
    config.update(output=output, data={"pool": pool})
    config["select"] = {**config.get("select", {}), "budget": 10}
    config["sae"] = {**config["sae"], "refit_drift": 10.0}  # keep the SAE: the test counts the work of new shards
    return config


@pytest.fixture(scope="module")
def service(tmp_path_factory, repo: Path, free_port, postgres: str):
    home = tmp_path_factory.mktemp("service")
    password, s3_secret = secrets.token_hex(8), "moto-" + secrets.token_hex(8)
    s3_port, api_port = free_port(), free_port()
    endpoint, api = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{api_port}/api"
    base = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "AWS_"))}
    base |= {"PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "PREFECT_UI_ENABLED": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    client = base | {"PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": f"finescope:{password}",
                     "AWS_ACCESS_KEY_ID": "moto", "AWS_SECRET_ACCESS_KEY": s3_secret, "AWS_ENDPOINT_URL": endpoint,
                     "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "remote-file-system/finescope-results",
                     "PREFECT_WORKER_QUERY_SECONDS": "2", "FINESCOPE_CACHE": str(repo / ".cache")}
    processes = []

    def start(args: list[str], env: dict, name: str) -> tuple[subprocess.Popen, Path]:
        log = home / f"{name}.log"
        process = subprocess.Popen(args, cwd=repo, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        processes.append(process)
        return process, log

    def cli(*args: str) -> str:
        done = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=repo, env=client,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    try:
        moto, moto_log = start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], base, "moto")
        wait_until_up(f"{endpoint}/moto-api/", moto, moto_log)
        s3 = s3fs.S3FileSystem(key="moto", secret=s3_secret, endpoint_url=endpoint)
        s3.mkdir(BUCKET)
        server_env = base | {"PREFECT_SERVER_API_AUTH_STRING": f"finescope:{password}",
                             "PREFECT_API_DATABASE_CONNECTION_URL": postgres}  # the service's database, not SQLite
        server, server_log = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                    str(api_port)], server_env, "server")
        wait_until_up(f"{api}/health", server, server_log)
        cli("work-pool", "create", "finescope-local", "--type", "process")
        subprocess.run([sys.executable, "-c", "from prefect.filesystems import RemoteFileSystem; RemoteFileSystem("
                        f"basepath='s3://{BUCKET}/prefect-results').save('finescope-results')"],
                       cwd=repo, env=client, check=True, timeout=120)
        pool, output = f"s3://{BUCKET}/pool", f"s3://{BUCKET}/runs/tiny"
        params = {"curate-bucket": {"config": tiny_config(output, pool, repo)},
                  "watch-bucket": {"pool": pool, "output": output}}
        for name, parameters in params.items():
            cli("deploy", "--prefect-file", "deployments/prefect.yaml", "-n", name, "--params", json.dumps(parameters))
        _, worker_log = start([str(BIN / "prefect"), "worker", "start", "--pool", "finescope-local"], client, "worker")
        found = httpx.post(f"{api}/deployments/filter", json={}, auth=("finescope", password), timeout=30).json()
        yield Service(api, ("finescope", password), s3, s3_secret, {d["name"]: d["id"] for d in found}, worker_log,
                      server_log)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)  # nothing left to save: each test has read what it needs
            except subprocess.TimeoutExpired:
                process.kill()


def upload_shard(service: Service, tmp_path: Path, index: int, write_shard) -> None:
    local = write_shard(tmp_path / "shards", index)
    service.s3.put(local, f"{BUCKET}/pool/{Path(local).name}")


def s3_folders(service: Service, stage: str) -> list[str]:
    path = f"{BUCKET}/runs/tiny/{stage}"
    return service.s3.ls(path, refresh=True) if service.s3.exists(path) else []


def stored_flow_runs(postgres: str) -> int:
    """How many flow runs the server's PostgreSQL database holds, read there directly."""
    done = subprocess.run(["psql", postgres.replace("+asyncpg", ""), "-tAc", "select count(*) from flow_run"],
                          capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout)


def test_a_rest_triggered_run_completes_with_its_artifacts_in_s3(service: Service, tmp_path: Path, write_shard,
                                                                 postgres: str):
    for index in range(2):
        upload_shard(service, tmp_path, index, write_shard)
    refused = httpx.post(f"{service.api}/deployments/{service.deployments['curate-bucket']}/create_flow_run",
                         json={}, timeout=30)
    assert refused.status_code == 401

    run = service.post(f"/deployments/{service.deployments['curate-bucket']}/create_flow_run").json()
    finished = service.wait(run["id"])
    assert finished["state"]["type"] == "COMPLETED", finished["state"]["message"]
    assert finished["name"].startswith("curate-medicine-")  # named from the deployment's JSON parameters
    assert stored_flow_runs(postgres) >= 1  # the server keeps its records in PostgreSQL

    curated = service.s3.glob(f"{BUCKET}/runs/tiny/curated/*/curated.parquet")
    assert len(curated) == 1 and service.s3.exists(curated[0].rsplit("/", 1)[0] + "/_COMPLETE.json")
    with service.s3.open(curated[0]) as handle:
        assert len(pq.read_table(handle)) == 10
    assert len(s3_folders(service, "acts")) == 3  # two shards and the seeds
    assert service.s3.ls(f"{BUCKET}/prefect-results", refresh=True)  # Prefect's task results live in the bucket too

    logs = service.post("/logs/filter", logs={"flow_run_id": {"any_": [run["id"]]}}).json()
    assert logs and not any(service.s3_secret in entry["message"] for entry in logs)
    for path in service.s3.find(f"{BUCKET}/runs"):
        if path.endswith(".json"):
            assert service.s3_secret not in service.s3.cat(path).decode()


def test_new_shards_trigger_a_recuration_of_only_those_shards(service: Service, tmp_path: Path, write_shard):
    acts_before = s3_folders(service, "acts")
    embeddings_before = s3_folders(service, "embeddings")
    sentences_before = s3_folders(service, "sentences")
    upload_shard(service, tmp_path, 2, write_shard)
    started = time.time()
    watch = service.post(f"/deployments/{service.deployments['watch-bucket']}/create_flow_run").json()
    assert service.wait(watch["id"])["state"]["type"] == "COMPLETED"

    deadline = time.monotonic() + 420
    triggered = []
    while not triggered and time.monotonic() < deadline:
        runs = service.post("/flow_runs/filter", flow_runs={
            "deployment_id": {"any_": [service.deployments["curate-bucket"]]}}).json()
        triggered = [r for r in runs if r["created"] > watch["created"]]
        time.sleep(2)
    assert triggered, f"no curate run followed the watcher's event within {time.time() - started:.0f} s"
    finished = service.wait(triggered[0]["id"])
    assert finished["state"]["type"] == "COMPLETED", finished["state"]["message"]

    assert len(s3_folders(service, "acts")) == len(acts_before) + 1
    assert len(s3_folders(service, "embeddings")) == len(embeddings_before) + 1
    assert len(s3_folders(service, "sentences")) == len(sentences_before) + 1  # the hybrid's embedder too
    state = [path for path in service.s3.ls(f"{BUCKET}/runs/tiny/state", refresh=True) if "incremental-" in path]
    last = json.loads(service.s3.cat(state[0]))["last"]
    assert last["new_shards"] == 1 and last["action"] == "reused"


LOAD_RUNS, POOL_LIMIT = 20, 4


def test_twenty_runs_submitted_at_once_all_complete_with_nothing_lost(service: Service):
    """Load on the server and its PostgreSQL database: 20 runs of the pool watcher submitted at once through the API,
    at most 4 running at a time (the work pool's limit), each writing its states, task runs and logs. (Every shard
    was announced by the tests before, so each run checks the bucket and finds nothing new: the load is the
    server's, not the model's.)"""
    service.request("PATCH", "/work_pools/finescope-local", concurrency_limit=POOL_LIMIT)
    seen = [path for path in service.s3.ls(f"{BUCKET}/runs/tiny/state", refresh=True) if "/seen-" in path]
    announced = json.loads(service.s3.cat(seen[0]))
    started = time.monotonic()
    deployment = service.deployments["watch-bucket"]
    ids = [service.post(f"/deployments/{deployment}/create_flow_run").json()["id"] for _ in range(LOAD_RUNS)]
    finished = [service.wait(run_id, timeout=600) for run_id in ids]
    figures = {"submitted": LOAD_RUNS, "completed": sum(r["state"]["type"] == "COMPLETED" for r in finished),
               "wall_s": round(time.monotonic() - started), "pool_limit": POOL_LIMIT,
               "flow_run_retries": sum(r["run_count"] - 1 for r in finished)}
    print("load:", json.dumps(figures))
    assert figures["completed"] == LOAD_RUNS, [r["state"]["message"] for r in finished]
    assert [r["state_name"] for r in finished] == ["Completed"] * LOAD_RUNS
    server_log = service.server_log.read_text()
    assert "database is locked" not in server_log and "OperationalError" not in server_log
    assert json.loads(service.s3.cat(seen[0])) == announced and len(announced) == 3  # the record, whole
