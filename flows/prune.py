"""The pruning flow: structured pruning of the base model, calibrated on curated domain text."""

from __future__ import annotations

from finescope.flows.curate import curate
from finescope.tasks.naming import flow_run_name, prune_ratio
from finescope.tasks.stages import calibration_source, prune_base_model, resolve_model
from prefect import flow

from finescope_core.config import RunConfig
from finescope_core.formats import CURATED_FILE, DOCS_FILE


@flow(name="prune", flow_run_name=flow_run_name("prune", prune_ratio), log_prints=True)
def prune(config: RunConfig, calibration: str | None = None) -> dict:
    """Prune ``config.model`` by ``config.prune.ratio`` of its parameters; returns the pruned model's reference.

    ``calibration`` is a Parquet file with a ``text`` column (for example curate's ``curated.parquet``). Without it,
    the curate flow runs first and its curated documents (or, with ``prune.calibration=generic``, the pool) are used.
    """
    if calibration:
        model = resolve_model(config.model)
        source, filename = calibration_source(calibration)
    else:
        refs = curate(config)
        model = refs["model"]
        source, filename = calibration_of(config, refs)
    return prune_base_model(config.output, model, source, filename, config.prune, config.model.device)


def calibration_of(config: RunConfig, curate_refs: dict) -> tuple[dict, str]:
    """The calibration text the config asks for: the curated documents, or the pool for generic calibration."""
    if config.prune.calibration == "curated":
        return curate_refs["curated"], CURATED_FILE
    return curate_refs["pool"], DOCS_FILE
