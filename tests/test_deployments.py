"""Static checks of what cannot run here: the GPU worker image (no Docker engine) and the deployment definitions
(their configs must validate before a worker ever sees them)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from finescope.flows.watch import SHARDS_ARRIVED

from finescope_core.config import RunConfig


@pytest.fixture(scope="module")
def dockerfile(repo: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (repo / "docker" / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.fixture(scope="module")
def project(repo: Path) -> dict:
    return yaml.safe_load((repo / "deployments" / "prefect.yaml").read_text())


def test_base_image_is_pinned(dockerfile):
    base = [args for instruction, args in dockerfile if instruction == "FROM"]
    assert len(base) == 1 and re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", base[0]), base


def test_every_install_is_pinned(dockerfile, repo: Path):
    makefile = (repo / "Makefile").read_text()
    for instruction, args in dockerfile:
        if instruction != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = command.split()
            if words[:2] == ["pip", "install"]:
                packages = [w for w in words[2:] if not w.startswith("-")]
                assert all("==" in p or p in ("requirements.lock", ".") for p in packages), command
                assert "torch" not in command or f"{packages[0]}" in makefile  # the same torch as `make setup`
            if words[:2] == ["apt-get", "install"]:
                assert all("=" in w for w in words[2:] if not w.startswith("-")), command
    lock = (repo / "requirements.lock").read_text().split()
    assert lock and all(re.fullmatch(r"[\w.-]+==[\w.+!-]+", line) for line in lock)


def test_copied_paths_exist_and_entrypoint_is_exec_form(dockerfile, repo: Path):
    for instruction, args in dockerfile:
        if instruction == "COPY":
            for source in args.split()[:-1]:
                assert (repo / source).exists(), source
    entrypoint = [json.loads(args) for instruction, args in dockerfile if instruction == "ENTRYPOINT"]
    command = [json.loads(args) for instruction, args in dockerfile if instruction == "CMD"]
    assert len(entrypoint) == 1 and entrypoint[0][0].startswith("/")
    assert command == [["prefect", "flow-run", "execute"]]
    assert dict(dockerfile)["USER"] != "root"


LOAD_AS_THE_WORKER_DOES = """
import json, sys
from prefect.flows import load_flow_from_entrypoint
params = {}
for entrypoint in sys.argv[1:]:
    flow = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)  # puts the script's folder on sys.path
    params[entrypoint] = sorted(flow.parameters.properties)
print(json.dumps(params))
"""


def test_deployments_name_real_flows_with_valid_configs(project: dict, repo: Path):
    """Every entrypoint loads as a worker loads it (by file path, its folder on sys.path, where a flow module named
    like a package would shadow it) and takes the deployment's parameters; every config is valid."""
    names = {d["name"] for d in project["deployments"]}
    assert {"finescope-local", "curate-local", "evaluate-local", "finescope-gpu", "curate-bucket"} <= names
    entrypoints = sorted({d["entrypoint"] for d in project["deployments"]})
    done = subprocess.run([sys.executable, "-c", LOAD_AS_THE_WORKER_DOES, *entrypoints], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    accepted = json.loads(done.stdout.strip().splitlines()[-1])
    for deployment in project["deployments"]:
        assert set(deployment["parameters"]) <= set(accepted[deployment["entrypoint"]]), deployment["name"]
        if "config" in deployment["parameters"]:
            RunConfig.model_validate(deployment["parameters"]["config"])  # raises with the field's name


def test_pools_schedules_and_the_shard_trigger(project: dict, dockerfile):
    by_name = {d["name"]: d for d in project["deployments"]}
    gpu = by_name["finescope-gpu"]["work_pool"]
    assert gpu["job_variables"]["image"] and gpu["job_variables"]["container_create_kwargs"]["device_requests"]
    workdir = dict(dockerfile)["WORKDIR"]
    pull = by_name["finescope-gpu"]["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == workdir
    assert by_name["finescope-local"]["work_pool"]["name"] != gpu["name"]
    curate = by_name["curate-bucket"]
    assert any("cron" in schedule for schedule in curate["schedules"])
    trigger = curate["triggers"][0]
    assert trigger["expect"] == [SHARDS_ARRIVED]
    assert trigger["match"]["prefect.resource.id"].startswith("finescope.pool")
    assert by_name["watch-bucket"]["parameters"]["pool"] == curate["parameters"]["config"]["data"]["pool"]


def test_the_compose_file_runs_the_server_on_postgresql_with_pinned_images(repo: Path):
    compose = yaml.safe_load((repo / "docker" / "compose.yaml").read_text())["services"]
    assert set(compose) == {"postgres", "server", "worker"}
    for name in ("postgres", "server"):
        image = compose[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image
    url = compose["server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url
    assert compose["server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert compose["worker"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert compose["worker"]["environment"]["PREFECT_API_URL"] == "http://server:4200/api"
    assert compose["worker"]["depends_on"]["server"]["condition"] == "service_healthy"  # not before the API answers
    assert "http://localhost:4200/api/health" in " ".join(compose["server"]["healthcheck"]["test"])
