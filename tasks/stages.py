"""One Prefect task per FineScope stage. No ML logic here: each calls ``finescope_core.stages``.

Every task caches on its stage identity (see ``tasks.caching``) with results persisted, retries transient I/O
errors, logs where its artifact is and whether it was reused, and shows its long loops as progress artifacts
(``tasks.progress``); the long ones are named by what they run (``tasks.naming``).
"""

from __future__ import annotations

import base64

from finescope.tasks.caching import RETRY_IO, io_task, stage_cache_key
from finescope.tasks.links import markdown_link
from finescope.tasks.naming import field, named, stage_label
from finescope.tasks.progress import show_progress_in_the_ui
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from finescope_core import config, pool_shards, sae_reuse, stages, storage
from finescope_core.formats import Ref

stage_task = task(cache_key_fn=stage_cache_key, persist_result=True, **RETRY_IO)
show_progress_in_the_ui()  # every task run of a process that runs these tasks shows its loops' progress


def _logged(name: str, ref: Ref) -> Ref:
    get_run_logger().info("%s: %s (%s)", name, ref["uri"], "reused" if ref.get("reused") else "computed")
    return ref


@io_task
def resolve_model(model: config.ModelConfig) -> Ref:
    """The base model's local folder and content fingerprint (converted once into the cache)."""
    return _logged("model", stages.model_ref(model))


@io_task
def build_corpus(root: str, data: config.DataConfig) -> Ref:
    """Not cached by Prefect: the pool and eval sets are identified by their content, which the core reads each run
    (a shard added to the pool, or an eval set edited in place, is new input)."""
    return _logged("corpus", stages.corpus(root, data))


@stage_task
def sample_pool(root: str, corpus: Ref, data: config.DataConfig) -> Ref:
    return _logged("pool", stages.pool(root, corpus, data))


@io_task
def load_seeds(root: str, path: str) -> Ref:
    """Not cached by Prefect: the seeds file's content is part of the stage identity, read each run."""
    return _logged("seeds", stages.seeds(root, path))


@named(lambda parameters: f"dump-{stage_label(parameters['docs'])}")
@stage_task
def dump_acts(root: str, model: Ref, docs: Ref, dump: config.DumpConfig, model_cfg: config.ModelConfig) -> Ref:
    return _logged("acts", stages.acts(root, model, docs, dump, model_cfg))


@io_task
def list_shards(pool: str) -> list[str]:
    """The pool's shards as they are now (never cached: new shards are the point)."""
    return pool_shards.shard_uris(pool)


@io_task
def read_shard(root: str, shard_uri: str) -> Ref:
    """Not cached by Prefect: a shard is identified by its content, which the core stage hashes each run."""
    return _logged("shard", stages.shard(root, shard_uri))


@task
def choose_sae(root: str, model: Ref, acts: list[Ref], dump: config.DumpConfig, sae: config.SAEConfig, pool: str,
               device: str) -> Ref:
    """Fit, reuse or refit the SAE of an incrementally curated pool (reads and records its decision state)."""
    choice = stages.incremental_sae(root, sae_reuse.state_uri(root, pool, model, dump, sae), acts, sae, device)
    get_run_logger().info("SAE %s (new shards: %d, drift: %s)", choice.action, choice.new_shards, choice.drift)
    return {**choice.sae, "action": choice.action, "drift": choice.drift, "new_shards": choice.new_shards}


@stage_task
def merge_shards(root: str, shards: list[Ref], embeddings: list[Ref], sentences: list[Ref] | None = None) -> Ref:
    return _logged("merged", stages.merged(root, shards, embeddings, sentences))


@named(lambda parameters: "sae-layers-" + "-".join(map(str, field(parameters["acts"], "info", "layers"))))
@stage_task
def train_sae(root: str, acts: Ref, sae: config.SAEConfig, device: str) -> Ref:
    ref = stages.sae(root, acts, sae, device)
    get_run_logger().info("SAE quality: %s", ref["info"])
    return _logged("sae", ref)


@stage_task
def embed_documents(root: str, acts: Ref, sae: Ref, pooling: str, device: str) -> Ref:
    return _logged("embeddings", stages.embeddings(root, acts, sae, pooling, device))


@named(lambda parameters: f"sentences-{stage_label(parameters['docs'])}")
@io_task
def embed_sentences(root: str, docs: Ref, device: str) -> Ref:
    """Not cached by Prefect: the sentence embedder's version is part of the stage identity, which the core reads
    each run (and a finished embedding is returned at once)."""
    return _logged("sentences", stages.sentences(root, docs, device))


@named(lambda parameters: f"select-{field(parameters['select'], 'method')}-{field(parameters['select'], 'budget')}")
@stage_task
def curate_documents(root: str, pool: Ref, seeds: Ref, vectors: dict[str, Ref], eval_sets: Ref | None,
                     select: config.SelectConfig) -> Ref:
    ref = stages.curated(root, pool, seeds, vectors, eval_sets, select)
    get_run_logger().info("curated %d documents; by domain: %s", ref["info"]["n_docs"], ref["info"]["domains"])
    return _logged("curated", ref)


@io_task
def calibration_source(uri: str) -> tuple[Ref, str]:
    """A user's calibration Parquet file; fingerprinted by content each run, so not cached by Prefect."""
    return stages.calibration_file(uri)


@named(lambda parameters: f"prune-{field(parameters['prune'], 'ratio'):g}")
@stage_task
def prune_base_model(root: str, model: Ref, calibration: Ref, filename: str, prune: config.PruneConfig,
                     device: str) -> Ref:
    ref = stages.pruned(root, model, calibration, filename, prune, device)
    info = ref["info"]
    get_run_logger().info("parameters %d -> %d", info["params_before"], info["params_after"])
    return _logged("pruned", ref)


@stage_task
def distill_targets(root: str, teacher: Ref, curated: Ref, distill: config.DistillConfig, device: str) -> Ref:
    ref = stages.distilled(root, teacher, curated, distill, device)
    info = ref["info"]
    get_run_logger().info("self-distillation: %s of %s rewrites accepted; rejected: %s", info["accepted"],
                          info["rewritten"], info["rejected"])
    return _logged("distilled", ref)


@named(lambda parameters: f"recover-{field(parameters['recover'], 'tokens')}-tokens")
@stage_task
def recover_model(root: str, pruned: Ref, teacher: Ref, texts: Ref, filename: str, recover: config.RecoverConfig,
                  device: str) -> Ref:
    ref = stages.recovered(root, pruned, teacher, texts, filename, recover, device)
    info = ref["info"]
    get_run_logger().info("recovery: %s steps, %s supervised tokens (%s passes), loss %.4f -> %.4f",
                          info["steps"], info["supervised_tokens"], info["epochs"], info["first_loss"],
                          info["last_loss"])
    return _logged("recovered", ref)


@named(lambda parameters: f"eval-{stage_label(parameters['model'])}")
@stage_task
def score_model(root: str, model: Ref, eval_sets: Ref, domains: list[str], evaluation: config.EvalConfig,
                   model_cfg: config.ModelConfig) -> Ref:
    return _logged("eval", stages.evaluation(root, model, eval_sets, domains, evaluation, model_cfg))


@stage_task
def time_models(root: str, models: dict[str, Ref], model_cfg: config.ModelConfig) -> Ref:
    """Every model's forward throughput, timed alternately in one process."""
    return _logged("speed", stages.speed(root, models, model_cfg))


def with_plot(ref: Ref, caption: str) -> str:
    """A report's Markdown for the Prefect UI: its plot embedded as a data URI (the UI renders those; it cannot
    reach a file in the run's storage) and where the report's files lie."""
    image = base64.b64encode(storage.read_bytes(ref["info"]["png"])).decode()
    return (f"{storage.read_bytes(ref['info']['markdown']).decode()}\n\n![{caption}](data:image/png;base64,{image})"
            f"\n\nFiles (JSON, Markdown, PNG): {markdown_link(ref['uri'])}\n")


@task
def publish_report(root: str, results: dict[str, Ref], title: str, speed: Ref | None = None,
                   details: dict[str, dict] | None = None, domains: list[str] | None = None,
                   models: dict[str, Ref] | None = None) -> Ref:
    """Write the report and publish it as Prefect artifacts (markdown and a summary table) of the flow run; both
    say where each model (``models``, by the results' labels) and its evaluation lie in storage."""
    ref = stages.report(root, results, title, speed, details, domains)
    stored = {label: {"model_uri": (models or {}).get(label, {}).get("uri"), "eval_uri": result["uri"]}
              for label, result in results.items()}
    where = "\n".join(f"| {label} | {markdown_link(uris['model_uri'])} | {markdown_link(uris['eval_uri'])} |"
                      for label, uris in stored.items())
    create_markdown_artifact(f"{with_plot(ref, 'bits per byte and accuracy against size')}\n## In storage\n\n"
                             f"| model | model folder | evaluation |\n|---|---|---|\n{where}\n",
                             key="finescope-report", description=title)
    rows = [{"model": label, "domain": domain, "params": r["info"]["params"],
             **{k: r["info"]["domains"][domain].get(k) for k in ("bpb", "acc", "margin")}, **stored[label]}
            for label, r in results.items() for domain in r["info"]["domains"]]
    create_table_artifact(rows, key="finescope-metrics", description="bits per byte, accuracy and margin per model")
    return _logged("report", ref)


@task
def publish_sweep(root: str, results: dict[str, Ref], ratios: dict[str, float], domain: str, metric: str,
                  keep: float) -> Ref:
    """Write the sweep's report and publish it as a Prefect markdown artifact."""
    ref = stages.sweep(root, results, ratios, domain, metric, keep)
    create_markdown_artifact(with_plot(ref, "Pareto front of size against score"), key="finescope-sweep",
                             description=f"size/quality sweep for {domain}")
    get_run_logger().info("sweep: chosen model %s", ref["info"]["chosen"])
    return _logged("sweep", ref)


@task
def record_manifest(root: str, refs: dict[str, Ref]) -> str:
    return stages.write_manifest(root, refs)
