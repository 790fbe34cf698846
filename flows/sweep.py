"""The size/quality sweep: prune at several ratios, recover each model, and pick the smallest that keeps enough."""

from __future__ import annotations

from finescope.flows.curate import curate
from finescope.flows.pipeline import recovery_text
from finescope.flows.prune import calibration_of
from finescope.tasks.naming import domain, flow_run_name
from finescope.tasks.stages import prune_base_model, publish_sweep, recover_model, score_model
from prefect import flow

from finescope_core.config import RunConfig


@flow(name="sweep", flow_run_name=flow_run_name("sweep", domain), log_prints=True)
def sweep(config: RunConfig) -> dict:
    """Curate once; for each of ``config.sweep.ratios`` prune the base model and recover it with ``config.recover``;
    evaluate every model; report parameters against domain bits per byte and accuracy (table and Pareto plot) and
    the smallest model that keeps ``config.sweep.keep`` of the base's ``config.sweep.metric``. Each model's
    evaluation runs while the next one is pruned and recovered."""
    root, device = config.output, config.model.device
    refs = curate(config)
    calibration, filename = calibration_of(config, refs)
    texts, text_file, _ = recovery_text(config, refs)

    def evaluation(model: dict):
        return score_model.submit(root, model, refs["corpus"]["eval_sets"], config.eval_domains, config.eval,
                                     config.model)

    scored, ratios = {"base": evaluation(refs["model"])}, {}
    for ratio in config.sweep.ratios:
        pruned = prune_base_model(root, refs["model"], calibration, filename,
                             config.prune.model_copy(update={"ratio": ratio}), device)
        recovered = recover_model(root, pruned, refs["model"], texts, text_file, config.recover, device)
        label = f"pruned {100 * ratio:g}%, recovered"
        scored[label], ratios[label] = evaluation(recovered), ratio
    results = {label: future.result() for label, future in scored.items()}
    report = publish_sweep(root, results, ratios, config.domain, config.sweep.metric, config.sweep.keep)
    return report["info"]
