"""Stale results are never reused: a Prefect cache hit needs its artifact in storage, inputs count by content,
and the dtype and device a stage computes in are part of its identity."""

import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from finescope.tasks.stages import build_corpus, curate_documents, load_seeds, sample_pool
from prefect import flow

from finescope_core import stages, storage
from finescope_core.config import DataConfig, DumpConfig, EvalConfig, ModelConfig, SelectConfig

NOTES = [f"note {i}: the patient was given {i} mg of insulin after the renal biopsy on day {i}." for i in range(12)]


def write_docs(uri: str, texts: list[str], prefix: str) -> None:
    storage.write_parquet(pa.Table.from_pylist([{"doc_id": f"{prefix}{i}", "text": t} for i, t in enumerate(texts)]),
                          uri)


@pytest.fixture
def user_data(tmp_path: Path) -> dict[str, str]:
    """A user's pool (one shard), eval sets for medicine and a seeds file."""
    pool, eval_sets, seeds = tmp_path / "pool", tmp_path / "eval", tmp_path / "seeds.jsonl"
    write_docs(str(pool / "shard-000.parquet"), NOTES, "a")
    write_docs(str(eval_sets / "medicine" / "text.parquet"), ["an unrelated held-out text about fevers"], "e")
    seeds.write_text('{"text": "the patient was given insulin"}\n')
    return {"pool": str(pool), "eval": str(eval_sets), "seeds": str(seeds), "root": str(tmp_path / "run")}


@flow
def curate_at_random(root: str, data: DataConfig, seeds_path: str, budget: int) -> dict:
    """The curate flow's tasks around a random selection (no model needed)."""
    corpus = build_corpus(root, data)
    pool = sample_pool(root, corpus, data)
    seeds = load_seeds(root, seeds_path)
    select = SelectConfig(method="random", seeds=seeds_path, budget=budget, decontaminate=True)
    return {"corpus": corpus, "pool": pool, "curated": curate_documents(root, pool, seeds, {}, corpus["eval_sets"],
                                                                        select)}


def curated_texts(ref: dict) -> list[str]:
    return storage.read_parquet(storage.join(ref["uri"], "curated.parquet"))["text"].to_pylist()


def run(data: dict[str, str], budget: int = len(NOTES)) -> dict:
    config = DataConfig(pool=data["pool"], eval_sets=data["eval"])
    return curate_at_random(data["root"], config, data["seeds"], budget)


def test_a_cached_result_whose_artifact_was_deleted_is_remade(prefect_harness, user_data: dict[str, str]):
    first = run(user_data)
    shutil.rmtree(first["curated"]["uri"])
    again = run(user_data)
    assert again["curated"]["uri"] == first["curated"]["uri"] and not again["curated"].get("reused")
    assert curated_texts(again["curated"]) == curated_texts(first["curated"])


def test_a_shard_added_to_the_pool_is_new_input(prefect_harness, user_data: dict[str, str]):
    first = run(user_data)
    write_docs(str(Path(user_data["pool"]) / "shard-001.parquet"), ["note 99: a new sepsis case."], "b")
    grown = run(user_data, len(NOTES) + 1)  # data.incremental=false: one corpus of every shard
    assert grown["corpus"]["fingerprint"] != first["corpus"]["fingerprint"]
    assert grown["pool"]["info"]["n_docs"] == len(NOTES) + 1
    assert "note 99: a new sepsis case." in curated_texts(grown["curated"])


def test_an_eval_set_edited_in_place_is_new_input(prefect_harness, user_data: dict[str, str]):
    first = run(user_data)
    write_docs(str(Path(user_data["eval"]) / "medicine" / "text.parquet"), [NOTES[3]], "e")
    edited = run(user_data)
    assert edited["curated"]["fingerprint"] != first["curated"]["fingerprint"]
    assert NOTES[3] in curated_texts(first["curated"]) and NOTES[3] not in curated_texts(edited["curated"])


def test_the_dtype_and_device_a_stage_computes_in_are_part_of_its_id(tiny_model: Path, tmp_path: Path, monkeypatch):
    root, docs = str(tmp_path / "run"), {"uri": str(tmp_path / "docs"), "fingerprint": "d"}
    write_docs(str(tmp_path / "docs" / "docs.parquet"), NOTES[:4], "a")
    dump = DumpConfig(layers=[1], max_tokens=16, shard_docs=4, sae_sample_tokens=200)
    model = stages.model_ref(ModelConfig(name="tiny-random-llama"))
    float32 = stages.acts(root, model, docs, dump, ModelConfig(name="tiny-random-llama"))
    bfloat16 = stages.acts(root, model, docs, dump, ModelConfig(name="tiny-random-llama", dtype="bfloat16"))
    assert bfloat16["fingerprint"] != float32["fingerprint"] and not bfloat16["reused"]

    seen: dict[str, str] = {}
    monkeypatch.setattr(stages, "run_stage", lambda root, name, inputs, cfg, work, **_: {
        "uri": root, "fingerprint": seen.setdefault(str(sorted(inputs.items())), name)})
    for model_cfg in (ModelConfig(), ModelConfig(dtype="bfloat16"), ModelConfig(device="cuda"),
                      ModelConfig(device="cuda:1")):
        stages.evaluation(root, model, docs, ["medicine"], EvalConfig(), model_cfg)
    assert len(seen) == 3  # float32 on the CPU, bfloat16, and CUDA (whichever card)


class FailedState:
    """A task run's final state whose result raises ``error``."""

    def __init__(self, error: BaseException):
        self.error = error

    def result(self) -> None:
        raise self.error


def test_a_task_retries_when_the_store_or_network_drops_out_but_not_on_bad_input():
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
    from finescope.tasks.caching import retry_on_io_errors

    dropped = [EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket/key"),
               ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), ConnectionResetError(), TimeoutError()]
    bad_input = [FileNotFoundError("s3://bucket/pool"), PermissionError("s3://bucket"), ValueError("budget")]
    assert [retry_on_io_errors(None, None, FailedState(error)) for error in dropped] == [True] * len(dropped)
    assert [retry_on_io_errors(None, None, FailedState(error)) for error in bad_input] == [False] * len(bad_input)
