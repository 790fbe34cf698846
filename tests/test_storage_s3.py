"""The storage layer against a real S3-compatible server (moto) on 127.0.0.1, started and stopped here."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from finescope_core import storage


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        storage.configure("s3", key="test", secret="test", client_kwargs={"endpoint_url": endpoint})
        fs, _ = storage.filesystem("s3://bucket")
        fs.mkdir("bucket")
        yield "s3://bucket"
    finally:
        storage.configure("s3")
        server.terminate()
        server.wait(timeout=10)


def test_parquet_json_and_markers_on_s3(s3: str):
    uri = storage.join(s3, "run", "stage")
    storage.write_parquet(pa.table({"doc_id": ["a", "b"]}), storage.join(uri, "docs.parquet"))
    storage.write_json(storage.join(uri, "info.json"), {"n": 2})
    assert storage.listdir(uri, ".parquet") == [storage.join(uri, "docs.parquet")]
    assert not storage.is_complete(uri)
    storage.mark_complete(uri, {"files": storage.file_hashes(uri)})
    assert storage.is_complete(uri)
    assert set(storage.read_marker(uri)["files"]) == {"docs.parquet", "info.json"}
    assert storage.read_parquet_dir(uri)["doc_id"].to_pylist() == ["a", "b"]


def test_staged_directory_uploads_and_fetches_back(s3: str, tmp_path: Path):
    uri = storage.join(s3, "run", "model")
    with storage.staged_directory(uri) as scratch:
        (scratch / "config.json").write_text("{}")
        (scratch / "weights.bin").write_bytes(b"\x00" * 1000)
    storage.mark_complete(uri, {"fingerprint": "abc"})
    local = storage.fetch_directory(uri, tmp_path)
    assert (local / "weights.bin").read_bytes() == b"\x00" * 1000
    assert storage.fetch_directory(uri, tmp_path) == local  # downloaded once


def test_pool_identity_in_s3_comes_from_etags_without_downloads(s3: str, monkeypatch):
    from finescope_core.stage import source_fingerprint

    pool = storage.join(s3, "pool")
    storage.write_parquet(pa.table({"doc_id": ["a"], "text": ["x"]}), storage.join(pool, "shard-0.parquet"))
    first = source_fingerprint(pool), source_fingerprint(storage.join(pool, "shard-0.parquet"))
    monkeypatch.setattr(storage, "sha256_uri", lambda uri: pytest.fail(f"downloaded {uri} to hash it"))
    assert (source_fingerprint(pool), source_fingerprint(storage.join(pool, "shard-0.parquet"))) == first
    storage.write_parquet(pa.table({"doc_id": ["a"], "text": ["y"]}), storage.join(pool, "shard-0.parquet"))
    assert source_fingerprint(storage.join(pool, "shard-0.parquet")) != first[1]
    storage.write_parquet(pa.table({"doc_id": ["b"], "text": ["z"]}), storage.join(pool, "shard-1.parquet"))
    assert source_fingerprint(pool) != first[0]
