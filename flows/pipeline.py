"""The whole FineScope pipeline: curate -> prune -> (self-distil) -> recover -> evaluate, as in the paper's figure."""

from __future__ import annotations

from finescope.flows.curate import curate
from finescope.flows.prune import calibration_of
from finescope.tasks.naming import domain, flow_run_name
from finescope.tasks.stages import (
    build_corpus,
    distill_targets,
    prune_base_model,
    publish_report,
    record_manifest,
    recover_model,
    resolve_model,
    score_model,
    time_models,
)
from prefect import flow

from finescope_core.config import RunConfig
from finescope_core.formats import CURATED_FILE, DISTILLED_FILE


def recovery_text(config: RunConfig, refs: dict) -> tuple[dict, str, dict | None]:
    """What recovery trains on: the curated documents, or their self-distilled rewrites (and that stage's ref)."""
    if config.recover.targets == "curated":
        return refs["curated"], CURATED_FILE, None
    distilled = distill_targets(config.output, refs["model"], refs["curated"], config.distill, config.model.device)
    return distilled, DISTILLED_FILE, distilled


def stage_details(recovered: dict, distilled: dict | None) -> dict[str, dict]:
    """The figures of recovery (and self-distillation) that the report shows beside the metrics."""
    details = {"recovery": {k: recovered["info"][k] for k in ("loss", "steps", "supervised_tokens", "epochs",
                                                                "first_loss", "last_loss")}}
    if distilled is not None:
        details["self-distillation"] = {k: distilled["info"][k] for k in ("rewritten", "accepted",
                                                                            "acceptance_rate", "rejected")}
    return details


@flow(name="finescope", flow_run_name=flow_run_name("finescope", domain), log_prints=True)
def finescope(config: RunConfig) -> dict:
    """Build a compact model for ``config.domain``; returns the report's files and the run manifest.

    Each model's evaluation is submitted as soon as the model exists, so it runs (in a thread of the flow's
    process) while the next model is made: the base model is scored during curation, the pruned one during
    recovery.
    """
    root, device = config.output, config.model.device
    corpus, base = build_corpus(root, config.data), resolve_model(config.model)

    def evaluation(model: dict):
        return score_model.submit(root, model, corpus["eval_sets"], config.eval_domains, config.eval, config.model)

    scored = {"base": evaluation(base)}
    refs = curate(config, base, corpus)
    calibration, filename = calibration_of(config, refs)
    pruned = prune_base_model(root, refs["model"], calibration, filename, config.prune, device)
    scored["pruned"] = evaluation(pruned)
    texts, text_file, distilled = recovery_text(config, refs)
    recovered = recover_model(root, pruned, refs["model"], texts, text_file, config.recover, device)
    scored["recovered"] = evaluation(recovered)
    results = {label: future.result() for label, future in scored.items()}
    models = {"base": refs["model"], "pruned": pruned, "recovered": recovered}
    speed = time_models(root, models, config.model)
    report = publish_report(root, results, f"FineScope: {config.model.name} for {config.domain}", speed,
                            stage_details(recovered, distilled), config.eval_domains, models)
    artifacts = {key: refs[key] for key in ("corpus", "pool", "seeds", "acts", "sae", "embeddings", "curated")}
    artifacts |= {"calibration": calibration, "pruned": pruned, "recovered": recovered, "speed": speed,
                  "report": report}
    artifacts |= {"distilled": distilled} if distilled is not None else {}
    artifacts |= {f"eval_{label}": ref for label, ref in results.items()}
    manifest = record_manifest(root, artifacts)
    return {"report": report["info"], "manifest": manifest}
