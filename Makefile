# The two commands: `make run` and `make test`. Each builds what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config.example.yaml

.PHONY: run test lint bench screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/flowforged -c $(CONFIG) run

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check flowforged plugins tests bench
	$(BIN)/ruff format --check flowforged plugins tests bench

bench: $(VENV)/.installed-test
	$(BIN)/python bench/all.py

# PNGs of the web board (board, pipeline, run; light and dark) for the README, from fake providers'
# runs polled into a fresh store, in Debian's Chromium (apt-get install chromium).
screenshots: $(VENV)/.installed-test
	$(BIN)/python -m tests.ui.screenshots docs/screenshots

clean:
	rm -rf $(VENV) var .pytest_cache
