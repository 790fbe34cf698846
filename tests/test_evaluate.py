"""Tests of evaluate.py and report.py on the tiny random Llama; expected values are recomputed with plain forwards."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from finescope_core import storage
from finescope_core.config import EvalConfig
from finescope_core.evaluate import evaluate_model
from finescope_core.models import count_parameters, load_model, load_tokenizer, resolve
from finescope_core.report import markdown_table, write_report

WORDS = (
    "patient dose heart enzyme theorem matrix river code loop proof cell virus acid gene prime sum kernel "
    "café naïve protein vector bridge signal lemma tumour"
).split()
MC_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("context", pa.string()), ("choices", pa.list_(pa.string())),
     ("answer", pa.int64()), ("source", pa.string())]
)
TEXT_SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string()), ("source", pa.string())])


@pytest.fixture(scope="module")
def tiny() -> Path:
    return resolve("tiny-random-llama")


@pytest.fixture(scope="module")
def model(tiny: Path) -> torch.nn.Module:
    return load_model(tiny)


@pytest.fixture(scope="module")
def tokenizer(tiny: Path) -> Any:
    return load_tokenizer(tiny)


def make_items(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Cloze items with 4 choices of varied length; some contexts end in a space, then choices start without one."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        stem = f"Question: which word goes with {rng.choice(WORDS)} and {rng.choice(WORDS)}?\nAnswer:"
        lead = " "
        if i % 3 == 2:
            stem, lead = stem + " ", ""
        choices = [lead + " ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(4)]
        items.append({"item_id": f"q{i}", "context": stem, "choices": choices, "answer": 0, "source": "test"})
    return items


def make_docs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 40))) + "." for _ in range(n)]
    return [{"doc_id": f"d{i}", "text": t, "source": "test"} for i, t in enumerate(texts)]


def write_eval_set(root: Path, domain: str, items: list[dict[str, Any]], docs: list[dict[str, Any]]) -> None:
    folder = storage.join(str(root), domain)
    storage.write_parquet(pa.Table.from_pylist(items, schema=MC_SCHEMA), storage.join(folder, "mc.parquet"))
    storage.write_parquet(pa.Table.from_pylist(docs, schema=TEXT_SCHEMA), storage.join(folder, "text.parquet"))


def sequence_logprob(model: torch.nn.Module, ids: list[int]) -> float:
    """Sum of log p(ids[t] | ids[:t]) for t >= 1, from one unpadded full-vocabulary forward."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None]).sum().item()


def normalised_scores(model: torch.nn.Module, tokenizer: Any, context: str, choices: list[str]) -> list[float]:
    """Per choice: [log P(context + choice) - log P(context without trailing spaces)] / characters of the choice."""
    def encode(text: str) -> list[int]:
        return [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]

    context_logprob = sequence_logprob(model, encode(context.rstrip()))
    return [(sequence_logprob(model, encode(context + c)) - context_logprob) / len(c) for c in choices]


def cfg(**overrides: Any) -> EvalConfig:
    """A small config; ``batch_size`` 3 makes batches of unequal lengths, so padding is exercised."""
    settings = {"mc_items": 8, "ppl_docs": 4, "max_tokens": 24, "bootstrap": 200, "batch_size": 3, **overrides}
    return EvalConfig(**settings)


def test_perplexity_and_bpb_equal_a_plain_forward_per_document(tmp_path, tiny, model, tokenizer):
    docs = make_docs(7, seed=1)
    docs[1]["text"] = "Le café naïve: ünïcödé bytes count more than characters."
    write_eval_set(tmp_path, "med", make_items(2), docs)
    used = docs[:5]  # ppl_docs=5: the last two documents must not count
    result = evaluate_model(tiny, str(tmp_path), ["med"], cfg(ppl_docs=5, max_tokens=12))["domains"]["med"]

    total_nll, total_tokens, total_bytes = 0.0, 0, 0
    for doc in used:
        kept = tokenizer(doc["text"], add_special_tokens=False)["input_ids"][:12]
        scored_text = tokenizer.decode(kept)
        assert doc["text"].startswith(scored_text)
        total_nll -= sequence_logprob(model, [tokenizer.bos_token_id, *kept])
        total_tokens += len(kept)
        total_bytes += len(scored_text.encode("utf-8"))
    assert any(len(tokenizer(d["text"])["input_ids"]) > 12 for d in used), "the test needs a truncated document"
    assert result["n_docs"] == 5 and result["n_tokens"] == total_tokens
    assert result["ppl"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)
    assert result["bpb"] == pytest.approx(total_nll / math.log(2) / total_bytes, rel=1e-4)
    assert result["bpb"] * total_bytes * math.log(2) == pytest.approx(total_tokens * math.log(result["ppl"]), rel=1e-4)


def independent_answers(model: torch.nn.Module, tokenizer: Any, items: list[dict[str, Any]]) -> list[int]:
    """Answers that make even items right and odd items wrong, by length-normalised full-sequence likelihoods."""
    answers = []
    for i, item in enumerate(items):
        scores = normalised_scores(model, tokenizer, item["context"], item["choices"])
        best = int(np.argmax(scores))
        answers.append(best if i % 2 == 0 else (best + 1) % len(scores))
    return answers


@pytest.fixture(scope="module")
def balanced_set(tmp_path_factory, model, tokenizer) -> Path:
    """40 items whose model accuracy is exactly 1/2 on every even-length prefix, and 40 documents."""
    root = tmp_path_factory.mktemp("balanced")
    items = make_items(40, seed=2)
    for item, answer in zip(items, independent_answers(model, tokenizer, items)):
        item["answer"] = answer
    write_eval_set(root, "science", items, make_docs(40, seed=3))
    return root


def test_cloze_accuracy_follows_full_sequence_likelihoods_and_cis_narrow(balanced_set, tiny, model):
    small = evaluate_model(tiny, str(balanced_set), ["science"], cfg(mc_items=8, ppl_docs=4))
    large = evaluate_model(tiny, str(balanced_set), ["science"], cfg(mc_items=40, ppl_docs=40, batch_size=16))
    json.dumps(large)
    assert large["params"] == count_parameters(model)
    units = large["units"]["science"]["items"]
    assert np.mean(units["correct"]) == 0.5 and len(units["item_id"]) == 40
    assert all((margin > 0) == bool(correct) for margin, correct in zip(units["margin"], units["correct"]))
    assert large["domains"]["science"]["by_source"]["test"] == {"acc": 0.5, "n_mc": 40, "bpb": pytest.approx(
        large["domains"]["science"]["bpb"]), "n_docs": 40}
    s, g = small["domains"]["science"], large["domains"]["science"]
    assert (s["n_mc"], g["n_mc"], s["n_docs"], g["n_docs"]) == (8, 40, 4, 40)
    assert s["acc"] == g["acc"] == 0.5
    for metrics in (s, g):
        assert metrics["acc_ci"][0] <= metrics["acc"] <= metrics["acc_ci"][1]
        assert metrics["ppl_ci"][0] <= metrics["ppl"] <= metrics["ppl_ci"][1]
    for key in ("acc_ci", "ppl_ci"):
        assert g[key][1] - g[key][0] < s[key][1] - s[key][0], f"{key} does not narrow with more data"


def test_boundary_cases_score_only_the_choice(tmp_path, tiny, model, tokenizer):
    """A trailing space in the context and a unicode choice: accuracy equals the independent argmax either way."""
    items = [
        {"item_id": "a", "context": "Answer: ", "choices": ["café", "x"], "answer": 0, "source": "t"},
        {"item_id": "b", "context": "Q: 2+2?\nAnswer:", "choices": [" 4", " four hundred"], "answer": 0, "source": "t"},
    ]
    for item in items:
        item["answer"] = int(np.argmax(normalised_scores(model, tokenizer, item["context"], item["choices"])))
    write_eval_set(tmp_path, "d", items, make_docs(1))
    assert evaluate_model(tiny, str(tmp_path), ["d"], cfg())["domains"]["d"]["acc"] == 1.0
    for item in items:
        item["answer"] = 1 - item["answer"]
    write_eval_set(tmp_path, "d", items, make_docs(1))
    assert evaluate_model(tiny, str(tmp_path), ["d"], cfg())["domains"]["d"]["acc"] == 0.0


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda items, docs: items.clear(), ValueError, r"mc\.parquet is empty"),
        (lambda items, docs: docs.clear(), ValueError, r"text\.parquet is empty"),
        (lambda items, docs: items[1].update(choices=[]), ValueError, r"item 'q1' has no choices"),
        (lambda items, docs: items[0].update(answer=4), ValueError, r"item 'q0' has answer 4 but 4 choices"),
        (lambda items, docs: items[0].update(choices=[" a", ""]), ValueError, r"item 'q0' has an empty choice"),
        (lambda items, docs: docs[0].update(text="  "), ValueError, r"document 'd0' has no text"),
    ],
)
def test_bad_eval_sets_are_rejected_with_the_file_named(tmp_path, tiny, change, error, message):
    items, docs = make_items(3), make_docs(3)
    change(items, docs)
    write_eval_set(tmp_path, "med", items, docs)
    with pytest.raises(error, match=message):
        evaluate_model(tiny, str(tmp_path), ["med"], cfg())


def test_missing_domain_and_model_without_weights_are_reported(tmp_path, tiny):
    write_eval_set(tmp_path / "eval", "med", make_items(2), make_docs(2))
    with pytest.raises(FileNotFoundError, match=r"eval/law not found: build the eval sets"):
        evaluate_model(tiny, str(tmp_path / "eval"), ["med", "law"], cfg())
    no_weights = tmp_path / "model"
    no_weights.mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        evaluate_model(no_weights, str(tmp_path / "eval"), ["med"], cfg())
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / name, no_weights / name)
    with pytest.raises(FileNotFoundError, match=r"has no weights.*re-run the stage"):
        evaluate_model(no_weights, str(tmp_path / "eval"), ["med"], cfg())


def shifted(result: dict, domain: str, nats: float, flip: int) -> dict:
    """A copy of an evaluation whose every document costs ``nats`` more and whose first ``flip`` items flip."""
    out = json.loads(json.dumps(result))
    docs, items = out["units"][domain]["docs"], out["units"][domain]["items"]
    docs["nll"] = [v + nats for v in docs["nll"]]
    items["correct"] = [1 - c if i < flip else c for i, c in enumerate(items["correct"])]
    return out


def test_write_report_compares_models_paired(tmp_path, tiny):
    write_eval_set(tmp_path / "eval", "medicine", make_items(6), make_docs(6))
    write_eval_set(tmp_path / "eval", "general", make_items(4, seed=5), make_docs(4, seed=5))
    base = evaluate_model(tiny, str(tmp_path / "eval"), ["medicine", "general"], cfg(mc_items=6, ppl_docs=6))
    pruned = shifted(base, "medicine", 8.0, 0)
    pruned["params"] = base["params"] // 2
    recovered = shifted(base, "medicine", 2.0, 0)
    del recovered["domains"]["general"], recovered["units"]["general"]
    results = {"pruned": pruned, "recovered": recovered, "base": base}  # "base" is the reference wherever it is

    uris = write_report(results, str(tmp_path / "report"), title="Tiny report", speed={"base": 100.0},
                        details={"self-distillation": {"rejected": {"truncated": 2}}})
    assert uris == {k: str(tmp_path / "report" / f"report.{ext}") for k, ext in
                    [("json", "json"), ("markdown", "md"), ("png", "png")]}
    saved = storage.read_json(uris["json"])
    assert "units" not in saved["models"]["base"] and saved["speed"] == {"base": 100.0}
    paired = saved["paired"]["medicine"]
    docs = base["units"]["medicine"]["docs"]
    gained = -6.0 * len(docs["nll"]) / sum(docs["bytes"]) / math.log(2)  # 6 nats a document won back
    difference, lo, hi = paired["recovered"]["vs_pruned"]["bpb"]
    assert difference == pytest.approx(gained) and lo < difference < hi < 0
    assert paired["recovered"]["gap_closed"] == pytest.approx([0.75] * 3)
    assert paired["recovered"]["vs_pruned"]["acc"] == [0.0, 0.0, 0.0]
    assert "gap_closed" not in paired["pruned"] and "recovered" not in saved["paired"]["general"]
    markdown = storage.read_bytes(uris["markdown"]).decode()
    assert markdown.startswith("# Tiny report")
    assert markdown_table(results, saved["paired"], {"base": 100.0}) in markdown
    for token in ("## medicine", "## general", "| base |", "| pruned |", "(50%)", "n/a", "75% [75%, 75%]",
                  "`recovered` on medicine", "### medicine, by source", "- rejected: {'truncated': 2}"):
        assert token in markdown, token
    png = storage.read_bytes(uris["png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 400 and height > 400
    with pytest.raises(ValueError, match="no results"):
        write_report({}, str(tmp_path / "empty"))
    stored = json.loads(json.dumps(results, sort_keys=True))  # as the eval stages' metrics.json files hold them
    text = storage.read_bytes(write_report(stored, str(tmp_path / "ordered"), domains=["medicine", "general"])[
        "markdown"]).decode()
    assert text.index("## medicine") < text.index("## general") and "`recovered` on medicine" in text


def test_models_of_equal_size_get_markers_apart():
    from finescope_core.report import dodged

    x = dodged({"base": 134e6, "pruned": 100e6, "recovered": 100e6, "other": 100.5e6})
    assert x["base"] == 134.0
    assert len({round(x[k], 3) for k in ("pruned", "recovered", "other")}) == 3
    assert all(abs(x[k] - 100) > 1 for k in ("pruned", "other"))  # apart by more than a marker's width


def test_long_multiple_choice_contexts_lose_their_beginning(tiny_model):
    from finescope_core.evaluate import cloze_sequences
    from finescope_core.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    context = "Question: " + "the patient had a long history " * 40 + "so the diagnosis is\nAnswer:"
    (full, n_full), = cloze_sequences(tokenizer, [(context, " acute appendicitis")])
    (cut, n_cut), = cloze_sequences(tokenizer, [(context, " acute appendicitis")], max_tokens=32)
    assert len(full) > 32 and len(cut) == 32 and n_cut == n_full
    assert cut[0] == full[0] and cut[1:] == full[-31:]


def test_harness_adapter_scores_our_eval_set_like_our_harness(balanced_set, tiny):
    """lm-evaluation-harness, fed our eval set as a task, reaches the accuracy our own cloze scoring gives."""
    result = evaluate_model(tiny, str(balanced_set), ["science"],
                            cfg(mc_items=40, ppl_docs=2, harness_tasks=["finescope_science_mc"], harness_limit=40))
    harness = result["harness"]["finescope_science_mc"]
    assert harness["sample_len"] == 40
    assert harness["acc_norm"] == result["domains"]["science"]["acc"] == 0.5
    with pytest.raises(ValueError, match="unknown task"):
        evaluate_model(tiny, str(balanced_set), ["science"], cfg(mc_items=4, ppl_docs=2, harness_tasks=["nope_mc"]))
