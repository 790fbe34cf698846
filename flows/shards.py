"""Per-shard work of incremental curation (activation dump, SAE embedding, sentence embedding), run shard-parallel.

Each step is a subflow whose task runner comes from ``config.runner``: threads in the flow's process, or a Dask
cluster through prefect-dask (an existing one at ``runner.address``, or a local one of ``runner.workers``
processes), so the dump and the embedding scale past one machine while the flow stays the same.
"""

from __future__ import annotations

from finescope.tasks.stages import dump_acts, embed_documents, embed_sentences
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from finescope_core.config import DumpConfig, ModelConfig, RunnerConfig
from finescope_core.formats import Ref


def task_runner(cfg: RunnerConfig):
    """The Prefect task runner that ``cfg`` describes."""
    if cfg.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True})


@flow(name="dump-shards")
def dump_shards(root: str, model: Ref, shards: list[Ref], dump: DumpConfig, model_cfg: ModelConfig) -> list[Ref]:
    """The activation dump of every shard (those dumped before are reused)."""
    futures = [dump_acts.submit(root, model, shard, dump, model_cfg) for shard in shards]
    return [future.result() for future in futures]


@flow(name="embed-shards")
def embed_shards(root: str, acts: list[Ref], sae: Ref, pooling: str, device: str) -> list[Ref]:
    """The SAE embedding of every shard's dump (those embedded with this SAE before are reused)."""
    futures = [embed_documents.submit(root, ref, sae, pooling, device) for ref in acts]
    return [future.result() for future in futures]


@flow(name="embed-shard-sentences")
def embed_shard_sentences(root: str, shards: list[Ref], device: str) -> list[Ref]:
    """The sentence embedding of every shard's documents (those embedded before are reused)."""
    futures = [embed_sentences.submit(root, shard, device) for shard in shards]
    return [future.result() for future in futures]


def with_runner(runner: RunnerConfig, subflow):
    """``subflow`` with the configured task runner."""
    return subflow.with_options(task_runner=task_runner(runner))
