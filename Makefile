# Two commands on a fresh machine with python3 (3.11+) and make: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make run` replicates to a folder on this machine; production sets an s3:// URL instead.
REPLICA_URL ?= file://$(CURDIR)/data/replica

.PHONY: run dev test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

## run: the production stack on this machine (Litestream to a local replica, gunicorn) on :8080
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" REPLICA_URL="$(REPLICA_URL)" ./scripts/start.sh

## dev: the development server alone (aiohttp's runner, no replication) on :8080
dev: $(STAMP)
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
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
