# Tolk: `make run` starts everything on this machine; `make test` runs the checks CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test check lint typecheck pytest bench clean

# torch first, pinned: its CPU wheel is local here, and anything pulling plain `torch` later would
# otherwise fetch several GB of CUDA build. A GPU host installs its CUDA torch the same way.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/tolk up

test: check pytest

check: lint typecheck

lint: install
	$(BIN)/ruff check actors schemas edge client loadtest tests helm/dashboards.py

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

bench: install
	$(BIN)/python -m loadtest.mic --sessions 1 2 4 6 8

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
