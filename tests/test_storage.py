from pathlib import Path

import pyarrow as pa
import pytest

from finescope_core import storage


def test_write_bytes_is_atomic_and_leaves_no_temp_files(tmp_path: Path):
    target = tmp_path / "a" / "b.json"
    storage.write_json(str(target), {"x": 1})
    assert storage.read_json(str(target)) == {"x": 1}
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_staged_directory_publishes_only_on_success(tmp_path: Path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with storage.staged_directory(str(target)) as scratch:
            (scratch / "weights.bin").write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with storage.staged_directory(str(target)) as scratch:
        (scratch / "weights.bin").write_bytes(b"whole")
    assert (target / "weights.bin").read_bytes() == b"whole"


def test_marker_and_hashes(tmp_path: Path):
    uri = str(tmp_path / "stage")
    storage.write_parquet(pa.table({"a": [1, 2]}), storage.join(uri, "x.parquet"))
    assert not storage.is_complete(uri)
    hashes = storage.file_hashes(uri)
    storage.mark_complete(uri, {"files": hashes})
    assert storage.is_complete(uri)
    assert hashes["x.parquet"] == storage.sha256_uri(storage.join(uri, "x.parquet"))
    assert storage.read_parquet_dir(uri)["a"].to_pylist() == [1, 2]


def test_fingerprint_is_stable_and_sensitive():
    assert storage.fingerprint({"a": 1, "b": 2}) == storage.fingerprint({"b": 2, "a": 1})
    assert storage.fingerprint({"a": 1}) != storage.fingerprint({"a": 2})


def test_check_writable_names_the_location(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write"):
        storage.check_writable(str(blocker / "run"))
    storage.check_writable(str(tmp_path / "ok"))
    assert list((tmp_path / "ok").iterdir()) == []
