"""Every config field is part of the ids of exactly the stages whose output it changes.

The pipeline and sweep flows run with their tasks called directly and every stage's work skipped; each stage's own
identity (its id with its input artifacts' ids left out) is recorded. Each config field is then changed in turn:
the stages whose own identity changes must be the ones the table below names. A new field fails this test until
it is entered in the table, so that no field can be left out of the ids by oversight. (The flows run on the demo
corpus and on a pool curated whole; a pool curated shard by shard goes through the same stage functions.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import types
import typing
from pathlib import Path

import finescope.flows.curate
import finescope.flows.pipeline
import finescope.flows.prune
import finescope.flows.sweep
import finescope.tasks.stages
import pyarrow as pa
import pytest
from prefect import Flow, Task
from pydantic import BaseModel

from finescope_core import stages, storage
from finescope_core.addressing import STAGE_VERSIONS, stage_fingerprint
from finescope_core.config import RunConfig
from finescope_core.precision import resolve_precision

RUN = ("corpus pool seeds acts sae embeddings sentences curated pruned distilled recovered eval speed report "
       "sweep").split()
# run on the device
NUMERICS = {"acts", "sae", "embeddings", "sentences", "pruned", "distilled", "recovered", "eval", "speed"}

# The stages whose own settings each field is part of (an empty set: a field that changes no stage's output, or
# one that names an input, whose id the stages then hold).
AFFECTS: dict[str, set[str]] = {
    "output": set(), "domain": {"eval", "report", "sweep"},  # the target domain is always evaluated
    "eval_domains": {"eval", "report"},
    "model.name": {"model", "report"},  # the report's title names it
    "model.device": NUMERICS, "model.dtype": {"acts", "eval", "speed"},
    "data.pool": {"corpus", "eval_sets", "curated", "eval"},  # a pool given without eval sets has none
    "data.eval_sets": {"eval_sets"}, "data.incremental": set(),
    "data.dataset": {"imported", "corpus", "eval_sets", "curated", "eval"},  # as a pool, written as one
    "data.text": set(), "data.id_column": set(), "data.split": set(),  # read only with data.dataset
    "data.eval_datasets": {"imported_eval", "eval_sets"},  # instead of the demo's eval sets
    "data.max_pool_docs": {"pool"},
    **{f"data.demo.{name}": {"corpus"} for name in (
        "domains", "docs_per_domain", "eval_mc_per_domain", "eval_text_per_domain", "max_chars", "shard_docs", "seed")},
    **{f"dump.{name}": {"acts"} for name in (
        "layers", "max_tokens", "batch_size", "shard_docs", "dtype", "sae_sample_tokens", "sensitivity_docs",
        "sensitivity_probes", "seed")},
    **{f"sae.{name}": {"sae"} for name in (
        "architecture", "expansion", "k", "l1_coefficient", "lr", "batch_size", "training_tokens",
        "input_coordinates", "seed")},
    "sae.refit_drift": set(),  # whether an incremental run refits, not what a fit makes
    "select.seeds": {"seeds"}, "select.pooling": {"curated"},  # changed to mean, which the embeddings share
    "select.method": {"curated", "sentences"},  # to sae: no sentence embeddings made
    **{f"select.{name}": {"curated"} for name in (
        "budget", "threshold", "power", "hybrid_weight", "similarity", "feedback_docs", "manifold_alpha",
        "manifold_neighbours", "manifold_candidates", "near_duplicate_cosine", "decontaminate", "seed")},
    **{f"prune.{name}": {"pruned"} for name in (
        "ratio", "ratio_of", "importance", "reconstruct", "refit_target", "error_scale", "refine_steps",
        "refine_relative_lr", "precision", "calibration_samples", "calibration_tokens", "prune_heads", "width_multiple",
        "seed")},
    "prune.calibration": {"curated", "pruned"},  # curated_first_pass makes a second selection
    "prune.calibration_breadth": {"curated", "pruned"},  # a selection at a larger budget
    **{f"distill.{name}": {"distilled"} for name in ("max_examples", "max_new_tokens", "generation_batch")},
    "recover.targets": {"recovered", "distilled", "report"},  # to curated: no rewrites made or reported
    "recover.checkpoints": set(),  # how often to save, not what is trained
    "recover.teacher_cache_gb": set(),  # whether the teacher's states are kept or computed again, not what is trained
    **{f"recover.{name}": {"recovered"} for name in (
        "tokens", "lm_weight", "temperature", "method", "lora_rank", "lr", "warmup", "grad_clip", "sequence_tokens",
        "batch_sequences", "precision", "seed")},
    **{f"eval.{name}": {"eval"} for name in (
        "mc_items", "ppl_docs", "max_tokens", "mc_max_tokens", "bootstrap", "batch_size", "precision",
        "harness_tasks", "harness_limit")},
    "sweep.ratios": {"pruned", "recovered", "eval", "sweep"}, "sweep.metric": {"sweep"}, "sweep.keep": {"sweep"},
    "runner.kind": set(), "runner.address": set(), "runner.workers": set(),
}


class Info(dict):
    """A stage's summary as the flows and tasks read it: every figure 0 but its document count, set by the stub
    to one that holds any budget (the pruner's calibration selection is capped at the pool's)."""

    def __missing__(self, key: str) -> int:
        return 0


class Direct:
    """A Prefect task called as a plain function (``submit`` included)."""

    def __init__(self, task: Task):
        self.fn = task.fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def submit(self, *args, **kwargs):
        value = self.fn(*args, **kwargs)
        return types.SimpleNamespace(result=lambda: value)


@pytest.fixture
def recorded(monkeypatch, tmp_path: Path):
    """Run the flows without Prefect or work; returns a function from config to each stage's own identities."""
    calls: list[tuple[str, str]] = []

    def run_stage(root, name, inputs, config, work, ignore=frozenset()):
        fingerprint = stage_fingerprint(name, inputs, config, ignore)
        settings = {key: value for key, value in inputs.items() if not isinstance(value, dict)}  # dicts: artifacts
        calls.append((name, stage_fingerprint(name, settings, config, ignore)))
        uri = Path(root, name, fingerprint)
        (uri / "eval").mkdir(parents=True, exist_ok=True)  # the demo corpus's eval sets
        if name == "imported":  # a dataset's shards: the pool that the stages after it read
            work(str(uri))
        return {"uri": str(uri), "fingerprint": fingerprint, "info": Info(layers=[1], n_docs=10**6)}

    def model_ref(cfg):
        calls.append(("model", storage.fingerprint(cfg.name)))
        return {"uri": "m", "model_uri": "m", "fingerprint": storage.fingerprint(cfg.name), "name": cfg.name}

    def corpus(root, cfg):
        ref = real_corpus(root, cfg)
        calls.append(("eval_sets", (ref["eval_sets"] or {}).get("fingerprint", "")))
        if cfg.pool:
            calls.append(("corpus", ref["fingerprint"]))
        return ref

    real_corpus = stages.corpus
    monkeypatch.setattr(stages, "run_stage", run_stage)
    monkeypatch.setattr(stages, "model_ref", model_ref)
    monkeypatch.setattr(stages, "corpus", corpus)
    monkeypatch.setattr(finescope.tasks.stages, "get_run_logger", lambda: logging.getLogger("test"))
    for module in (finescope.flows.curate, finescope.flows.pipeline, finescope.flows.prune, finescope.flows.sweep):
        for name, value in vars(module).items():
            if isinstance(value, Task):
                monkeypatch.setattr(module, name, Direct(value))
            elif isinstance(value, Flow):
                monkeypatch.setattr(module, name, value.fn)
    monkeypatch.setattr(finescope.flows.pipeline, "publish_report",
                        lambda *args, **kwargs: stages.report(*args[:6]))  # the models' places: artifacts only
    monkeypatch.setattr(finescope.flows.pipeline, "record_manifest", lambda root, refs: "")
    monkeypatch.setattr(finescope.flows.sweep, "publish_sweep", stages.sweep)

    def identities(config: RunConfig) -> dict[str, list[str]]:
        calls.clear()
        finescope.flows.pipeline.finescope(config)  # the flows, now plain functions
        finescope.flows.sweep.sweep(config)
        out: dict[str, list[str]] = {}
        for name, identity in calls:
            out.setdefault(name, []).append(identity)
        return out

    return identities


def fields(model: BaseModel, prefix: str = "") -> list[str]:
    out = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        out += fields(value, f"{prefix}{name}.") if isinstance(value, BaseModel) else [f"{prefix}{name}"]
    return out


def changed_value(config: RunConfig, path: str, inputs: dict[str, str]):
    """A valid value other than the field's current one."""
    if path in inputs:
        return inputs[path]
    *parents, name = path.split(".")
    owner = config
    for parent in parents:
        owner = getattr(owner, parent)
    value, annotation = getattr(owner, name), type(owner).model_fields[name].annotation
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kind = next(k for k in typing.get_args(annotation) if k is not type(None)) if optional else annotation
    if typing.get_origin(kind) is typing.Literal:
        return next(choice for choice in typing.get_args(kind) if choice != value)
    if kind is bool:
        return not value
    if kind is int:
        return 1 if value is None else value + 1
    if kind is float:
        return 0.5 if value is None else value / 2
    raise AssertionError(f"give {path} a changed value in the test's inputs")


def with_field(model: BaseModel, path: list[str], value) -> BaseModel:
    """``model`` with the field at ``path`` set to ``value`` (validated)."""
    if len(path) == 1:
        return type(model).model_validate({**model.model_dump(), path[0]: value})
    return model.model_copy(update={path[0]: with_field(getattr(model, path[0]), path[1:], value)})


def test_each_config_field_is_in_the_ids_of_the_stages_it_changes(recorded, repo: Path, tmp_path: Path):
    pool, eval_sets = tmp_path / "pool", tmp_path / "eval"
    storage.write_parquet(pa.Table.from_pylist([{"doc_id": "a", "text": "a note"}]), str(pool / "s.parquet"))
    storage.write_parquet(pa.Table.from_pylist([{"doc_id": "e", "text": "held out"}]),
                          str(eval_sets / "medicine" / "text.parquet"))
    (tmp_path / "dataset.jsonl").write_text('{"text": "a note from a dataset"}\n')
    base = RunConfig.model_validate({
        "output": str(tmp_path / "run"), "data": {"incremental": False},
        "select": {"seeds": str(repo / "seeds" / "medicine.jsonl")}, "recover": {"targets": "self_distilled"}})
    inputs = {
        "output": str(tmp_path / "elsewhere"), "domain": "math", "eval_domains": ["medicine"],
        "model.name": "tiny-random-llama", "model.device": "cuda", "data.pool": str(pool),
        "data.dataset": str(tmp_path / "dataset.jsonl"), "data.text": "{title}", "data.id_column": "id",
        "data.split": "test", "data.eval_sets": str(eval_sets),
        "data.eval_datasets": [{"domain": "medicine", "dataset": str(tmp_path / "dataset.jsonl"), "text": "text"}],
        "data.demo.domains": ["medicine", "general"],
        "dump.layers": [1],
        "select.seeds": str(repo / "seeds" / "math.jsonl"), "eval.harness_tasks": ["arc_easy"],
        "sweep.ratios": [0.2], "runner.address": "tcp://127.0.0.1:8786", "prune.calibration_breadth": 2.0,
        # "auto" resolves by the machine: the other explicit arithmetic is a change on every machine
        **{f"{stage}.precision": "float32" if resolve_precision("auto", "cpu") == "bfloat16" else "bfloat16"
           for stage in ("prune", "recover")}}
    assert set(fields(base)) == set(AFFECTS), "enter each new config field in AFFECTS"

    before = recorded(base)
    assert set(before) == {"model", "eval_sets", *RUN}
    wrong = {}
    for path in fields(base):
        after = recorded(with_field(base, path.split("."), changed_value(base, path, inputs)))
        changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
        if changed != AFFECTS[path]:
            wrong[path] = {"changes": sorted(changed), "declared": sorted(AFFECTS[path])}
    assert not wrong, "\n".join(f"{k}: {v}" for k, v in wrong.items())


def defaults_digest(stage: str) -> str:
    """A digest of the default values of the config fields that are part of ``stage``'s id."""
    config, defaults = RunConfig(), {}
    for path in sorted(path for path, affected in AFFECTS.items() if stage in affected):
        value = config
        for name in path.split("."):
            value = getattr(value, name)
        defaults[path] = value
    return hashlib.sha256(json.dumps(defaults, sort_keys=True, default=str).encode()).hexdigest()[:12]


# Each stage's version and the digest of its defaults at that version. Ids hold only the settings that differ from
# their defaults, so that a new setting leaves finished work valid; so a changed default changes what a stage makes
# under the same id, and must come with a new version of the stage.
VERSIONED_DEFAULTS: dict[str, tuple[int, str]] = {
    "corpus": (1, "ea287ae55247"), "pool": (1, "73ab6a7a391f"), "seeds": (1, "980f073f7115"),
    "acts": (3, "a2a8ce972f6e"), "sae": (4, "1bc442fa8592"), "embeddings": (2, "a458261575d5"),
    "sentences": (1, "cbe8200e646f"), "curated": (9, "57195558a945"), "pruned": (19, "b029023d7e1b"),
    "distilled": (2, "598f1f69a811"), "recovered": (3, "72c3647db395"), "eval": (2, "d1c501043055"),
    "speed": (1, "a7e3970dff56"), "report": (2, "2dbc006ba976"), "merged": (2, "44136fa355b3"),
    "imported": (1, "4cd73564abca"), "imported_eval": (1, "438d29bd1b2d"), "sweep": (1, "b27bf8a08426"),
}


def test_a_changed_default_comes_with_a_new_stage_version():
    current = {stage: (version, defaults_digest(stage)) for stage, version in STAGE_VERSIONS.items()}
    stale = sorted(stage for stage, (version, digest) in current.items()
                   if stage in VERSIONED_DEFAULTS and VERSIONED_DEFAULTS[stage] != (version, digest)
                   and VERSIONED_DEFAULTS[stage][0] == version)
    assert not stale, f"the defaults of {stale} changed: bump their STAGE_VERSIONS (then update VERSIONED_DEFAULTS)"
    assert current == VERSIONED_DEFAULTS, f"a stage's version changed or is new; VERSIONED_DEFAULTS = {current}"
