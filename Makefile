# partialnet: `make install` then `make test`. `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the project needs (Fashion-MNIST is the embedded default data).
APT_PACKAGES := dataset-fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_FLAGS ?=
# Two pytest workers (pytest-xdist): each test runs on one thread, so two cores run two tests at
# once. `make test XDIST=` runs them one after another (easier to read a failure).
XDIST ?= -n 2 --dist worksteal
# One OpenMP thread per test process: tests are many small ops, and spinning OpenMP threads on
# busy cores are 10x slower. (Benchmarks use the machine's threads.)
TEST_ENV := OMP_NUM_THREADS=1

.PHONY: help install apt venv ffcv kernels test test-all demo bench lint clean wandb-sync

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: apt venv ffcv kernels ## create .venv, install Debian packages and pinned Python packages (FFCV too), build the C++ CPU kernels

apt: ## install the Debian packages (apt-get, non-interactive; sudo when not root)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "Debian packages present: $(APT_PACKAGES)"; fi

venv: ## create .venv and install the package with pinned dependencies
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'

ffcv: venv ## FFCV and its build dependencies (Debian: pkg-config, libopencv-dev, libturbojpeg0-dev)
	bash scripts/install_ffcv.sh $(PY)

kernels: venv ## compile the C++ CPU kernels (fused BatchNorm + GELU; needs a C++ compiler, which `make install` gets with the ffcv step)
	$(PY) -m partialnet.kernels

test: ## fast test tier (CPU, no slow tests, two workers)
	$(TEST_ENV) $(PY) -m pytest -m "not slow" -q $(XDIST) $(PYTEST_FLAGS)

test-all: ## every test, slow ones included (two workers)
	$(TEST_ENV) $(PY) -m pytest -q $(XDIST) $(PYTEST_FLAGS)

demo: ## train on the embedded default data (Fashion-MNIST), then evaluate the checkpoint
	$(PY) train.py hydra.run.dir=outputs/demo/$$(date +%Y%m%d_%H%M%S)_$$$$ \
	  && $(PY) eval.py ckpt=$$(ls -td outputs/demo/*/ | head -1)checkpoints/last.ckpt

bench: ## run every benchmark in bench/ and write bench/RESULTS.md
	$(PY) bench/run_all.py

lint: ## byte-compile everything and run ruff if installed
	$(PY) -m compileall -q partialnet train.py eval.py search_dpconv.py bench tests
	@if $(PY) -m ruff --version >/dev/null 2>&1; then $(PY) -m ruff check partialnet tests bench *.py; fi

wandb-sync: ## upload every offline W&B run under outputs/ (in parallel)
	@find outputs -type d -name 'offline-run-*' | xargs -r -P 4 -n 1 $(VENV)/bin/wandb sync

clean: ## remove caches and build files (keeps outputs/ and .venv)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf .pytest_cache build dist *.egg-info
