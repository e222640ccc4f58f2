# Every target does its own set-up: a fresh clone needs only `make demo` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVICES := deploy/local/services.sh
# Tests and the demo read the service addresses from here unless the environment sets them.
SERVICES_ENV := $(or $(LOOPWISE_RUN_DIR),.run)/services.env
PYTEST_EXIT := bash deploy/local/pytest-exit.sh

.PHONY: setup services-up services-down services-status topics test test-unit test-integration \
        test-reliability lint format demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $(STAMP)

services-up:
	@bash $(SERVICES) up

services-down:
	@bash $(SERVICES) down

services-status:
	@bash $(SERVICES) status

topics: setup services-up
	@set -a; source $(SERVICES_ENV); set +a; $(BIN)/loopwise topics create

test-unit: setup
	$(PYTEST_EXIT) $(BIN)/pytest -q tests/unit tests/contract agents/learning --doctest-modules

test-integration: setup services-up
	@set -a; source $(SERVICES_ENV); set +a; $(PYTEST_EXIT) $(BIN)/pytest -q tests/integration -m "not long"

# The whole fault suite at the issue's sizes; the soak runs in the background meanwhile.
test-reliability: setup services-up
	@set -a; source $(SERVICES_ENV); set +a; \
	LOOPWISE_FAULT_EVENTS=100000 LOOPWISE_FAULT_KILLS=5 LOOPWISE_FAULT_CHURN_CYCLES=6 \
	LOOPWISE_SOAK_S=600 $(PYTEST_EXIT) $(BIN)/pytest -q tests/reliability

test: setup lint services-up
	$(PYTEST_EXIT) $(BIN)/pytest -q tests/unit tests/contract agents/learning --doctest-modules
	@set -a; source $(SERVICES_ENV); set +a; \
	$(PYTEST_EXIT) $(BIN)/pytest -q --durations=12 tests/integration tests/reliability -m "not long"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The demo stops the services afterwards only if it was the one that started them.
demo: setup
	@bash $(SERVICES) status >/dev/null 2>&1; was_up=$$?; \
	bash $(SERVICES) up || exit 1; \
	set -a; source $(SERVICES_ENV); set +a; \
	$(BIN)/python -m loopwise.demo.run; rc=$$?; \
	if [ $$was_up -ne 0 ]; then bash $(SERVICES) down; fi; \
	exit $$rc

bench: setup services-up
	@set -a; source $(SERVICES_ENV); set +a; $(BIN)/python -m bench.run_all

clean:
	@bash $(SERVICES) down || true
	rm -rf .run $(VENV) .pytest_cache .ruff_cache
