"""The evaluation flow: one model on the config's domain eval sets, with a published report."""

from __future__ import annotations

from finescope.tasks.naming import flow_run_name
from finescope.tasks.stages import build_corpus, publish_report, resolve_model, score_model, time_models
from prefect import flow

from finescope_core.config import RunConfig


@flow(name="evaluate", flow_run_name=flow_run_name("evaluate"), log_prints=True)
def evaluate(config: RunConfig, model: str | None = None) -> dict:
    """Bits per byte, perplexity and cloze accuracy (with CIs), size and speed of ``model`` (a registry name, local
    folder or hub id; default: ``config.model.name``) on ``config.eval_domains``; returns the report's files."""
    model_cfg = config.model.model_copy(update={"name": model}) if model else config.model
    corpus = build_corpus(config.output, config.data)
    model_ref = resolve_model(model_cfg)
    result = score_model(config.output, model_ref, corpus["eval_sets"], config.eval_domains, config.eval, model_cfg)
    speed = time_models(config.output, {model_cfg.name: model_ref}, model_cfg)
    report = publish_report(config.output, {model_cfg.name: result}, f"FineScope evaluation: {model_cfg.name}", speed,
                            domains=config.eval_domains, models={model_cfg.name: model_ref})
    return report["info"]
