# The README's two commands. Each sets up .venv on first use (PyPI's torch build: ~5 GB, about a minute).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: bench test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[export,dev]"
	touch $(STAMP)

# Main job: export the default models (seeded weights) and time them against PyTorch on this machine.
bench: $(STAMP)
	$(BIN)/segrt bench --quick --json benchmarks/results/latest.json --markdown benchmarks/results/latest.md

# The test suite (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest -q
