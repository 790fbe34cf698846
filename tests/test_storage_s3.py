"""The storage layer against a real S3-compatible server (moto) on 127.0.0.1, started and stopped here."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from finescope_core import storage


@pytest.fixture(scope="module")
def s3(tmp_path_factory, free_port):
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
    from finescope_core.addressing import source_fingerprint

    pool = storage.join(s3, "pool")
    storage.write_parquet(pa.table({"doc_id": ["a"], "text": ["x"]}), storage.join(pool, "shard-0.parquet"))
    first = source_fingerprint(pool), source_fingerprint(storage.join(pool, "shard-0.parquet"))
    monkeypatch.setattr(storage, "sha256_uri", lambda uri: pytest.fail(f"downloaded {uri} to hash it"))
    assert (source_fingerprint(pool), source_fingerprint(storage.join(pool, "shard-0.parquet"))) == first
    storage.write_parquet(pa.table({"doc_id": ["a"], "text": ["y"]}), storage.join(pool, "shard-0.parquet"))
    assert source_fingerprint(storage.join(pool, "shard-0.parquet")) != first[1]
    storage.write_parquet(pa.table({"doc_id": ["b"], "text": ["z"]}), storage.join(pool, "shard-1.parquet"))
    assert source_fingerprint(pool) != first[0]


def test_a_recovery_killed_on_one_worker_resumes_on_another_from_its_checkpoint_in_s3(s3, tiny_model, monkeypatch):
    import finescope_core.recover as recover_module
    from finescope_core import stages
    from finescope_core.config import RecoverConfig

    root = storage.join(s3, "recovery-run")
    texts = [f"Note {i}: the patient's temperature fell after {i} hours of treatment with fluids." for i in range(30)]
    storage.write_parquet(pa.table({"text": texts}), storage.join(root, "texts", "curated.parquet"))
    model = {"uri": str(tiny_model), "model_uri": str(tiny_model), "fingerprint": "tiny"}
    text_ref = {"uri": storage.join(root, "texts"), "fingerprint": "texts"}
    cfg = RecoverConfig(tokens=32 * 4 * 6, sequence_tokens=32, batch_sequences=4, checkpoints=2)
    step, calls = recover_module.Distiller.step, {"n": 0}

    def killed_at_step_six(self, windows):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("worker lost")
        return step(self, windows)

    monkeypatch.setattr(recover_module.Distiller, "step", killed_at_step_six)
    with pytest.raises(KeyboardInterrupt):
        stages.recovered(root, model, model, text_ref, "curated.parquet", cfg, "cpu")
    fs, path = storage.filesystem(root)
    assert len(fs.glob(f"{path}/recovered/*/checkpoint/state.pt")) == 1  # after step 4 of 6, beside the artifact
    monkeypatch.setattr(recover_module.Distiller, "step", step)
    ref = stages.recovered(root, model, model, text_ref, "curated.parquet", cfg, "cpu")  # the retry, anywhere
    assert ref["info"]["resumed_at"] == 4 and storage.is_complete(ref["uri"])
    assert storage.exists(storage.join(ref["model_uri"], "config.json"))
    assert not fs.glob(f"{path}/recovered/*/checkpoint/*")
