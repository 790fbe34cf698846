"""The task cache key: the same identity the core's content-addressed stages use, plus the task's code
(its compiled code object, which Dask workers have even where the source file is not readable).

Stage references are reduced to their fingerprints and configs to their values, so a rerun with the same inputs
hits the cache however the references were obtained, and an edited task recomputes.
"""

from __future__ import annotations

import hashlib
import marshal
from typing import Any

from pydantic import BaseModel

from finescope_core import storage
from finescope_core.precision import bfloat16_is_native


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


def native_bfloat16(parameters: dict[str, Any]) -> dict[str, bool] | None:
    """Where a config parameter asks for precision "auto": whether this machine's CPU and GPU compute bfloat16
    natively, which is what "auto" resolves by (the core's stage ids hold the resolved precision)."""
    if not any(getattr(value, "precision", None) == "auto" for value in parameters.values()):
        return None
    return {"cpu": bfloat16_is_native("cpu"), "cuda": bfloat16_is_native("cuda")}


def stage_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect ``cache_key_fn``: task name, task source and parameter identities (and, for precision "auto", the
    machine's bfloat16 support, so a result computed in bfloat16 elsewhere is not served where float32 is due)."""
    source = hashlib.sha256(marshal.dumps(context.task.fn.__code__)).hexdigest()[:16]  # works where no source is
    machine = native_bfloat16(parameters)
    return storage.fingerprint(context.task.name, source, identity(parameters), *([machine] if machine else []))


def retry_on_io_errors(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient storage/network failures, never bad input (it would fail the same way again)."""
    try:
        state.result()
    except (OSError, ConnectionError, TimeoutError) as exc:
        return not isinstance(exc, (FileNotFoundError, PermissionError))
    except Exception:
        return False
    return False
