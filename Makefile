# Tolk: `make run` starts everything on this machine; `make test` runs the checks CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEV    := $(VENV)/.dev-stamp

.PHONY: install install-dev run test check lint typecheck pytest bench clean

# torch first, pinned: its CPU wheel is local here, and anything pulling plain `torch` later would
# otherwise fetch several GB of CUDA build. A GPU host installs its CUDA torch the same way.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

# The checks' tools, and what the tests exercise (the desktop extra's Qt among them): not for `make run`.
$(DEV): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV)

install: $(STAMP)

install-dev: $(DEV)

run: install
	$(BIN)/tolk up

test: check pytest

check: lint typecheck

lint: install-dev
	$(BIN)/ruff check actors schemas edge client loadtest tests helm/dashboards.py

typecheck: install-dev
	$(BIN)/mypy

pytest: install-dev
	$(BIN)/pytest

bench: install-dev
	$(BIN)/python -m loadtest.mic --sessions 1 2 4 6 8

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
