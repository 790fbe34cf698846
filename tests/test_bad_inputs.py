"""Bad input stops the CLI before any work: exit status 2, one line naming the field or file and the fix, no
traceback, and nothing written to the output."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from finescope.cli import main
from finescope_core import storage

Case = Callable[[Path, Path], list[str]]  # (folder for inputs, config) -> CLI arguments


def docs(*texts: str | None, ids: list[str | None] | None = None) -> pa.Table:
    ids = ids or [f"d{i}" for i in range(len(texts))]
    return pa.table({"doc_id": pa.array(ids, pa.string()), "text": pa.array(list(texts), pa.string())})


def pool_of(folder: Path, *tables: pa.Table) -> str:
    for index, table in enumerate(tables):
        storage.write_parquet(table, str(folder / "pool" / f"shard-{index}.parquet"))
    return str(folder / "pool")


def eval_sets(folder: Path, *domains: str) -> str:
    for domain in domains:
        storage.write_parquet(docs("a held-out text"), str(folder / "eval" / domain / "text.parquet"))
    return str(folder / "eval")


def seeds_file(folder: Path, content: bytes) -> str:
    path = folder / "seeds.jsonl"
    path.write_bytes(content)
    return str(path)


def model_folder(folder: Path, settings: dict | None) -> str:
    path = folder / "model"
    path.mkdir()
    if settings is not None:
        (path / "config.json").write_text(json.dumps(settings))
    return str(path)


def run(*sets: str) -> Case:
    return lambda folder, config: ["run", str(config), *[arg for s in sets for arg in ("--set", s)]]


def with_pool(*tables: pa.Table, budget: int = 1, eval_domains: tuple[str, ...] = ("medicine",)) -> Case:
    def case(folder: Path, config: Path) -> list[str]:
        return run(f"data.pool={pool_of(folder, *tables)}", f"data.eval_sets={eval_sets(folder, *eval_domains)}",
                   f"select.budget={budget}")(folder, config)

    return case


def with_seeds(content: bytes) -> Case:
    return lambda folder, config: run(f"select.seeds={seeds_file(folder, content)}")(folder, config)


def with_model(settings: dict | None) -> Case:
    return lambda folder, config: run(f"model.name={model_folder(folder, settings)}")(folder, config)


def with_config_text(text: str) -> Case:
    def case(folder: Path, config: Path) -> list[str]:
        config.write_text(text)
        return ["run", str(config)]

    return case


def empty_data_section(folder: Path, config: Path) -> list[str]:
    """A config whose ``data:`` section has every child commented out (YAML reads it as null)."""
    seeds = next(line for line in config.read_text().splitlines() if "seeds:" in line)
    config.write_text(f"output: {folder / 'out'}\nselect:\n{seeds}\ndata:\n#  pool: somewhere\n")
    return ["curate", "--config", str(config), "--pool", "/nonexistent/pool"]


def with_calibration(table: pa.Table | bytes) -> Case:
    def case(folder: Path, config: Path) -> list[str]:
        path = folder / "calibration.parquet"
        path.write_bytes(table) if isinstance(table, bytes) else storage.write_parquet(table, str(path))
        return ["prune", "--config", str(config), "--calibration", str(path)]

    return case


GOOD = docs("a note on insulin", "a note on sepsis")


def corrupt_pool(folder: Path, config: Path) -> list[str]:
    args = with_pool(GOOD)(folder, config)
    (folder / "pool" / "shard-9.parquet").write_bytes(b"PAR1 not parquet")
    return args


CASES: dict[str, tuple[Case, str]] = {
    # the config file and --set
    "missing config file": (lambda f, c: ["run", str(f / "none.yaml")], "does not exist"),
    "config not YAML": (with_config_text("select: [budget"), "not valid YAML"),
    "config a list": (with_config_text("- a\n- b\n"), "must be a mapping"),
    "empty section and a missing pool": (empty_data_section, "data.pool='/nonexistent/pool' does not exist"),
    "misspelt key": (run("select.budgte=3"), "select.budgte: unknown key"),
    "unknown section": (run("selection.budget=3"), "selection: unknown key"),
    "budget not a number": (run("select.budget=many"), "select.budget"),
    "budget zero": (run("select.budget=0"), "select.budget"),
    "ratio above 0.9": (run("prune.ratio=1.5"), "prune.ratio"),
    "threshold above 1": (run("select.threshold=2"), "select.threshold"),
    "power zero": (run("select.power=0"), "select.power"),
    "unknown dtype": (run("model.dtype=float64"), "model.dtype"),
    "unknown pooling": (run("select.pooling=sum"), "select.pooling"),
    "jaccard on embedder vectors": (run("select.method=minilm", "select.similarity=jaccard"),
                                    "select.similarity='jaccard' compares non-negative SAE codes"),
    "sweep ratio of 1": (run("sweep.ratios=[1.0]"), "sweep.ratios"),
    "--set without =": (lambda f, c: ["run", str(c), "--set", "select.budget"], "expected key=value"),
    "--set bad YAML": (run("eval_domains=[medicine"), "--set 'eval_domains=[medicine'"),
    "--set into a setting": (run("output.path=x"), "output is a setting"),
    "coordinates without sensitivity": (run("sae.input_coordinates=8"), "dump.sensitivity_docs"),
    # seeds
    "seeds missing": (run("select.seeds=/nonexistent/seeds.jsonl"), "select.seeds"),
    "seeds empty": (with_seeds(b"\n"), "is empty"),
    "seeds line not JSON": (with_seeds(b'{"text": "a"}\nnot json\n'), "line 2 is not JSON"),
    "seeds line an array": (with_seeds(b'["a", "b"]\n'), "line 1 is a JSON list"),
    "seeds without text": (with_seeds(b'{"title": "a"}\n'), "line 1 has no text"),
    "seeds in Latin-1": (with_seeds('{"text": "caf\u00e9"}\n'.encode("latin-1")), "not UTF-8"),
    # the model
    "unknown model": (run("model.name=no-such-model"), "model.name='no-such-model' is unknown"),
    "model path typo": (run("model.name=./modles/smollm2"), "no such folder"),
    "model folder without config": (with_model(None), "no config.json"),
    "unsupported architecture": (with_model({"architectures": ["GPT2LMHeadModel"]}), "pruning supports"),
    "layer out of range": (run("dump.layers=[99]"), "dump.layers"),
    "CUDA on a CPU-only torch": (run("model.device=cuda"), "model.device='cuda'"),
    "not a device": (run("model.device=tpu"), "not a torch device"),
    # the pool
    "pool missing": (run("data.pool=/nonexistent/pool", "data.eval_sets=/nonexistent/eval"), "data.pool"),
    "pool without shards": (lambda f, c: run(f"data.pool={f}", f"data.eval_sets={eval_sets(f, 'medicine')}")(f, c),
                            "holds no Parquet shards"),
    "pool without text column": (with_pool(pa.table({"doc_id": ["a"], "body": ["x"]})), "no 'text' column"),
    "pool without doc_id column": (with_pool(pa.table({"text": ["x"]})), "no 'doc_id' column"),
    "pool text not text": (with_pool(pa.table({"doc_id": ["a"], "text": [3]})), "not text"),
    "pool null texts": (with_pool(docs("a", None, "c")), "1 documents without text"),
    "pool null doc_ids": (with_pool(docs("a", "b", ids=["a", None])), "without a doc_id"),
    "pool duplicate doc_ids": (with_pool(GOOD, docs("c", ids=["d1"])), "doc_id 'd1' appears twice"),
    "pool corrupt shard": (corrupt_pool, "not a readable Parquet file"),
    "budget above the pool": (with_pool(GOOD, budget=3), "select.budget=3 is more than the pool's 2"),
    "budget above max_pool_docs": (run("data.max_pool_docs=5", "select.budget=6"), "data.max_pool_docs=5"),
    # eval sets
    "pool without eval sets": (lambda f, c: run(f"data.pool={pool_of(f, GOOD)}")(f, c), "data.eval_sets is required"),
    "eval set missing for a domain": (with_pool(GOOD, eval_domains=("general",)), "no eval set for 'medicine'"),
    "eval domain the demo lacks": (run("eval_domains=[medicine, law]"), "['law']"),
    "eval sets missing": (run("data.eval_sets=/nonexistent/eval"), "data.eval_sets"),
    # calibration for prune
    "calibration without text": (with_calibration(pa.table({"body": ["x"]})), "'text' column"),
    "calibration null text": (with_calibration(docs("a", None)), "rows without text"),
    "calibration corrupt": (with_calibration(b"PAR1 broken"), "not a readable Parquet file"),
    "prune ratio out of range": (lambda f, c: ["prune", "--config", str(c), "--ratio", "2"], "prune.ratio"),
}


@pytest.fixture
def config(tmp_path: Path, repo: Path, tiny_model: Path) -> Path:
    """The tiny config writing under ``tmp_path``; its model is already converted into the cache, since a first
    conversion prints its progress before pre-flight can read the model's layers."""
    path = tmp_path / "run.yaml"
    text = (repo / "configs" / "tiny.yaml").read_text().replace("seeds/", f"{repo}/seeds/")
    path.write_text(text.replace("output: runs/tiny", f"output: {tmp_path / 'out'}"))
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_stops_before_any_work(name: str, config: Path, tmp_path: Path, capsys):
    case, fragment = CASES[name]
    folder = tmp_path / "inputs"
    folder.mkdir()
    args = case(folder, config)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("finescope: error:"), err
    assert fragment in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_the_built_in_config_serves_a_first_try_from_any_folder(tmp_path: Path, monkeypatch, capsys):
    """Outside the repository, curate and prune read the built-in config and seeds: here the run gets as far as
    the model (a typo), past the config file and the seeds."""
    monkeypatch.chdir(tmp_path)
    assert main(["curate", "--out", str(tmp_path / "out"), "--set", "model.name=no-such-model"]) == 2
    assert "model.name='no-such-model' is unknown" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_object_store_without_credentials_is_one_line(config: Path, monkeypatch, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    assert main(["curate", "--config", str(config), "--pool", "s3://finescope-no-such-bucket/pool"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.pool='s3://finescope-no-such-bucket/pool' cannot be read" in err
    assert not (config.parent / "out").exists()
