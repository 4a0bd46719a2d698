# polyattn — two commands from a fresh clone:
#   make test   set up .venv and run the full test suite
#   make demo   set up .venv and run the main demo
# torch defaults to the local CPU wheel; override e.g. `make test TORCH="torch>=2.5"`.

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/polyattn demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/polyattn bench --config benchmarks/default.toml

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
