"""Run names that say what runs, for the Prefect UI: a flow run by what it makes and for which domain and model
(``finescope-medicine-smollm2-135m-instruct``, ``prune-0.25-smollm2-135m-instruct``), a task run by its subject
(``eval-pruned``, ``dump-seeds``, ``prune-0.25``) instead of Prefect's random words and hashes.

Parameters reach the namers as the objects a flow was called with, or as JSON when a deployment started the run, so
every field is read from either.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from prefect import Task
from prefect.runtime import flow_run


def field(value: Any, *path: str) -> Any:
    """``value.a.b`` of a config object, or ``value["a"]["b"]`` of its JSON form."""
    for key in path:
        value = value.get(key) if isinstance(value, dict) else getattr(value, key)
    return value


def model_label(name: str) -> str:
    """A model name as a run-name part: a registry name as is, a folder or hub id by its last part."""
    return PurePosixPath(name.rstrip("/")).name.lower()


def stage_label(ref: dict) -> str:
    """What a stage reference holds, by the stage folder its output lies in (``pruned``, ``seeds``); a model that
    no stage made (the base model) by its name."""
    if "name" in ref:
        return model_label(ref["name"])
    return PurePosixPath(ref["uri"].rstrip("/")).parent.name


def flow_run_name(kind: str, *parts: Callable[[dict], str]) -> Callable[[], str]:
    """A flow run namer: ``kind``, the parts taken from the run's parameters, and the model's name."""

    def name() -> str:
        parameters = flow_run.parameters
        config = parameters["config"]
        model = parameters.get("model")  # evaluate's model name; curate's is a stage reference
        model = model if isinstance(model, str) else field(config, "model", "name")
        return "-".join([kind, *(part(parameters) for part in parts), model_label(model)])

    return name


def domain(parameters: dict) -> str:
    return field(parameters["config"], "domain")


def prune_ratio(parameters: dict) -> str:
    return f"{field(parameters['config'], 'prune', 'ratio'):g}"


def named(namer: Callable[[dict[str, Any]], str]) -> Callable[[Task], Task]:
    """A task decorator (outermost) that names each run by ``namer(parameters)``, the task's own parameters."""
    return lambda stage_task: stage_task.with_options(task_run_name=namer)
