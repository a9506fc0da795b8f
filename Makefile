# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create .venv and install everything with torch pinned to the local CPU wheel first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint clean

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

test: lint
	$(BIN)/pytest -q -ra

clean:
	rm -rf $(VENV) mergesweep.db*
