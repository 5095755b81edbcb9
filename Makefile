# Two commands on a fresh machine: `make run` and `make test`. Everything offline.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
CONFIG ?= configs/default.yaml

.PHONY: install run test test-quick test-deps bench clean

# torch first, pinned, so no dependency pulls a multi-GB CUDA build on a CPU machine.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/chatrlhf run --config $(CONFIG)

# The whole suite, end-to-end (slow) tests included. As root, test-deps first installs and starts
# what the browser and PostgreSQL tests need (Debian packages) and fails if it cannot.
test: install test-deps
	$(BIN)/python -m pytest -q -m ""

test-deps:
	.ci/setup-test-deps

# The edit-test loop: no setup, no slow tests (what a bare `pytest` runs).
test-quick: install
	$(BIN)/python -m pytest -q

# Each peer (TRL) runs in its own venv that the benchmark script builds, so .venv keeps its pins.
bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf runs .pytest_cache
