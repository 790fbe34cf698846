"""A pool from the datasets ecosystem: a local dataset, its text a template over columns, curated like any pool."""

import gzip
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from finescope_core import curation, storage
from finescope_core.config import load_config
from finescope_core.dataset_pool import import_dataset
from finescope_core.formats import CURATED_FILE
from finescope_core.preflight import InputError, check_run

REPO = Path(__file__).resolve().parent.parent
TOPICS = ["the insulin dose for a patient with diabetes", "a fever after surgery", "sorting a list in Python",
          "a recursive function for factorials"]


def questions(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({
        "qid": [f"q{i:03d}" for i in range(n)],
        "question": [f"Question {i}: what about {TOPICS[i % len(TOPICS)]}?" for i in range(n)],
        "answer": [f"Answer {i}: it depends on {TOPICS[(i + 1) % len(TOPICS)]}." for i in range(n)],
    })


def config(output: Path, dataset: str, **data: str):
    overrides = {"output": str(output), "data.dataset": dataset, "data.text": "Q: {question}\nA: {answer}",
                 "data.id_column": "qid", "data.eval_sets": None, **{f"data.{k}": v for k, v in data.items()}}
    return load_config(REPO / "configs" / "tiny.yaml", overrides)


@pytest.mark.parametrize("form", ["save_to_disk", "jsonl"])
def test_a_local_dataset_is_curated_with_its_text_template(tmp_path: Path, form: str):
    rows = questions(48)
    if form == "save_to_disk":
        rows.save_to_disk(str(tmp_path / "dataset"))
        source = str(tmp_path / "dataset")
    else:
        rows.to_json(str(tmp_path / "questions.jsonl"))
        source = str(tmp_path / "*.jsonl")
    run = config(tmp_path / "run", source)
    refs = curation.curate(run)

    pool = refs["corpus"]["pool"]
    assert pool.startswith(str(tmp_path / "run" / "imported"))
    imported = pq.read_table(storage.listdir(pool, ".parquet")[0]).to_pylist()
    assert imported[5] == {"doc_id": "q005", "text": f"Q: {rows[5]['question']}\nA: {rows[5]['answer']}"}
    curated = pq.read_table(Path(refs["curated"]["uri"]) / CURATED_FILE).to_pylist()
    by_id = {row["qid"]: row for row in rows}
    assert len(curated) == run.select.budget
    for doc in curated:  # every curated document is its row's template, under the row's id
        assert doc["text"] == f"Q: {by_id[doc['doc_id']]['question']}\nA: {by_id[doc['doc_id']]['answer']}"
    assert curation.curate(run)["curated"]["reused"]  # the same dataset again: nothing is imported or made anew


def test_a_template_naming_a_missing_column_fails_before_any_work(tmp_path: Path):
    questions(8).save_to_disk(str(tmp_path / "dataset"))
    run = config(tmp_path / "run", str(tmp_path / "dataset"), text="{question}\n{solution}")
    with pytest.raises(InputError, match=r"data\.text='\{question\}\\n\{solution\}' names column 'solution'.*"
                                         r"its columns: \['answer', 'qid', 'question'\]"):
        check_run(run, needs_eval=False)
    assert not (tmp_path / "run").exists()


def test_a_pool_and_a_dataset_together_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match=r"data\.pool and data\.dataset are two sources"):
        config(tmp_path / "run", str(tmp_path), pool=str(tmp_path))


def test_compressed_data_files_are_read_and_other_files_beside_them_ignored(tmp_path: Path):
    rows = questions(6)
    (tmp_path / "data").mkdir()
    rows.select(range(3)).to_json(str(tmp_path / "part-0.jsonl"))
    rows.select(range(3, 6)).to_json(str(tmp_path / "part-1.jsonl"))
    for part in ("part-0", "part-1"):
        (tmp_path / "data" / f"{part}.jsonl.gz").write_bytes(gzip.compress((tmp_path / f"{part}.jsonl").read_bytes()))
    (tmp_path / "data" / "README.md").write_text("not data")
    run = config(tmp_path / "run", str(tmp_path / "data"))
    check_run(run, needs_eval=False, needs_seeds=False)

    import_dataset(run.data, str(tmp_path / "out"))
    imported = pq.read_table(tmp_path / "out" / "shard-00000.parquet").to_pylist()
    assert [doc["doc_id"] for doc in imported] == rows["qid"]
    assert imported[4]["text"] == f"Q: {rows[4]['question']}\nA: {rows[4]['answer']}"


@pytest.mark.parametrize("source", ["/nonexistent/notes.jsonl", "notes/*.jsonl", "notes.csv.gz", "corpora/med/notes"])
def test_a_mistyped_local_path_is_named_as_such_not_sent_to_the_hub(tmp_path: Path, source: str):
    run = config(tmp_path / "run", source)
    with pytest.raises(InputError, match=r"data\.dataset='.*': no such folder or data file; check the path"):
        check_run(run, needs_eval=False)
    assert not (tmp_path / "run").exists()
