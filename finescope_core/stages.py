"""Every pipeline stage as a function over URIs and a typed config, content-addressed under the run root.

Each function takes references to its inputs (``formats.Ref``: ``uri``, ``fingerprint``, ``info``, returned by earlier
stages), does its work once (see ``addressing.run_stage``) and returns a reference to its output. Orchestrators (the
Prefect tasks) only pass these small dicts around, never tensors or models. A stage's function is named after its
folder under the run root (``acts``, ``sae``, ``curated``...), its output files after ``formats``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from finescope_core import sae_reuse, storage
from finescope_core.addressing import numerics, run_stage, source_fingerprint
from finescope_core.config import (
    DataConfig,
    DistillConfig,
    DumpConfig,
    EvalConfig,
    ModelConfig,
    PruneConfig,
    RecoverConfig,
    SAEConfig,
    SelectConfig,
)
from finescope_core.corpus import build_demo_corpus, corpus_fingerprint
from finescope_core.formats import (
    CURATED_FILE,
    DISTILLED_FILE,
    DOC_COLUMNS,
    DOCS_FILE,
    EMBEDDINGS_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    REQUIRED_DOC_COLUMNS,
    SENTENCES_FILE,
    Ref,
)
from finescope_core.models import resolve
from finescope_core.pool_shards import shard_uris
from finescope_core.precision import resolve_precision
from finescope_core.sae_reuse import SaeChoice


def model_ref(cfg: ModelConfig) -> Ref:
    """The model's local folder and content fingerprint."""
    folder = resolve(cfg.name)
    return {"uri": str(folder), "model_uri": str(folder), "fingerprint": source_fingerprint(str(folder)),
            "name": cfg.name}


def corpus(root: str, cfg: DataConfig) -> Ref:
    """The pool and eval sets: the user's (a pool referenced in place, or a dataset written as one under the run root)
    or the demo corpus built under the run root. Both are identified by content, read each call: a shard added to a
    pool or an eval set edited in place is new input.
    ``eval`` is the eval sets' URI (None without any), ``eval_sets`` their reference."""
    pool_uri = imported(root, cfg)["uri"] if cfg.dataset else cfg.pool
    if pool_uri:
        shard_uris(pool_uri)  # raises, naming the field, when there are none
        sets = users_eval_sets(root, cfg)
        fingerprint = storage.fingerprint(source_fingerprint(pool_uri), sets["fingerprint"] if sets else None)
        return {"uri": pool_uri, "pool": pool_uri, "fingerprint": fingerprint, "eval": sets["uri"] if sets else None,
                "eval_sets": sets}
    identity = {"builder": corpus_fingerprint(cfg.demo)}  # config, builder and source-data versions
    ref = run_stage(root, "corpus", identity, None, lambda out: build_demo_corpus(out, cfg.demo))
    sets = users_eval_sets(root, cfg) or eval_sets(storage.join(ref["uri"], "eval"))
    return {**ref, "pool": storage.join(ref["uri"], "pool"), "eval": sets["uri"], "eval_sets": sets}


def imported(root: str, cfg: DataConfig) -> Ref:
    """``data.dataset`` written as a pool of Parquet shards (``dataset_pool``), once per dataset content and text
    settings."""
    from finescope_core.dataset_pool import import_dataset, source_identity

    settings = {"text": cfg.text, "id_column": cfg.id_column, "split": cfg.split}
    return run_stage(root, "imported", {"dataset": source_identity(cfg.dataset, cfg.split)}, settings,
                     lambda out: import_dataset(cfg, out))


def users_eval_sets(root: str, cfg: DataConfig) -> Ref | None:
    """The eval sets the user gives: ``data.eval_datasets`` written as eval sets under the run root (once per
    datasets' content and entries), or the folder ``data.eval_sets``; None for neither."""
    if not cfg.eval_datasets:
        return eval_sets(cfg.eval_sets)
    from finescope_core.dataset_eval import eval_datasets_identity, import_eval_sets

    identity = {"datasets": eval_datasets_identity(cfg.eval_datasets)}
    entries = {"entries": [entry.model_dump() for entry in cfg.eval_datasets]}
    ref = run_stage(root, "imported_eval", identity, entries, lambda out: import_eval_sets(cfg.eval_datasets, out))
    return {"uri": ref["uri"], "fingerprint": ref["fingerprint"]}


def eval_sets(uri: str | None) -> Ref | None:
    """The eval sets under ``uri`` as a reference identified by their content (None without a URI)."""
    if not uri:
        return None
    if not storage.exists(uri):
        raise FileNotFoundError(f"data.eval_sets={uri!r} does not exist; give a folder of <domain>/mc.parquet and "
                                "<domain>/text.parquet files")
    return {"uri": uri, "fingerprint": source_fingerprint(uri)}


def pool(root: str, corpus_ref: Ref, cfg: DataConfig, seed: int = 0) -> Ref:
    """The documents to curate from: the whole pool, or a seeded random subset of ``max_pool_docs``."""

    def work(out: str) -> dict:
        table = _documents(storage.read_parquet_dir(corpus_ref["pool"]), "data.pool")
        if cfg.max_pool_docs and cfg.max_pool_docs < len(table):
            keep = np.sort(np.random.default_rng(seed).choice(len(table), cfg.max_pool_docs, replace=False))
            table = table.take(keep)
        storage.write_parquet(table, storage.join(out, DOCS_FILE))
        return {"n_docs": len(table)}

    return run_stage(root, "pool", {"corpus": corpus_ref}, {"max_pool_docs": cfg.max_pool_docs, "seed": seed}, work)


def shard(root: str, shard_uri: str) -> Ref:
    """One Parquet shard of a user's pool as documents (the unit of incremental curation)."""

    def work(out: str) -> dict:
        table = _documents(storage.read_parquet(shard_uri), f"data.pool shard {shard_uri}")
        storage.write_parquet(table, storage.join(out, DOCS_FILE))
        return {"n_docs": len(table), "shard": shard_uri}

    return run_stage(root, "pool", {"shard": source_fingerprint(shard_uri)}, None, work)


def _documents(table: pa.Table, where: str) -> pa.Table:
    """The table with the document columns (missing optional ones as nulls); named errors for unusable input."""
    missing = set(REQUIRED_DOC_COLUMNS) - set(table.column_names)
    if missing:
        raise ValueError(f"{where}: lacks column(s) {sorted(missing)}; each shard needs doc_id and text")
    if len(table) == 0:
        raise ValueError(f"{where} is empty: it has no documents")
    for column in DOC_COLUMNS:
        if column not in table.column_names:
            table = table.append_column(column, pa.nulls(len(table), pa.string()))
    return table.select(list(DOC_COLUMNS))


def merged(root: str, shards: list[Ref], embeddings_refs: list[Ref], sentences_refs: list[Ref] | None = None) -> Ref:
    """The documents of every shard in one folder (``docs.parquet``), with their SAE embeddings
    (``embeddings.parquet``) and sentence embeddings (``sentences.parquet``), each where given: what selection
    ranks. Cheap: only concatenation."""
    from finescope_core.embed import read_embeddings, write_embeddings

    def concatenate(refs: list[Ref], filename: str, out: str) -> None:
        parts = [read_embeddings(storage.join(ref["uri"], filename)) for ref in refs]
        write_embeddings([doc_id for part in parts for doc_id in part.doc_ids],
                         np.concatenate([part.matrix for part in parts]), storage.join(out, filename),
                         parts[0].blocks)

    def work(out: str) -> dict:
        docs = pa.concat_tables([storage.read_parquet(storage.join(ref["uri"], DOCS_FILE)) for ref in shards])
        storage.write_parquet(docs, storage.join(out, DOCS_FILE))
        for refs, filename in ((embeddings_refs, EMBEDDINGS_FILE), (sentences_refs, SENTENCES_FILE)):
            if refs:
                concatenate(refs, filename, out)
        return {"n_docs": len(docs), "shards": len(shards)}

    inputs = {"shards": storage.fingerprint(*[ref["fingerprint"] for ref in shards]),
              "embeddings": storage.fingerprint(*[ref["fingerprint"] for ref in embeddings_refs])}
    if sentences_refs:
        inputs["sentences"] = storage.fingerprint(*[ref["fingerprint"] for ref in sentences_refs])
    return run_stage(root, "merged", inputs, None, work)


def read_seeds(path: str) -> pa.Table:
    """Seed examples as documents; each JSONL line needs ``text`` (or ``prompt`` and ``response``)."""
    if not storage.exists(path):
        raise FileNotFoundError(f"select.seeds={path!r} does not exist; give a JSONL file of seed examples")
    try:
        lines = storage.read_bytes(path).decode().splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"select.seeds={path!r} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"select.seeds={path!r} line {number} is not JSON") from None
        if not isinstance(item, dict):
            raise ValueError(f"select.seeds={path!r} line {number} is a JSON {type(item).__name__}, not an object; "
                             'write one object per line, e.g. {"text": "..."}')
        text = item.get("text") or "\n".join(filter(None, (item.get("prompt"), item.get("response"))))
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"select.seeds={path!r} line {number} has no text (keys: text, or prompt + response)")
        rows.append({"doc_id": f"seed-{number:04d}", "text": text})
    if not rows:
        raise ValueError(f"select.seeds={path!r} is empty; add seed examples, one JSON object per line")
    return pa.Table.from_pylist(rows)


def seeds(root: str, path: str) -> Ref:
    """The seed examples, copied into the run as documents (so they are dumped like the pool)."""
    table = read_seeds(path)

    def work(out: str) -> dict:
        storage.write_parquet(table, storage.join(out, DOCS_FILE))
        return {"n_docs": len(table), "source": path}

    return run_stage(root, "seeds", {"file": storage.sha256_uri(path)[:16]}, None, work)


def acts(root: str, model: Ref, docs: Ref, cfg: DumpConfig, model_cfg: ModelConfig) -> Ref:
    """Residual-stream activations of ``docs`` (per token, pooled, and an SAE training sample)."""
    from finescope_core.activations import dump_activations

    def work(out: str) -> dict:
        table = storage.read_parquet(storage.join(docs["uri"], DOCS_FILE), ["doc_id", "text"])
        return dump_activations(model["uri"], table["doc_id"].to_pylist(), table["text"].to_pylist(), out, cfg,
                                model_cfg.device, model_cfg.dtype)

    return run_stage(root, "acts", {"model": model, "docs": docs, **numerics(model_cfg.device, model_cfg.dtype)},
                     cfg, work)


def sae(root: str, acts: Ref | list[Ref], cfg: SAEConfig, device: str) -> Ref:
    """An SAE per captured layer, fitted on the token sample of one dump, or of several (the shards of an
    incrementally curated pool)."""
    from finescope_core.sae import fit_saes

    dumps = acts if isinstance(acts, list) else [acts]
    layers = dumps[0]["info"]["layers"]
    sensitivity = storage.join(dumps[0]["uri"], "sensitivity.json")
    samples = [storage.join(ref["uri"], "sample") for ref in dumps]
    identity = acts if isinstance(acts, dict) else storage.fingerprint(*[ref["fingerprint"] for ref in dumps])
    return run_stage(root, "sae", {"acts": identity, **numerics(device)}, cfg,
                     lambda out: fit_saes(samples, layers, out, cfg, device, sensitivity),
                     ignore=frozenset({"refit_drift"}))  # a decision about refitting, not part of the SAE


def incremental_sae(root: str, state: str, acts: list[Ref], cfg: SAEConfig, device: str = "cpu") -> SaeChoice:
    """The SAE of an incrementally curated pool: fitted the first time, then reused or refit on every shard as
    ``sae_reuse`` decides from the state at ``state``, which records the outcome."""
    choice = sae_reuse.decide(state, acts, cfg, device)
    if choice.sae is None:
        choice = replace(choice, sae=sae(root, acts, cfg, device))
    sae_reuse.record(state, choice, acts)
    return choice


def embeddings(root: str, acts: Ref, sae_ref: Ref, pooling: str, device: str) -> Ref:
    """Pooled, unnormalised SAE codes of every dumped document: one block per layer the SAE stage fitted."""
    from finescope_core.embed import embed_with_saes, write_embeddings
    from finescope_core.sae import load_saes

    def work(out: str) -> dict:
        saes = load_saes(sae_ref, device)
        ids, matrix = embed_with_saes(storage.join(acts["uri"], "tokens"), saes, pooling)
        write_embeddings(ids, matrix, storage.join(out, EMBEDDINGS_FILE), len(saes))
        return {"n_docs": len(ids), "dim": int(matrix.shape[1]), "blocks": len(saes)}

    return run_stage(root, "embeddings", {"acts": acts, "sae": sae_ref, **numerics(device)}, {"pooling": pooling},
                     work)


def sentences(root: str, docs: Ref, device: str = "cpu") -> Ref:
    """The sentence embedder's (MiniLM's) vector of every document of ``docs`` (a pool, a pool's shard, the seeds):
    made once per document set, so that a re-curation embeds only the shards that are new."""
    from finescope_core.embed import minilm_embeddings, minilm_identity, write_embeddings

    def work(out: str) -> dict:
        table = storage.read_parquet(storage.join(docs["uri"], DOCS_FILE), ["doc_id", "text"])
        matrix = minilm_embeddings(table["text"].to_pylist(), device)
        write_embeddings(table["doc_id"].to_pylist(), matrix, storage.join(out, SENTENCES_FILE))
        return {"n_docs": len(table), "dim": int(matrix.shape[1])}

    return run_stage(root, "sentences", {"docs": docs, "embedder": minilm_identity(), **numerics(device)}, None,
                     work)


def middle_layer(layers: list[int]) -> int:
    """The captured layer the raw-activation baseline reads: the middle one of the dump's."""
    return layers[len(layers) // 2]


def _aligned(doc_ids: list[str], ids: list[str], matrix: np.ndarray) -> np.ndarray:
    """Rows of ``matrix`` (keyed by ``ids``) in the order of ``doc_ids``."""
    position = {doc_id: row for row, doc_id in enumerate(ids)}
    return matrix[[position[d] for d in doc_ids]]


def method_vectors(cfg: SelectConfig, pool_ids: list[str], seed_ids: list[str], refs: dict[str, Ref]):
    """Pool and seed vectors of the configured selection method (the SAE codes for hybrid), rows in the order of
    ``pool_ids`` and ``seed_ids``."""
    from finescope_core.embed import raw_activation_embeddings, read_embeddings, selection_vectors

    if cfg.method in ("sae", "hybrid"):
        pool = read_embeddings(storage.join(refs["pool_emb"]["uri"], EMBEDDINGS_FILE))
        seeds_ = read_embeddings(storage.join(refs["seed_emb"]["uri"], EMBEDDINGS_FILE))
        return selection_vectors(_aligned(pool_ids, pool.doc_ids, pool.matrix),
                                 _aligned(seed_ids, seeds_.doc_ids, seeds_.matrix), cfg.pooling, cfg.power,
                                 pool.blocks)
    if cfg.method == "raw_act":
        layer = middle_layer(refs["pool_acts"]["info"]["layers"])
        docs = _aligned(pool_ids, *raw_activation_embeddings(storage.join(refs["pool_acts"]["uri"], "pooled"), layer))
        seeds_ = _aligned(seed_ids, *raw_activation_embeddings(storage.join(refs["seed_acts"]["uri"], "pooled"), layer))
        return docs, seeds_
    if cfg.method == "minilm":
        return sentence_vectors(pool_ids, seed_ids, refs)
    rng = np.random.default_rng(cfg.seed)
    return rng.standard_normal((len(pool_ids), 64)), rng.standard_normal((len(seed_ids), 64))


def stored_vectors(ref: Ref, filename: str, ids: list[str]) -> np.ndarray:
    """The vectors a stage stored in its ``filename`` (SAE codes, sentence embeddings), rows in the order of
    ``ids``."""
    from finescope_core.embed import read_embeddings

    stored = read_embeddings(storage.join(ref["uri"], filename))
    return _aligned(ids, stored.doc_ids, stored.matrix)


def sentence_vectors(pool_ids: list[str], seed_ids: list[str], refs: dict[str, Ref]) -> tuple[np.ndarray, np.ndarray]:
    """The pool's and the seeds' sentence embeddings (``refs``' ``pool_sentences`` and ``seed_sentences``: a
    ``sentences`` stage, or a merged pool's), rows in the order of ``pool_ids`` and ``seed_ids``."""
    if "pool_sentences" not in refs or "seed_sentences" not in refs:
        raise ValueError("selection by a sentence embedder needs the pool's and the seeds' sentence embeddings "
                         "(stages.sentences) among its vectors")
    return (stored_vectors(refs["pool_sentences"], SENTENCES_FILE, pool_ids),
            stored_vectors(refs["seed_sentences"], SENTENCES_FILE, seed_ids))


def eval_texts(eval_uri: str | None) -> list[str]:
    """Every eval item and eval document text, for decontamination."""
    if not eval_uri or not storage.exists(eval_uri):
        return []
    fs, path = storage.filesystem(eval_uri)
    texts = []
    for file in sorted(fs.glob(path.rstrip("/") + "/*/*.parquet")):
        table = storage.read_parquet(storage.join(eval_uri, file[len(path.rstrip("/")) + 1 :]))
        if "context" in table.column_names:
            for context, choices in zip(table["context"].to_pylist(), table["choices"].to_pylist()):
                texts.append(context + " " + " ".join(choices))
        if "text" in table.column_names:
            texts.extend(table["text"].to_pylist())
    return texts


def _selection_scores(cfg: SelectConfig, docs: np.ndarray, seeds: np.ndarray,
                      embedder: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Every pool document's score under ``cfg``: the SAE codes' similarity to the seeds, with feedback; for hybrid,
    a weighted mean of that and the sentence embeddings' cosine (``embedder``: the pool's and the seeds' vectors)
    after both are standardised; then, where ``cfg.reranks``, the threshold applied and the best candidates
    re-ranked on their neighbour graph. The baselines score as they always have: plain max cosine (minilm, raw_act)
    or random."""
    from finescope_core.manifold import manifold_scores
    from finescope_core.select import graph_vectors, hybrid_scores, max_cosine, seed_scores

    if cfg.method == "random":
        return np.random.default_rng(cfg.seed).random(len(docs))
    if cfg.method not in ("sae", "hybrid"):
        return max_cosine(docs, seeds)
    scores = seed_scores(docs, seeds, cfg.similarity, cfg.feedback_docs)
    if cfg.method == "hybrid":
        scores = hybrid_scores(scores, max_cosine(*embedder), cfg.hybrid_weight)
    if not cfg.reranks:
        return scores
    if cfg.threshold is not None:
        scores = np.where(scores < cfg.threshold, -np.inf, scores)
    compared = graph_vectors(docs, embedder[0] if cfg.method == "hybrid" else None, cfg.hybrid_weight)
    return manifold_scores(scores, compared, cfg.budget * cfg.manifold_candidates, cfg.manifold_neighbours,
                           cfg.manifold_alpha)


def curated(root: str, pool_ref: Ref, seeds_ref: Ref, vectors_refs: dict[str, Ref], eval_ref: Ref | None,
            cfg: SelectConfig) -> Ref:
    """The top ``budget`` pool documents by their score against the seeds (``cfg.method``, ``cfg.similarity``),
    deduplicated and decontaminated against the eval sets of ``eval_ref`` (see :func:`eval_sets`)."""
    from finescope_core.ngrams import NgramIndex
    from finescope_core.select import select_top

    def work(out: str) -> dict:
        pool_table = storage.read_parquet(storage.join(pool_ref["uri"], DOCS_FILE))
        seed_table = storage.read_parquet(storage.join(seeds_ref["uri"], DOCS_FILE))
        pool_ids, seed_ids = pool_table["doc_id"].to_pylist(), seed_table["doc_id"].to_pylist()
        docs, seed_vectors = method_vectors(cfg, pool_ids, seed_ids, vectors_refs)
        embedder = sentence_vectors(pool_ids, seed_ids, vectors_refs) if cfg.method == "hybrid" else None
        scores = _selection_scores(cfg, docs, seed_vectors, embedder)
        index = NgramIndex(eval_texts(eval_ref["uri"] if eval_ref else None)) if cfg.decontaminate else None
        threshold = None if cfg.reranks else cfg.threshold  # a re-ranking applied it to the first pass
        chosen = select_top(scores, docs, pool_table["text"].to_pylist(), cfg.budget, threshold,
                            cfg.near_duplicate_cosine, index)
        table = pool_table.take(chosen.indices)
        table = table.append_column("score", pa.array(chosen.scores, pa.float32()))
        table = table.append_column("rank", pa.array(range(1, len(chosen.indices) + 1), pa.int32()))
        table = table.append_column("method", pa.array([cfg.method] * len(table)))
        storage.write_parquet(table, storage.join(out, CURATED_FILE))
        domains = table["domain"].to_pylist()
        return {"n_docs": len(table), "skipped": chosen.skipped, "method": cfg.method, "seeds": seeds_ref["info"],
                "domains": {d: domains.count(d) for d in sorted(set(filter(None, domains)))}}

    inputs = {"pool": pool_ref, "seeds": seeds_ref, "eval": eval_ref or "", **vectors_refs}
    return run_stage(root, "curated", inputs, cfg, work, ignore=frozenset({"seeds"}))  # the seeds ref holds them


def calibration_file(uri: str) -> tuple[Ref, str]:
    """A user's calibration Parquet file (a ``text`` column; curate's ``curated.parquet`` qualifies) as a reference
    and file name, checked before any model is loaded."""
    if not uri.endswith(".parquet") or not storage.exists(uri):
        raise FileNotFoundError(f"calibration={uri!r} is not an existing .parquet file; give one with a text column")
    try:
        table = storage.read_parquet(uri)
    except Exception as exc:  # pyarrow's and the filesystem's own errors
        raise ValueError(f"calibration={uri!r} is not a readable Parquet file ({str(exc)[:100]})") from None
    if "text" not in table.column_names or len(table) == 0:
        raise ValueError(f"calibration={uri!r} has no rows in a 'text' column; the pruner needs calibration text")
    if table["text"].null_count:
        raise ValueError(f"calibration={uri!r} has {table['text'].null_count} rows without text; drop them")
    folder, filename = uri.rsplit("/", 1) if "/" in uri else (".", uri)
    return {"uri": folder, "fingerprint": source_fingerprint(uri)}, filename


def calibration_texts(ref: Ref, filename: str, n: int, seed: int, sample: bool) -> list[str]:
    """Calibration documents in a seeded random order (the pruner reads them until it has its tokens): with
    ``sample`` (generic calibration) a sample of ``4 n`` of them, the pool being large; otherwise all of them."""
    texts = storage.read_parquet(storage.join(ref["uri"], filename), ["text"])["text"].to_pylist()
    order = np.random.default_rng(seed).permutation(len(texts))
    if sample:
        order = order[: n * 4]
    return [texts[i] for i in order]


def pruned(root: str, model: Ref, calibration: Ref, filename: str, cfg: PruneConfig, device: str) -> Ref:
    """The pruned model folder (stock transformers) and what was removed."""
    from finescope_core.prune import prune_model

    cfg = cfg.model_copy(update={"precision": resolve_precision(cfg.precision, device)})  # what the work depends on

    def work(out: str) -> dict:
        texts = calibration_texts(calibration, filename, cfg.calibration_samples, cfg.seed,
                                  sample=cfg.calibration == "generic")
        with storage.staged_directory(storage.join(out, "model")) as scratch:
            report = prune_model(model["uri"], texts, scratch, cfg, device)
            storage.write_json(str(scratch / "pruning.json"), report)
        return {k: v for k, v in report.items() if k != "layers"}

    inputs = {"model": model, "calibration": calibration, "file": filename, **numerics(device)}
    return with_model(run_stage(root, "pruned", inputs, cfg, work))


def with_model(ref: Ref) -> Ref:
    """A stage reference that also names the model folder the stage wrote under ``model/``."""
    return {**ref, "model_uri": storage.join(ref["uri"], "model")}


def model_folder(ref: Ref) -> Path:
    """A local copy of the model folder a reference names."""
    return storage.fetch_directory(ref["model_uri"])


def distilled(root: str, teacher: Ref, curated_ref: Ref, cfg: DistillConfig, device: str) -> Ref:
    """The curated documents, in their order, each answer rewritten by the unpruned teacher where the rewrite passes
    the filters (SDFT); documents without a prompt/response split, and rejected rewrites, keep their own text. Only
    the answers differ from the curated set, so training on either compares the targets and nothing else."""
    from finescope_core.distill import distill_documents

    def work(out: str) -> dict:
        rows = storage.read_parquet(storage.join(curated_ref["uri"], CURATED_FILE)).to_pylist()
        table, info = distill_documents(model_folder(teacher), rows, cfg, device)
        storage.write_parquet(pa.Table.from_pylist(table), storage.join(out, DISTILLED_FILE))
        return info

    return run_stage(root, "distilled", {"teacher": teacher, "curated": curated_ref, **numerics(device)}, cfg, work)


def recovered(root: str, pruned_ref: Ref, teacher: Ref, texts: Ref, filename: str, cfg: RecoverConfig,
              device: str) -> Ref:
    """The pruned model trained toward the unpruned teacher on the ``text`` column of ``texts``/``filename``
    (curated or distilled documents), saved as a plain transformers folder. Checkpoints live beside it under
    ``checkpoint/`` until it is done, so a retry on another worker resumes from object storage too."""
    from finescope_core.recover import recover

    distils = cfg.lm_weight < 1
    cfg = cfg.model_copy(update={"precision": resolve_precision(cfg.precision, device)})  # what the work depends on

    def work(out: str) -> dict:
        documents = storage.read_parquet(storage.join(texts["uri"], filename), ["text"])["text"].to_pylist()
        with storage.staged_directory(storage.join(out, "model")) as scratch:
            return recover(model_folder(pruned_ref), model_folder(teacher) if distils else None, documents,
                           scratch, cfg, storage.join(out, "checkpoint"), device)

    inputs = {"pruned": pruned_ref, "texts": texts, "file": filename, **({"teacher": teacher} if distils else {}),
              **numerics(device)}
    return with_model(run_stage(root, "recovered", inputs, cfg, work,
                                ignore=frozenset({"checkpoints", "teacher_cache_gb"})))  # the same model either way


def evaluation(root: str, model: Ref, eval_ref: Ref, domains: list[str], cfg: EvalConfig,
               model_cfg: ModelConfig) -> Ref:
    """Bits per byte, perplexity and cloze accuracy (with CIs) and parameter count of one model on the eval sets of
    ``eval_ref`` (see :func:`eval_sets`); the per-item and per-document scores stay in ``metrics.json`` (see
    :func:`eval_results`), the summary in the reference."""
    from finescope_core.evaluate import evaluate_model

    folder = model_folder(model)
    cfg = cfg.model_copy(update={"precision": resolve_precision(cfg.precision, model_cfg.device)})

    def work(out: str) -> dict:
        result = evaluate_model(folder, eval_ref["uri"], domains, cfg, model_cfg.device, model_cfg.dtype)
        storage.write_json(storage.join(out, METRICS_FILE), result)
        return {key: value for key, value in result.items() if key != "units"}

    inputs = {"model": model, "eval": eval_ref, **numerics(model_cfg.device, model_cfg.dtype)}
    return run_stage(root, "eval", inputs, {"cfg": cfg.model_dump(), "domains": domains}, work)


def eval_results(ref: Ref) -> dict:
    """An eval stage's whole output, per-unit scores included."""
    return storage.read_json(storage.join(ref["uri"], METRICS_FILE))


def speed(root: str, models: dict[str, Ref], model_cfg: ModelConfig) -> Ref:
    """Forward tokens/s of every model, timed alternately in one process (``speed.alternating_throughput``)."""
    from finescope_core.speed import alternating_throughput

    def work(out: str) -> dict:
        figures = alternating_throughput({label: model_folder(ref) for label, ref in models.items()},
                                         model_cfg.device, model_cfg.dtype)
        storage.write_json(storage.join(out, "speed.json"), figures)
        return figures

    return run_stage(root, "speed", models, {"device": model_cfg.device, "dtype": model_cfg.dtype}, work)


def report(root: str, results: dict[str, Ref], title: str, speed_ref: Ref | None = None,
           details: dict[str, dict] | None = None, domains: list[str] | None = None) -> Ref:
    """The evaluation report (JSON, Markdown, PNG) comparing every evaluated model, paired; ``domains`` in the
    report's order, the target first."""
    from finescope_core.report import write_report

    def work(out: str) -> dict:
        full = {label: eval_results(ref) for label, ref in results.items()}
        return write_report(full, out, title, speed_ref["info"] if speed_ref else None, details, domains)

    inputs = {**results, **({"speed": speed_ref} if speed_ref else {})}
    settings = {"title": title, "labels": list(results), "details": details, "domains": domains}
    return run_stage(root, "report", inputs, settings, work)


def sweep(root: str, results: dict[str, Ref], ratios: dict[str, float], domain: str, metric: str,
          keep: float) -> Ref:
    """The size/quality sweep's table and Pareto plot, and the smallest model that keeps ``keep`` of the base."""
    from finescope_core.sweep import write_sweep_report

    def work(out: str) -> dict:
        summaries = {label: ref["info"] for label, ref in results.items()}
        return write_sweep_report(summaries, ratios, domain, metric, keep, out)

    settings = {"ratios": ratios, "domain": domain, "metric": metric, "keep": keep}
    return run_stage(root, "sweep", results, settings, work)


def write_manifest(root: str, refs: dict[str, Ref | list[Ref]]) -> str:
    """``manifest.json`` at the run root: every artifact of the run with its files' content hashes (per-shard
    artifacts as ``name/0``, ``name/1``...)."""
    entries = {}
    named = [(name, value) if isinstance(value, dict) else (f"{name}/{i}", ref)
             for name, value in refs.items() for i, ref in enumerate([value] if isinstance(value, dict) else value)]
    for name, ref in named:
        marker = storage.read_marker(ref["uri"]) if storage.is_complete(ref["uri"]) else {}
        entries[name] = {"uri": ref["uri"], "fingerprint": ref["fingerprint"], "files": marker.get("files", {})}
    uri = storage.join(root, MANIFEST_FILE)
    storage.write_json(uri, {"artifacts": entries})
    return uri
