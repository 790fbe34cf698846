"""Evaluation: bits per byte, perplexity and cloze multiple-choice accuracy per domain, with bootstrap CIs, and the
per-item and per-document scores from which two models are compared paired (``stats``, ``report``).

Eval sets live under ``<eval_uri>/<domain>/mc.parquet`` (item_id, context, choices, answer; optional source)
and ``<eval_uri>/<domain>/text.parquet`` (doc_id, text; optional source). Both metrics reduce to one primitive: the
summed log-probability of the last ``n`` tokens of a sequence, computed in length-sorted, right-padded batches with
``logits_to_keep`` so that only the positions that are scored get full-vocabulary logits. Multiple choice packs an
item's choices into one row that shares their context (``packed``), which gives the same scores for a fraction of
the compute.

Why cloze: at 135M parameters a letter-answer prompt carries no signal (the model answers "A" every time), while
scoring each choice's text as a continuation of the stem does. Choices are compared by log-likelihood per character
of the choice, like lm-eval's ``acc_norm``, so that long choices are not penalised for having more tokens.

Every sequence starts with the tokenizer's BOS token (EOS when it has none), as lm-eval does, so the first text token
of a document is scored too and bits per byte covers every byte of the scored text.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from finescope_core import storage
from finescope_core.formats import (
    EVAL_SET_FIX,
    MC_FILE,
    REQUIRED_MC_COLUMNS,
    REQUIRED_TEXT_COLUMNS,
    TEXT_FILE,
    ClozeItem,
    Document,
)
from finescope_core.models import count_parameters, load_model, load_tokenizer, prefix_token_id
from finescope_core.packed import can_pack, pack_item, packed_logprobs
from finescope_core.precision import autocast, resolve_precision
from finescope_core.progress import progress
from finescope_core.stats import bootstrap_counts, bpb_ci, mean_ci, percentile_ci

if TYPE_CHECKING:
    from finescope_core.config import EvalConfig

Sequence = tuple[list[int], int]  # token ids, and how many of the last ones are scored


def evaluate_model(
    model_dir: str | Path,
    eval_uri: str,
    domains: list[str],
    cfg: EvalConfig,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
) -> dict[str, Any]:
    """Bits per byte, perplexity and cloze accuracy per domain (with 95% CIs and a per-source breakdown), plus the
    per-unit scores that paired comparisons between models need.

    Eval sets are read and validated before the model is loaded, so bad input fails fast. The result is
    JSON-serialisable: ``{"params", "domains": {domain: {bpb, bpb_ci, ppl, ppl_ci, acc, acc_ci, margin, margin_ci,
    n_mc, n_docs, n_tokens, by_source}}, "units": {domain: {"items": {...}, "docs": {...}}}}``. Peak memory beyond
    the weights is one batch of perplexity logits, ``batch_size x (max_tokens + 1) x vocab`` floats (about 400 MB at
    8 x 256 with a 49k vocabulary): lower ``cfg.batch_size`` to bound it.
    """
    if not domains:
        raise ValueError("no domains to evaluate: give at least one domain (eval_domains)")
    sets = {domain: read_domain(eval_uri, domain, cfg) for domain in domains}
    folder = _local_model_dir(model_dir)
    tokenizer = load_tokenizer(folder)
    model = _load_model(folder, device, dtype)
    summaries, units = {}, {}
    with scoring_precision(model, cfg.precision):
        for domain, (items, docs) in sets.items():
            doc_units = document_scores(model, tokenizer, docs, cfg.max_tokens, cfg.batch_size)
            item_units = item_scores(model, tokenizer, items, cfg.batch_size, cfg.mc_max_tokens)
            summaries[domain] = summarise(doc_units, item_units, cfg.bootstrap, seed)
            units[domain] = {"docs": doc_units, "items": item_units}
    result = {"params": count_parameters(model), "domains": summaries, "units": units}
    if cfg.harness_tasks:
        from finescope_core.harness import run_harness

        result["harness"] = run_harness(folder, cfg.harness_tasks, eval_uri, domains, cfg.harness_limit,
                                        cfg.batch_size, device)
    return result


def scoring_precision(model: PreTrainedModel, precision: str):
    """bfloat16 autocast for scoring (log-probabilities are still taken in float32), or plain arithmetic; "auto"
    picks the one the model's device computes natively."""
    device = str(model.device)
    return autocast(device, resolve_precision(precision, device))


DOC_UNITS = ("doc_id", "source", "nll", "tokens", "bytes")  # per-document scores (``document_scores``)
ITEM_UNITS = ("item_id", "source", "correct", "margin")  # per-item scores (``item_scores``)


def empty(columns: tuple[str, ...]) -> dict[str, list]:
    """The scores of a domain without that eval set."""
    return {column: [] for column in columns}


def summarise(docs: dict[str, list], items: dict[str, list], resamples: int, seed: int) -> dict[str, Any]:
    """Aggregates with 95% bootstrap CIs over documents (bpb, perplexity) and items (accuracy, margin), overall
    and per source; a domain without documents (or items) has None for their metrics."""
    return {**document_summary(docs, resamples, seed), **item_summary(items, resamples, seed),
            "by_source": by_source(docs, items)}


def document_summary(docs: dict[str, list], resamples: int, seed: int) -> dict[str, Any]:
    nll, n_bytes, n_tokens = (np.asarray(docs[k], dtype=np.float64) for k in ("nll", "bytes", "tokens"))
    if not len(nll):
        return {"bpb": None, "bpb_ci": None, "ppl": None, "ppl_ci": None, "n_docs": 0, "n_tokens": 0}
    counts = bootstrap_counts(len(nll), resamples, seed)
    bpb, *bpb_interval = bpb_ci(nll, n_bytes, resamples, seed)
    return {"bpb": bpb, "bpb_ci": bpb_interval, "ppl": float(np.exp(nll.sum() / n_tokens.sum())),
            "ppl_ci": percentile_ci(np.exp((counts @ nll) / (counts @ n_tokens))), "n_docs": len(nll),
            "n_tokens": int(n_tokens.sum())}


def item_summary(items: dict[str, list], resamples: int, seed: int) -> dict[str, Any]:
    if not items["correct"]:
        return {"acc": None, "acc_ci": None, "margin": None, "margin_ci": None, "n_mc": 0}
    acc, *acc_interval = mean_ci(items["correct"], resamples, seed)
    margin, *margin_interval = mean_ci(items["margin"], resamples, seed)
    return {"acc": acc, "acc_ci": acc_interval, "margin": margin, "margin_ci": margin_interval,
            "n_mc": len(items["correct"])}


def by_source(docs: dict[str, list], items: dict[str, list]) -> dict[str, dict[str, float]]:
    """Per source: accuracy and item count, bits per byte and document count (whichever the source has)."""
    out: dict[str, dict[str, float]] = {}
    for source in dict.fromkeys(items["source"]):
        picked = [c for c, s in zip(items["correct"], items["source"]) if s == source]
        out.setdefault(source, {}).update(acc=float(np.mean(picked)), n_mc=len(picked))
    for source in dict.fromkeys(docs["source"]):
        rows = [i for i, s in enumerate(docs["source"]) if s == source]
        nats, size = sum(docs["nll"][i] for i in rows), sum(docs["bytes"][i] for i in rows)
        out.setdefault(source, {}).update(bpb=float(nats / size / np.log(2)), n_docs=len(rows))
    return out


# ---------------------------------------------------------------------------------------------------- eval sets


def read_domain(eval_uri: str, domain: str, cfg: EvalConfig) -> tuple[list[ClozeItem], list[Document]]:
    """A domain's cloze items and held-out documents; a domain may have either set, not neither."""
    has = {name: storage.exists(storage.join(eval_uri, domain, name)) for name in (MC_FILE, TEXT_FILE)}
    if not any(has.values()):
        raise FileNotFoundError(f"eval set {storage.join(eval_uri, domain)} not found: {EVAL_SET_FIX}")
    return (read_mc_items(eval_uri, domain, cfg.mc_items) if has[MC_FILE] else [],
            read_docs(eval_uri, domain, cfg.ppl_docs) if has[TEXT_FILE] else [])


def read_mc_items(eval_uri: str, domain: str, limit: int) -> list[ClozeItem]:
    """The first ``limit`` items of a domain's ``mc.parquet``, checked: every item has choices and a valid answer."""
    uri = storage.join(eval_uri, domain, MC_FILE)
    rows = _read_head(uri, REQUIRED_MC_COLUMNS, limit, optional=("source",)).to_pylist()
    items = [ClozeItem(str(r["item_id"]), r["context"] or "", tuple(r["choices"] or ()), r["answer"],
                       r.get("source") or "") for r in rows]
    for item in items:
        _check_item(uri, item)
    return items


def _check_item(uri: str, item: ClozeItem) -> None:
    where = f"{uri}: item {item.item_id!r}"
    if not item.choices:
        raise ValueError(f"{where} has no choices; give each item at least two choices or drop it")
    if not all(isinstance(c, str) and c for c in item.choices):
        raise ValueError(f"{where} has an empty choice; every choice must be non-empty text")
    if item.answer is None or not 0 <= item.answer < len(item.choices):
        raise ValueError(
            f"{where} has answer {item.answer} but {len(item.choices)} choices; answer must be a 0-based choice index"
        )


def read_docs(eval_uri: str, domain: str, limit: int) -> list[Document]:
    """The first ``limit`` documents of a domain's ``text.parquet``; each must have text."""
    uri = storage.join(eval_uri, domain, TEXT_FILE)
    rows = _read_head(uri, REQUIRED_TEXT_COLUMNS, limit, optional=("source",)).to_pylist()
    docs = [Document(str(r["doc_id"]), r["text"] or "", r.get("source") or "") for r in rows]
    for doc in docs:
        if not doc.text.strip():
            raise ValueError(f"{uri}: document {doc.doc_id!r} has no text; drop it from the eval set")
    return docs


def _read_head(uri: str, columns: tuple[str, ...], limit: int, optional: tuple[str, ...] = ()) -> pa.Table:
    """The first ``limit`` rows of a Parquet file (``columns``, and those of ``optional`` it has), read batch by
    batch so that a large file is never loaded whole."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"eval set {uri} not found: {EVAL_SET_FIX}")
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise ValueError(f"eval set {uri} lacks columns {missing}; expected {list(columns)}")
        batches, rows = [], 0
        present = [*columns, *(c for c in optional if c in parquet.schema_arrow.names)]
        for batch in parquet.iter_batches(batch_size=limit, columns=present):
            batches.append(batch)
            rows += batch.num_rows
            if rows >= limit:
                break
    if rows == 0:
        raise ValueError(f"eval set {uri} is empty: rebuild it, or drop the domain from eval_domains")
    return pa.Table.from_batches(batches).slice(0, limit)


# -------------------------------------------------------------------------------------------------------- model


def _local_model_dir(model_dir: str | Path) -> Path:
    """A local copy of the model folder (downloaded once for an object-storage URI), checked to be a model folder."""
    folder = storage.fetch_directory(str(model_dir))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder / 'config.json'} not found: model_dir must be a transformers folder written by save_pretrained"
        )
    return folder


def _load_model(folder: Path, device: str, dtype: str) -> PreTrainedModel:
    try:
        return load_model(folder, device=device, dtype=dtype)
    except FileNotFoundError as exc:
        fix = "re-run the stage that writes this model, or save it with save_pretrained"
        raise FileNotFoundError(f"{exc}; {fix}") from exc


# ------------------------------------------------------------------------------------------------------ scoring


def continuation_logprobs(
    model: PreTrainedModel, sequences: list[Sequence], batch_size: int, desc: str = "scoring"
) -> np.ndarray:
    """Summed log-probability of the last ``n`` tokens of each ``(ids, n)``, each predicted from the ids before it.

    Sequences are sorted by length (longest first, so running out of memory happens at once) and right-padded;
    padding is masked and never scored. Only the results (one float per sequence) outlive a batch.
    """
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
    out = np.zeros(len(sequences), dtype=np.float64)
    for start in progress(range(0, len(order), batch_size), f"{desc} (batches)"):
        chunk = order[start : start + batch_size]
        out[chunk] = _batch_logprobs(model, [sequences[i] for i in chunk])
    return out


def _batch_logprobs(model: PreTrainedModel, batch: list[Sequence]) -> list[float]:
    """One right-padded forward; ``logits_to_keep`` covers just the positions that predict scored tokens."""
    lengths = [len(ids) for ids, _ in batch]
    width = max(lengths)
    input_ids = torch.zeros((len(batch), width), dtype=torch.long)  # pad id is irrelevant: masked and never scored
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, _) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    keep = max(width - length + n + 1 for length, (_, n) in zip(lengths, batch))
    with torch.inference_mode():
        logits = model(
            input_ids=input_ids.to(model.device),
            attention_mask=mask.to(model.device),
            logits_to_keep=keep,
            use_cache=False,
        ).logits
    first_kept = width - keep
    scores = []
    for row, (length, (_, n)) in enumerate(zip(lengths, batch)):
        start = length - n - 1 - first_kept
        targets = input_ids[row, length - n : length].to(logits.device)
        scores.append(-F.cross_entropy(logits[row, start : start + n].float(), targets, reduction="sum").item())
    return scores


# --------------------------------------------------------------------------------------------------- perplexity


def document_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, docs: list[Document], max_tokens: int, batch_size: int
) -> dict[str, list]:
    """Per document truncated to ``max_tokens`` tokens: its NLL (nats), scored tokens and the UTF-8 bytes they cover.

    Bits per byte = total NLL / ln 2 / total bytes which, unlike perplexity, compares models with different
    tokenizers.
    """
    if not docs:
        return empty(DOC_UNITS)
    ids, n_bytes = truncate_docs(tokenizer, [d.text for d in docs], max_tokens)
    prefix = prefix_token_id(tokenizer)
    nll = -continuation_logprobs(model, [([prefix, *t], len(t)) for t in ids], batch_size, "perplexity")
    return {"doc_id": [d.doc_id for d in docs], "source": [d.source for d in docs], "nll": nll.tolist(),
            "tokens": [len(t) for t in ids], "bytes": n_bytes}


def truncate_docs(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_tokens: int
) -> tuple[list[list[int]], list[int]]:
    """Each text's first ``max_tokens`` token ids, and the UTF-8 byte count of the text those tokens cover."""
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    ids, n_bytes = [], []
    for text, tokens, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"]):
        kept = tokens[:max_tokens]
        ids.append(kept)
        n_bytes.append(len(text[: offsets[len(kept) - 1][1]].encode("utf-8")))
    return ids, n_bytes


# ----------------------------------------------------------------------------------------------- multiple choice


def item_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: list[ClozeItem],
    batch_size: int,
    max_tokens: int | None = None,
) -> dict[str, list]:
    """Per cloze item: whether the choice with the highest log-likelihood per character is right, and the margin
    of the gold choice over the best other one (nats per character; positive when right), a continuous signal of
    how far an item is from flipping."""
    if not items:
        return empty(ITEM_UNITS)
    logliks = choice_logliks(model, tokenizer, items, batch_size, max_tokens)
    correct, margins = [], []
    for item, ll in zip(items, logliks):
        scores = predict_scores(item, ll)
        others = np.delete(scores, item.answer)
        correct.append(int(np.argmax(scores)) == item.answer)
        margins.append(float(scores[item.answer] - others.max()) if len(others) else 0.0)
    return {"item_id": [i.item_id for i in items], "source": [i.source for i in items],
            "correct": [int(c) for c in correct], "margin": margins}


def predict_scores(item: ClozeItem, logliks: np.ndarray) -> np.ndarray:
    """Length-normalised scores: log-likelihood per character of each choice (lm-eval's ``acc_norm``)."""
    return logliks / np.array([len(c) for c in item.choices], dtype=np.float64)


def choice_logliks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: list[ClozeItem],
    batch_size: int,
    max_tokens: int | None = None,
) -> list[np.ndarray]:
    """Log-likelihood of every choice as a continuation of its item's context.

    Each item's choices share one packed row (its context is run once) where the attention kernel allows it, and get
    a sequence each otherwise; both give the same scores, except that a packed item cut to ``max_tokens`` gives every
    choice the context that fits with its longest one. ``batch_size`` counts rows or sequences.
    """
    pairs = [(item.context, choice) for item in items for choice in item.choices]
    bounds = list(itertools.pairwise(np.cumsum([0, *(len(item.choices) for item in items)])))
    if can_pack(model):
        sequences = cloze_sequences(tokenizer, pairs)
        rows = [pack_item(sequences[lo:hi], max_tokens) for lo, hi in bounds]
        return packed_logprobs(model, rows, batch_size, "multiple choice")
    sequences = cloze_sequences(tokenizer, pairs, max_tokens)
    flat = continuation_logprobs(model, sequences, batch_size, "multiple choice")
    return [flat[lo:hi] for lo, hi in bounds]


def cloze_sequences(
    tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], max_tokens: int | None = None
) -> list[Sequence]:
    """Token ids of prefix + context + choice, and how many trailing tokens belong to the choice.

    Context and context + choice are tokenised separately and the choice is scored from their longest common prefix
    on, so a token that merges across the boundary is scored as part of the choice rather than dropped. Trailing
    whitespace of the context is moved to the choice first (as lm-eval does): "Answer: " + "B" would otherwise end the
    context with a lone space token the model rarely sees. A sequence longer than ``max_tokens`` loses the start of
    its context (the question's end and the choice are what the choice is scored on); the choice is always kept.
    """
    contexts = [context.rstrip() for context, _ in pairs]
    wholes = [context + choice for context, choice in pairs]
    prefix = [prefix_token_id(tokenizer)]
    context_ids = tokenizer(contexts, add_special_tokens=False)["input_ids"]
    whole_ids = tokenizer(wholes, add_special_tokens=False)["input_ids"]
    sequences = []
    for ctx, whole in zip(context_ids, whole_ids):
        n_choice = len(whole) - _common_prefix(ctx, whole)
        if max_tokens is not None and len(whole) + 1 > max_tokens:
            whole = whole[-max(max_tokens - 1, n_choice + 1) :]
        sequences.append((prefix + whole, n_choice))
    return sequences


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
