from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from finescope_core import storage
from finescope_core.activations import dump_activations, layer_rows, resolve_layers, shard_uris, vectors
from finescope_core.config import DumpConfig
from finescope_core.models import load_model, load_tokenizer

TEXTS = [
    "The patient was given aspirin for chest pain.",
    "def add(a, b):\n    return a + b",
    "Solve for x: 2x + 3 = 7, so x = 2.",
    "The mitochondria is the powerhouse of the cell, producing ATP.",
    "A short one.",
]
IDS = [f"doc-{i}" for i in range(len(TEXTS))]


def test_dump_matches_a_plain_forward_pass(tiny_model: Path, tmp_path: Path):
    out = str(tmp_path / "acts")
    manifest = dump_activations(tiny_model, IDS, TEXTS, out, DumpConfig(layers=[0, 1], batch_size=2, shard_docs=2,
                                                                     dtype="float32", sae_sample_tokens=10))
    assert manifest["layers"] == [0, 1] and manifest["n_shards"] == 3
    tokens = storage.read_parquet_dir(storage.join(out, "tokens"))
    model, tokenizer = load_model(tiny_model), load_tokenizer(tiny_model)
    ids = tokenizer(TEXTS[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0].numpy()  # output of layer 0
    layer0 = layer_rows(tokens, 0)
    rows = layer0.filter(pc.equal(layer0["doc_id"], "doc-0"))
    np.testing.assert_allclose(vectors(rows), hidden[1:], atol=1e-4)  # the attention-sink token is not kept
    assert rows["position"].to_pylist() == list(range(1, ids.shape[1]))
    pooled = storage.read_parquet_dir(storage.join(out, "pooled"))
    assert len(pooled) == len(TEXTS) * 2
    sample = storage.read_parquet_dir(storage.join(out, "sample"))
    assert 0 < len(sample) < len(tokens)


def test_float16_storage_keeps_values_beyond_its_range(tiny_model: Path, tmp_path: Path):
    """A shard whose activations pass float16's range (as Gemma 3's massive ones do) is stored in float32, exactly;
    one within it is stored in float16."""
    loud = tmp_path / "loud"
    model = load_model(tiny_model)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1e6 / model.get_input_embeddings().weight.abs().max())
    model.save_pretrained(loud)
    load_tokenizer(tiny_model).save_pretrained(loud)
    for folder, value_type in ((loud, pa.float32()), (tiny_model, pa.float16())):
        out = str(tmp_path / f"acts-{folder.name}")
        dump_activations(folder, IDS[:2], TEXTS[:2], out, DumpConfig(layers=[0], shard_docs=2, sae_sample_tokens=10))
        tokens = storage.read_parquet_dir(storage.join(out, "tokens"))
        assert tokens["act"].type.value_type == value_type
        assert np.isfinite(vectors(tokens)).all()
    assert np.abs(vectors(tokens)).max() < 100 < 65504 < np.abs(vectors(storage.read_parquet_dir(
        storage.join(str(tmp_path / "acts-loud"), "tokens")))).max()


def test_rerun_skips_complete_shards(tiny_model: Path, tmp_path: Path):
    out = str(tmp_path / "acts")
    cfg = DumpConfig(batch_size=2, shard_docs=2)
    dump_activations(tiny_model, IDS, TEXTS, out, cfg)
    kept = shard_uris(out, 0)["tokens"]
    before = Path(kept).stat().st_mtime_ns
    Path(shard_uris(out, 1)["sample"]).unlink()
    manifest = dump_activations(tiny_model, IDS, TEXTS, out, cfg)
    assert manifest["shards_reused"] == 2
    assert Path(kept).stat().st_mtime_ns == before
    assert Path(shard_uris(out, 1)["sample"]).exists()


@pytest.mark.parametrize(
    ("ids", "texts", "cfg", "message"),
    [
        ([], [], DumpConfig(), "pool is empty"),
        (["a"], [""], DumpConfig(), "tokenise to nothing"),
        (["a"], ["text"], DumpConfig(layers=[7]), r"dump.layers: layer 7 is out of range"),
        (["a", "a"], ["x y", "y z"], DumpConfig(), "unique"),
    ],
)
def test_bad_input(tiny_model: Path, tmp_path: Path, ids, texts, cfg, message):
    with pytest.raises(ValueError, match=message):
        dump_activations(tiny_model, ids, texts, str(tmp_path / "acts"), cfg)


@pytest.mark.parametrize(("n_layers", "layers"), [(30, [8, 15, 22]), (18, [4, 9, 14]), (2, [0, 1]), (1, [0])])
def test_the_default_layers_are_a_quarter_half_and_three_quarters_of_the_depth(n_layers: int, layers: list[int]):
    assert resolve_layers(None, n_layers) == layers
