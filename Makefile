# Tolk: `make run` starts everything on this machine; `make test` runs the checks CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEV    := $(VENV)/.dev-stamp

.PHONY: install install-dev run test check lint typecheck pytest bench clean wheels wheels-cuda base-image image \
        image-slim \
        image-cuda compose-env compose-up compose-down

# resemblyzer ships the diarizer's GE2E weights (actors/diarizer/ge2e.py reads only its pretrained.pt). Installed
# without its dependencies: its metadata pulls webrtcvad's source build, which overwrites webrtcvad-wheels' module
# (the segmenter's VAD) with one that needs pkg_resources, and librosa/numba, which the diarizer does not use.
RESEMBLYZER = resemblyzer==0.1.4

# torch first, pinned: its CPU wheel is local here, and anything pulling plain `torch` later would
# otherwise fetch several GB of CUDA build. A GPU host installs its CUDA torch the same way.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps $(RESEMBLYZER)
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
	$(BIN)/lint-imports

typecheck: install-dev
	$(BIN)/mypy

pytest: install-dev
	$(BIN)/pytest

bench: install-dev
	$(BIN)/python -m loadtest.mic --sessions 1 2 4 6 8

# ----------------------------------------------------------------------------------------------- containers
# `make image` builds $(IMAGE):$(TAG), what compose.yaml and the Helm chart run by default (tag: the chart's
# appVersion). The wheels are made here from PyPI (torch as its CPU wheel), so the build installs offline.
IMAGE   ?= tolk
VERSION := $(shell sed -n 's/^appVersion: *"\(.*\)"/\1/p' helm/tolk/Chart.yaml)
TAG     ?= $(VERSION)
DOCKER  ?= docker
# BuildKit where buildx is installed; Docker's classic builder otherwise (Debian's docker.io).
BUILDKIT := $(shell $(DOCKER) buildx version >/dev/null 2>&1 && echo 1 || echo 0)
BUILD    = DOCKER_BUILDKIT=$(BUILDKIT) $(DOCKER) build --build-arg VERSION=$(VERSION) $(BUILD_ARGS)
COMPOSE ?= $(shell $(DOCKER) compose version >/dev/null 2>&1 && echo "$(DOCKER) compose" || echo "$(BIN)/docker-compose")

wheels: install
	rm -rf .wheels/deps .wheels/tolk .wheels/nodeps && mkdir -p .wheels/deps .wheels/tolk .wheels/nodeps
	$(BIN)/python -m pip wheel --quiet --wheel-dir .wheels/deps torch==2.13.0 .
	mv .wheels/deps/tolk-*.whl .wheels/tolk/
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --dest .wheels/nodeps $(RESEMBLYZER)

# debian:bookworm-slim made locally with mmdebstrap when it is not there (no registry needed).
base-image:
	.ci/base-image

image: wheels base-image
	$(BUILD) --target cpu -t $(IMAGE):$(TAG) .

image-slim: wheels base-image
	$(BUILD) --target slim -t $(IMAGE):$(TAG)-slim .

# NVIDIA's cuBLAS 12 and cuDNN 9 wheels (about 1.5 GB), which CTranslate2 4.x loads: fetched once.
wheels-cuda: install
	mkdir -p .wheels/cuda
	$(BIN)/python -m pip download --quiet --only-binary=:all: --no-deps --dest .wheels/cuda \
	  "nvidia-cublas-cu12==12.*" "nvidia-cudnn-cu12==9.*"

image-cuda: wheels wheels-cuda base-image
	$(BUILD) --target cuda -t $(IMAGE):$(TAG)-cuda .

# .env: one fresh NATS password per actor, kept across restarts (delete it to rotate them all).
compose-env: .env
.env:
	umask 077 && $(DOCKER) run --rm $(IMAGE):$(TAG) nats passwords > .env.tmp && mv .env.tmp .env

compose-up: image .env
	$(COMPOSE) up -d --wait

compose-down:
	$(COMPOSE) down

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache .wheels
