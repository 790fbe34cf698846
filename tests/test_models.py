from pathlib import Path

import pytest

from finescope_core import models


def test_unknown_name_lists_the_registry():
    with pytest.raises(models.ModelNotFoundError, match="smollm2-135m-instruct"):
        models.resolve("no-such-model")


def test_hub_id_without_a_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotFoundError, match="not downloadable"):
        models.resolve("some-org/some-model-that-is-not-cached")


def test_local_folder_must_be_a_model(tmp_path: Path):
    with pytest.raises(models.ModelNotFoundError, match=r"config\.json"):
        models.resolve(str(tmp_path))


def test_local_folder_resolves_to_itself(tiny_model: Path):
    assert models.resolve(str(tiny_model)) == tiny_model


def test_registry_conversion_is_atomic(tmp_path: Path, monkeypatch):
    def crash(out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("killed during conversion")

    monkeypatch.setitem(models.REGISTRY, "crashy", crash)
    with pytest.raises(RuntimeError):
        models.resolve("crashy", cache_dir=tmp_path)
    assert not (tmp_path / "models" / "crashy").exists()


def test_model_folder_without_weights(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weights"):
        models.load_model(tmp_path)


@pytest.mark.integration
def test_smollm2_is_the_real_model(smollm2: Path):
    import torch

    model = models.load_model(smollm2)
    tokenizer = models.load_tokenizer(smollm2)
    assert models.count_parameters(model) == 134_515_008
    assert model.config.num_key_value_heads == 3 and model.config.num_attention_heads == 9
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])
