# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create .venv and install everything with torch pinned to the local CPU wheel first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow lint clean

$(BIN)/mergesweep: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	touch $(BIN)/mergesweep

install: $(BIN)/mergesweep

demo: install
	$(BIN)/mergesweep demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The default run (~10 min on 2 cores): everything but the tests that build the text/lm zoos.
test: lint
	$(BIN)/pytest -q -ra -m "not slow"

# Builds the text and lm zoos (~12 min on 2 cores, cached) and runs a short sweep on each.
test-slow: install
	$(BIN)/pytest -q -ra -m slow

clean:
	rm -rf $(VENV) mergesweep.db*
