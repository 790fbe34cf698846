"""Artifact storage over fsspec URIs: atomic writes, completion markers, content hashes.

Every stage reads and writes through these helpers so that a local folder and an ``s3://`` prefix behave the same.
A local write goes to a temporary name and is renamed into place; on object storage a single PUT is already atomic,
and a multi-file artifact counts as done only once its completion marker (written last) exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

COMPLETE_MARKER = "_COMPLETE.json"
# This machine's cache: model conversions, and local copies of folder artifacts kept in object storage.
LOCAL_CACHE = Path(os.environ.get("FINESCOPE_CACHE", Path(__file__).resolve().parent.parent / ".cache"))
ARTIFACT_CACHE = LOCAL_CACHE / "artifacts"

_storage_options: dict[str, dict[str, Any]] = {}


def configure(protocol: str, **options: Any) -> None:
    """Set fsspec options (endpoint, credentials source...) for every URI of one protocol, e.g. ``s3``."""
    _storage_options[protocol] = options


def configured(protocol: str) -> dict[str, Any]:
    """The fsspec options ``configure`` set for ``protocol`` (empty: none)."""
    return dict(_storage_options.get(protocol, {}))


def s3_options_from_env() -> dict[str, Any]:
    """S3 options read from the environment; credentials stay in the environment and are never copied to artifacts."""
    endpoint = os.environ.get("FINESCOPE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem that serves ``uri`` and the path inside it."""
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    options = configured(protocol)
    if protocol == "s3" and not options:
        options = s3_options_from_env()
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with ``/`` whatever the protocol."""
    base = uri.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts if p)])


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def listdir(uri: str, suffix: str = "") -> list[str]:
    """Sorted URIs of the files directly under ``uri`` whose names end with ``suffix``."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    names = sorted(p for p in fs.ls(path, detail=False) if p.rstrip("/").endswith(suffix))
    return [join(uri, n.rstrip("/").rsplit("/", 1)[-1]) for n in names]


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _host() -> str:
    return socket.gethostname().replace(".", "_")


def scratch_prefix(name: str) -> str:
    """The name prefix of this process's scratch files and folders for ``name``: hidden, and owned (host and pid),
    so that a later run can tell an abandoned one (its process is gone) from one still being written."""
    return f".{name}.{_host()}-{os.getpid()}."


def _abandoned(name: str) -> bool:
    """Whether ``name`` is scratch of a process of this host that no longer runs (killed before it cleaned up)."""
    if not name.startswith("."):
        return False
    owner = re.compile(rf"{re.escape(_host())}-(\d+)")
    pids = [int(match[1]) for part in name.split(".") if (match := owner.fullmatch(part))]
    if not pids or pids[0] == os.getpid():
        return False
    try:
        os.kill(pids[0], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_abandoned_scratch(uri: str) -> None:
    """Delete the scratch files and folders that killed processes left under a local ``uri`` (object storage gets
    none: there, scratch is a local temporary folder)."""
    if not is_local(uri) or not local_path(uri).is_dir():
        return
    for path in sorted(local_path(uri).rglob(".*"), key=lambda p: len(p.parts)):
        if not path.exists() or not _abandoned(path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def exclusive(uri: str) -> Iterator[None]:
    """Hold a lock on ``uri`` for the block: processes (and threads) on this machine that share a local output take
    turns. The lock file is hidden beside ``uri``; the system releases the lock when its holder dies. Object
    stores have no lock: runs sharing an ``s3://`` output may both do a piece of work, each writing the same bytes."""
    if not is_local(uri):
        yield
        return
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` so that a reader sees either the old file, the whole new one, or none."""
    if is_local(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{scratch_prefix(target.name)}{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, path = filesystem(uri)
    with fs.open(path, "wb") as f:
        f.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def write_parquet(table: pa.Table, uri: str) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    write_bytes(uri, buffer.getvalue())


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def read_parquet_dir(uri: str, columns: list[str] | None = None) -> pa.Table:
    """All ``*.parquet`` shards directly under ``uri``, concatenated in name order."""
    shards = listdir(uri, ".parquet")
    if not shards:
        raise FileNotFoundError(f"no Parquet shards under {uri}")
    return pa.concat_tables([read_parquet(s, columns) for s in shards])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_uri(uri: str) -> str:
    """Content hash of one file, streamed."""
    fs, path = filesystem(uri)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_id(uri: str) -> str:
    """Identity of one file's content, cheap where possible: an object store's ETag and size (reading the object
    would cost a download), otherwise its sha256."""
    if not is_local(uri):
        fs, path = filesystem(uri)
        info = fs.info(path)
        etag = info.get("ETag") or info.get("etag")
        if etag:
            return fingerprint(str(etag).strip('"'), info.get("size"))
    return sha256_uri(uri)[:16]


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts: the identity of a piece of work."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_complete(uri: str) -> bool:
    return exists(join(uri, COMPLETE_MARKER))


def read_marker(uri: str) -> dict[str, Any]:
    return read_json(join(uri, COMPLETE_MARKER))


def mark_complete(uri: str, info: dict[str, Any]) -> None:
    """Write the completion marker last: only then is the artifact under ``uri`` taken for done."""
    write_json(join(uri, COMPLETE_MARKER), info)


def file_hashes(uri: str, digest: Callable[[str], str] | None = None) -> dict[str, str]:
    """Content hash (``digest``, sha256 by default) of every file under ``uri`` (recursively) but its own marker and
    hidden entries (scratch of a write in progress, or of one killed), keyed by relative path."""
    fs, path = filesystem(uri)
    root = path.rstrip("/")
    out = {}
    for file in sorted(fs.find(root)):
        rel = file[len(root) + 1 :]
        if rel == COMPLETE_MARKER or any(part.startswith(".") for part in rel.split("/")):
            continue
        out[rel] = (digest or sha256_uri)(join(uri, rel))
    return out


@contextlib.contextmanager
def staged_directory(uri: str) -> Iterator[Path]:
    """A local scratch folder whose whole content replaces ``uri`` only if the block succeeds.

    Tools such as ``save_pretrained`` need a local folder; this gives them one and then publishes it atomically: a
    rename for a local target, an upload followed by the completion marker for object storage.
    """
    if is_local(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix(target.name), dir=target.parent))
        scratch.chmod(0o755)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="finescope-stage-"))
    try:
        yield scratch
        if is_local(uri):
            if target.exists():
                shutil.rmtree(target)
            os.replace(scratch, target)
        else:
            remove(uri)
            fs, path = filesystem(uri)
            fs.put(str(scratch) + "/", path.rstrip("/") + "/", recursive=True)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def fetch_directory(uri: str, cache_root: Path = ARTIFACT_CACHE) -> Path:
    """A local copy of a folder artifact (a model, an SAE), downloaded once per content fingerprint."""
    if is_local(uri):
        return local_path(uri)
    marker = read_marker(uri) if is_complete(uri) else {}
    key = fingerprint(uri, marker.get("fingerprint", ""))
    target = cache_root / key
    with exclusive(str(target)):  # processes fetching at once download once, and none reads a half copy
        if not target.exists():
            with staged_directory(str(target)) as scratch:
                fs, path = filesystem(uri)
                fs.get(path.rstrip("/") + "/", str(scratch) + "/", recursive=True)
    return target


def transient_error(exc: BaseException) -> bool:
    """Whether a storage failure may pass on its own (the network or the store's server dropped out), so that the
    work is worth retrying; a missing file or a refused permission is bad input and fails the same way again.
    Object-store clients raise their connection failures as botocore errors, which are not ``OSError``s."""
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return False
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    try:
        from botocore.exceptions import ConnectionError as StoreConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # no object-store client installed
        return False
    return isinstance(exc, (StoreConnectionError, HTTPClientError))


def check_writable(uri: str) -> None:
    """Fail early, before any work, if ``uri`` cannot be written."""
    probe = join(uri, f".write-probe-{uuid.uuid4().hex}")
    try:
        write_bytes(probe, b"")
        remove(probe)
    except Exception as exc:
        raise PermissionError(f"cannot write to {uri}: {exc}") from exc
