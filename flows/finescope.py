"""The whole FineScope pipeline: curate -> prune -> distill -> fine-tune -> evaluate, as in the paper's figure."""

from __future__ import annotations

from prefect import flow

from finescope_core.config import RunConfig
from flows.curate import curate
from flows.prune import calibration_of
from tasks.stages import distill_targets, evaluate_model, prune_model, publish_report, recover_model, write_manifest


@flow(name="finescope", log_prints=True)
def finescope(config: RunConfig) -> dict:
    """Build a compact model for ``config.domain``; returns the report's files and the run manifest."""
    root, device = config.output, config.model.device
    refs = curate(config)
    calibration, filename = calibration_of(config, refs)
    pruned = prune_model(root, refs["model"], calibration, filename, config.prune, device)
    distilled = distill_targets(root, refs["model"], refs["curated"], config.distill, device)
    recovered = recover_model(root, pruned, distilled, config.distill, device)
    models = {"base": refs["model"], "pruned": pruned, "recovered": recovered}
    results = {label: evaluate_model(root, ref, refs["corpus"]["eval"], config.eval_domains, config.eval, config.model)
               for label, ref in models.items()}
    report = publish_report(root, results, f"FineScope: {config.model.name} for {config.domain}")
    artifacts = {key: refs[key] for key in ("corpus", "pool", "seeds", "acts", "sae", "embeddings", "curated")}
    artifacts |= {"pruned": pruned, "distilled": distilled, "recovered": recovered, "report": report}
    artifacts |= {f"eval_{label}": ref for label, ref in results.items()}
    manifest = write_manifest(root, artifacts)
    return {"report": report["info"], "manifest": manifest}
