# The two commands of the README: `make up` runs the system, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: up test bench openapi asyncapi proto readme clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.run-installed

up: $(VENV)/.run-installed
	$(BIN)/ordermesh up

test: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src
	$(BIN)/pytest

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench

openapi: $(VENV)/.dev-installed
	$(BIN)/ordermesh openapi > docs/openapi.json
	$(BIN)/python -m ordermesh.services.shipping.openapi > docs/shipping-openapi.json

asyncapi: $(VENV)/.dev-installed
	$(BIN)/python -m ordermesh.asyncapi > docs/asyncapi.json

proto: $(VENV)/.dev-installed
	$(BIN)/python -m ordermesh.rpc.codegen

clean:
	rm -rf $(VENV) .ordermesh .pytest_cache .mypy_cache .ruff_cache

readme: $(VENV)/.dev-installed
	$(BIN)/python -m ordermesh.config --readme README.md
