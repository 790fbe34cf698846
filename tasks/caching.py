"""The task cache key: the same identity the core's content-addressed stages use, plus the task's code
(its compiled code, which Dask workers have even where the source file is not readable).

Stage references are reduced to their fingerprints and configs to their values, so a rerun with the same inputs
hits the cache however the references were obtained, and an edited task recomputes. A cached result counts only
while its artifacts are in storage: a hit whose stage folder lost its completion marker (deleted, or half
removed) runs the task again, which remakes the artifact in the same place. Tasks retry transient storage
errors (``io_task``, and every stage task), never bad input.
"""

from __future__ import annotations

from types import CodeType
from typing import Any

from prefect import task
from prefect.results import get_result_store
from pydantic import BaseModel

from finescope_core import storage


def identity(value: Any) -> Any:
    """What a task parameter contributes to the cache key."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        if "fingerprint" in value:
            return value["fingerprint"]
        return {key: identity(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [identity(item) for item in value]
    return value


def code_identity(code: CodeType) -> str:
    """A stable hash of compiled code: bytecode, names and constants, nested functions included. (``marshal``'s
    bytes are not stable: they change with the reference counts of the objects the code holds.)"""

    def constant(value: Any) -> Any:
        if isinstance(value, CodeType):
            return code_identity(value)
        if isinstance(value, (frozenset, set)):  # their order follows string hashing, which varies by process
            return sorted(repr(constant(item)) for item in value)
        if isinstance(value, tuple):
            return [constant(item) for item in value]
        return repr(value)

    return storage.fingerprint(code.co_code.hex(), code.co_names, code.co_varnames, constant(code.co_consts))


def native_bfloat16(parameters: dict[str, Any]) -> dict[str, bool] | None:
    """Where a config parameter asks for precision "auto": whether this machine's CPU and GPU compute bfloat16
    natively, which is what "auto" resolves by (the core's stage ids hold the resolved precision)."""
    if not any(getattr(value, "precision", None) == "auto" for value in parameters.values()):
        return None
    from finescope_core.precision import bfloat16_is_native  # imports torch: only for the tasks that compute

    return {"cpu": bfloat16_is_native("cpu"), "cuda": bfloat16_is_native("cuda")}


def stage_refs(value: Any) -> list[dict]:
    """The stage references (dicts with ``uri`` and ``fingerprint``) in a task's result."""
    if isinstance(value, dict):
        return [value] if "uri" in value and "fingerprint" in value else []
    if isinstance(value, (list, tuple)):
        return [ref for item in value for ref in stage_refs(item)]
    return []


def artifacts_stored(key: str) -> bool:
    """Whether the result cached under ``key``, if there is one, still has every artifact it names in storage."""
    store = get_result_store()
    if not store.exists(key):
        return True
    return all(storage.is_complete(ref["uri"]) for ref in stage_refs(store.read(key).result))


def stage_cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """Prefect ``cache_key_fn``: task name, task source and parameter identities (and, for precision "auto", the
    machine's bfloat16 support, so a result computed in bfloat16 elsewhere is not served where float32 is due).
    None, so that the task runs uncached, where the result cached under that key lost its artifacts."""
    machine = native_bfloat16(parameters)
    key = storage.fingerprint(context.task.name, code_identity(context.task.fn.__code__), identity(parameters),
                              *([machine] if machine else []))
    return key if artifacts_stored(key) else None


def retry_on_io_errors(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient storage/network failures, never bad input (it would fail the same way again)."""
    try:
        state.result()
    except Exception as exc:
        return storage.transient_error(exc)
    return False


# Waits between tries that outlast a store's restart (about a minute and a half in all).
RETRY_IO = {"retries": 3, "retry_delay_seconds": [5, 20, 60], "retry_condition_fn": retry_on_io_errors}
io_task = task(**RETRY_IO)  # a task retried on transient storage errors and never cached: it reads its inputs each run
