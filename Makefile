# The two README commands: `make demo` (run the demo manifest) and `make test` (run the tests).
# Both create .venv and install what they need from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
GENOFLOW_HOME ?= $(CURDIR)/.genoflow
export GENOFLOW_HOME

.PHONY: demo test dev bench lint format clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/genoflow run data/manifests/demo.tsv

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

dev: $(VENV)/.installed
	$(BIN)/genoflow dev

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .genoflow
