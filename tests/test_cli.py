"""``finescope run``: bad input fails fast with one line naming the field, and writes nothing."""

import os
from pathlib import Path

import pytest

from finescope.cli import main


@pytest.fixture
def config(tmp_path: Path, repo: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text((repo / "configs" / "tiny.yaml").read_text().replace("seeds/", f"{repo}/seeds/"))
    return path


def run(config: Path, *overrides: str) -> int:
    return main(["run", str(config), *[arg for o in overrides for arg in ("--set", o)]])


def assert_one_line_error(capsys, *fragments: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("finescope: error:")
    for fragment in fragments:
        assert fragment in err


def test_misspelt_key(config: Path, tmp_path: Path, capsys):
    config.write_text(config.read_text().replace("budget:", "budgte:"))
    assert run(config, f"output={tmp_path / 'out'}") == 2
    assert_one_line_error(capsys, "select.budgte", "unknown key")
    assert not (tmp_path / "out").exists()


def test_missing_seeds_file(config: Path, tmp_path: Path, capsys):
    assert run(config, f"output={tmp_path / 'out'}", "select.seeds=/nonexistent/seeds.jsonl") == 2
    assert_one_line_error(capsys, "select.seeds", "does not exist")
    assert not (tmp_path / "out").exists()


def test_empty_seeds_file(config: Path, tmp_path: Path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n")
    assert run(config, f"output={tmp_path / 'out'}", f"select.seeds={tmp_path / 'empty.jsonl'}") == 2
    assert_one_line_error(capsys, "select.seeds", "empty")


def test_unknown_model(config: Path, tmp_path: Path, capsys):
    assert run(config, f"output={tmp_path / 'out'}", "model.name=gpt-17-ultra") == 2
    assert_one_line_error(capsys, "model.name", "gpt-17-ultra", "smollm2-135m-instruct")
    assert not (tmp_path / "out").exists()


def test_unwritable_output(config: Path, tmp_path: Path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert run(config, f"output={blocker / 'run'}") == 2
    assert_one_line_error(capsys, "output=", "not writable")
    assert blocker.read_text() == ""


def test_prune_names_a_bad_calibration_file_or_ratio(config: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main(["prune", "--config", str(config), "--out", str(out), "--calibration", "/nonexistent/c.parquet"]) == 2
    assert_one_line_error(capsys, "calibration=", "c.parquet")
    assert main(["prune", "--config", str(config), "--out", str(out), "--ratio", "1.5"]) == 2
    assert_one_line_error(capsys, "prune.ratio")
    assert not out.exists()


def test_a_failure_during_the_work_exits_1_with_one_line(config: Path, tmp_path: Path, monkeypatch, capsys):
    import finescope.flows.pipeline

    import finescope.reaper

    def fail(config):
        raise RuntimeError("the disk is full")

    for name in ("PREFECT_LOGGING_EXTRA_LOGGERS", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                 "PREFECT_LOCAL_STORAGE_PATH"):  # set by the CLI for its flow: restored after this test
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setattr(finescope.reaper, "start", lambda: None)
    monkeypatch.setattr(finescope.flows.pipeline, "finescope", fail)
    assert run(config, f"output={tmp_path / 'out'}") == 1
    assert capsys.readouterr().err.strip() == "finescope: failed: RuntimeError: the disk is full"
