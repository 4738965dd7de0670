# longtake developer entry points. `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint format services tools

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU build, so that nothing later pulls the CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## Render the demo video on the embedded default (SQLite, local storage, tiny model, CPU).
## `longtake` is then .venv/bin/longtake (or `longtake` after `source .venv/bin/activate`).
demo: setup
	$(VENV)/bin/longtake demo

## Start Postgres and Redis when needed, lint, then run every test (slow end-to-end ones included).
## What is missing of the services and tools is installed with apt: as root, or with sudo.
## Two test processes (each with its own database, Redis prefix and bucket prefix), a test
## file's tests in the same one: most of the suite waits on services and subprocesses.
PYTEST := $(PY) -m pytest -n 2 --dist loadfile

test: setup services tools lint
	$(PYTEST)

## Everything but the tests marked slow.
test-fast: setup services tools
	$(PYTEST) -m "not slow"

services:
	bash ops/dev/start-services.sh

## Chromium, promtool and docker-compose, which tests drive, and espeak-ng, which speaks the
## scripts of jobs sent as text (installed with apt when missing).
tools:
	bash ops/dev/install-test-tools.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
