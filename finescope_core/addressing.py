"""Content-addressed stages: equal work lands in the same place and is done once.

A stage's output URI is ``<root>/<name>/<fingerprint>``, where the fingerprint hashes the stage name, its code
version, its config and the fingerprints of its inputs. Its completion marker is written last, so an interrupted
stage is redone (or resumed, if the stage itself resumes) and a complete one is returned at once. Orchestrators use
the same fingerprint as their cache key, so their cache and the storage always agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from finescope_core import storage

# Bump a stage's version when its output for the same inputs changes (a default setting that changes counts too:
# fingerprints hold only the settings that differ from their defaults, so that a new setting does not invalidate
# every finished stage).
STAGE_VERSIONS = {
    "corpus": 1, "pool": 1, "seeds": 1, "acts": 3, "sae": 4, "embeddings": 2, "sentences": 1, "curated": 9,
    "pruned": 19, "distilled": 2, "recovered": 3, "eval": 2, "speed": 1, "report": 2, "merged": 2, "imported": 1,
    "imported_eval": 1, "sweep": 1,
}


def stage_fingerprint(name: str, inputs: dict[str, Any], config: BaseModel | dict | None,
                      ignore: frozenset[str] = frozenset()) -> str:
    """The identity of a piece of work: stage, version, config (less the fields in ``ignore``: settings that do not
    change the output) and input fingerprints."""
    settings = (config.model_dump(mode="json", exclude_defaults=True, exclude=set(ignore))
                if isinstance(config, BaseModel) else config)
    refs = {key: ref["fingerprint"] if isinstance(ref, dict) else ref for key, ref in sorted(inputs.items())}
    return storage.fingerprint(name, STAGE_VERSIONS[name], settings, refs)


def numerics(device: str, dtype: str = "float32") -> dict[str, str]:
    """What a stage's numbers depend on besides its inputs and config: the kind of device and the dtype it computes
    in, each where it is not the default (cpu, float32), so that finished work on the defaults keeps its id."""
    kind = device.split(":")[0]  # cuda:0 and cuda:1 compute alike
    return {**({"device": kind} if kind != "cpu" else {}), **({"dtype": dtype} if dtype != "float32" else {})}


def run_stage(root: str, name: str, inputs: dict[str, Any], config: BaseModel | dict | None,
              work: Callable[[str], dict], ignore: frozenset[str] = frozenset()) -> dict:
    """Run ``work(out_uri)`` unless its output is already complete; returns a reference to the output.

    The reference (``uri``, ``fingerprint``, ``info``) is what flows pass between tasks.
    """
    fingerprint = stage_fingerprint(name, inputs, config, ignore)
    uri = storage.join(root, name, fingerprint)
    if storage.is_complete(uri):
        return _finished(uri, fingerprint)
    with storage.exclusive(uri):  # a run doing the same stage at the same time waits, then finds it done
        if storage.is_complete(uri):
            return _finished(uri, fingerprint)
        storage.remove_abandoned_scratch(uri)
        info = work(uri)
        storage.mark_complete(uri, {"fingerprint": fingerprint, "stage": name, "info": info,
                                    "files": storage.file_hashes(uri)})
    return {"uri": uri, "fingerprint": fingerprint, "info": info, "reused": False}


def _finished(uri: str, fingerprint: str) -> dict:
    """The reference to a stage output that is already complete."""
    return {"uri": uri, "fingerprint": fingerprint, "info": storage.read_marker(uri).get("info", {}), "reused": True}


def source_fingerprint(uri: str) -> str:
    """Fingerprint of an input that no stage produced (a user's pool, a seeds file, a model folder); in object
    storage from the store's ETags, so that a re-curation does not download a whole pool to recognise it."""
    if storage.is_complete(uri):
        return storage.read_marker(uri).get("fingerprint") or storage.fingerprint(storage.read_marker(uri))
    fs, path = storage.filesystem(uri)
    if not fs.isdir(path):
        return storage.content_id(uri)
    return storage.fingerprint(storage.file_hashes(uri, None if storage.is_local(uri) else storage.content_id))

