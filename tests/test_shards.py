"""Shard-parallel curation steps on a local Dask cluster of 2 worker processes (prefect-dask)."""

from pathlib import Path

from finescope.flows.shards import dump_shards, task_runner, with_runner
from prefect_dask import DaskTaskRunner

from finescope_core import stages
from finescope_core.config import ModelConfig, RunnerConfig


def test_dask_runner_is_a_local_cluster_or_an_address():
    local = task_runner(RunnerConfig(kind="dask", workers=2))
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 2
    assert task_runner(RunnerConfig(kind="dask", address="tcp://127.0.0.1:8786")).address == "tcp://127.0.0.1:8786"


def test_shards_dumped_on_two_dask_workers_match_a_direct_dump(tiny_model: Path, tmp_path: Path, write_shard,
                                                                  tiny_dump, prefect_harness):
    root, model_cfg = str(tmp_path / "run"), ModelConfig(name="tiny-random-llama")
    model = stages.model_ref(model_cfg)
    shards = [stages.shard(root, write_shard(tmp_path / "pool", index)) for index in range(2)]
    acts = with_runner(RunnerConfig(kind="dask", workers=2), dump_shards)(root, model, shards, tiny_dump, model_cfg)
    assert [ref.get("reused", False) for ref in acts] == [False, False]
    direct = [stages.acts(str(tmp_path / "direct"), model, shard, tiny_dump, model_cfg) for shard in shards]
    assert [ref["fingerprint"] for ref in acts] == [ref["fingerprint"] for ref in direct]
    assert [ref["info"] for ref in acts] == [ref["info"] for ref in direct]
