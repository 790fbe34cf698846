from pathlib import Path

import pytest

from finescope_core.config import ConfigError, RunConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_are_valid(repo: Path):
    for name in ("demo.yaml", "tiny.yaml"):
        assert isinstance(load_config(repo / "configs" / name), RunConfig)


def test_misspelt_key_names_the_field(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"select\.budgte: unknown key"):
        load_config(write(tmp_path, "select:\n  budgte: 10\n"))


def test_out_of_range_value_names_the_field(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"prune\.ratio"):
        load_config(write(tmp_path, "prune:\n  ratio: 0.95\n"))


def test_overrides_apply_and_are_validated(tmp_path: Path):
    config = load_config(write(tmp_path, "select:\n  budget: 10\n"), {"select.budget": 7, "output": "x"})
    assert config.select.budget == 7 and config.output == "x"
    with pytest.raises(ConfigError, match=r"dump\.nope"):
        load_config(write(tmp_path, "{}"), {"dump.nope": 1})


def test_target_domain_is_always_evaluated():
    config = RunConfig(domain="math", eval_domains=["general"])
    assert config.eval_domains[0] == "math"


def test_sae_coordinates_need_sensitivity_scores(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"dump\.sensitivity_docs > 0"):
        load_config(write(tmp_path, "sae:\n  input_coordinates: 128\n"))
    config = load_config(write(tmp_path, "sae:\n  input_coordinates: 128\ndump:\n  sensitivity_docs: 32\n"))
    assert config.sae.input_coordinates == 128


def test_readme_config_reference_is_current(repo: Path):
    from finescope_core.config import reference_table

    assert reference_table() in (repo / "README.md").read_text(), (
        "README's config reference is stale: replace its rows with "
        "python -c 'from finescope_core.config import reference_table; print(reference_table())'")
