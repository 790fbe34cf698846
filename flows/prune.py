"""The pruning flow: structured pruning of the base model, calibrated on curated domain text."""

from __future__ import annotations

from finescope.flows.curate import curate
from finescope.tasks.naming import flow_run_name, prune_ratio
from finescope.tasks.stages import calibration_source, curate_documents, prune_base_model, resolve_model
from prefect import flow

from finescope_core import curation
from finescope_core.config import RunConfig


@flow(name="prune", flow_run_name=flow_run_name("prune", prune_ratio), log_prints=True)
def prune(config: RunConfig, calibration: str | None = None) -> dict:
    """Prune ``config.model`` by ``config.prune.ratio`` of its parameters; returns the pruned model's reference.

    ``calibration`` is a Parquet file with a ``text`` column (for example curate's ``curated.parquet``). Without it,
    the curate flow runs first and gives the text ``prune.calibration`` names.
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
    """The calibration text the config asks for (``curation.calibration_text``), a first-pass selection made by the
    curate flow's own task where it needs one."""
    return curation.calibration_text(config, curate_refs, curate_documents)
