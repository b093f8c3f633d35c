# Two commands on a fresh machine with python3 (3.11+) and make: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What running needs (requirements/run.txt), and what testing needs besides (requirements/dev.txt):
# lock files with every package pinned by version and hash, made from pyproject.toml by `make lock`.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-dev
UV := uv==0.13.9
# `make run` replicates to a folder on this machine; production sets an s3:// URL instead.
REPLICA_URL ?= file://$(CURDIR)/data/replica

.PHONY: run run-postgres dev test lint typecheck pytest bench clean lock

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): requirements/run.txt pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/run.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(STAMP): requirements/dev.txt $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	touch $@

## lock: pin every dependency, transitive ones included, with hashes, from pyproject.toml (needs PyPI)
lock:
	$(PYTHON) -m venv .cache/lock
	.cache/lock/bin/python -m pip install --quiet '$(UV)'
	.cache/lock/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
		--no-header --quiet -o requirements/run.txt
	.cache/lock/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
		--no-header --quiet --extra dev --extra bench -o requirements/dev.txt

## run: the production stack on this machine (Litestream to a local replica, gunicorn) on :8080
run: $(RUN_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" REPLICA_URL="$(REPLICA_URL)" ./scripts/start.sh

## run-postgres: the PostgreSQL profile on a throwaway local PostgreSQL server (Debian's postgresql)
run-postgres: $(RUN_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/run_postgres.py

## dev: the development server alone (aiohttp's runner, no replication) on :8080
dev: $(RUN_STAMP)
	$(BIN)/python -m service

## test: ruff, actionlint, mypy --strict and every test
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/actionlint

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -rs

## bench: the benchmark suite (not part of `make test`)
bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) .cache/lock .mypy_cache .ruff_cache .pytest_cache
