# Fresh Roots sync server. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck check lock bench load clean

# PAYMENTS_SANDBOX=on: online payments go to the fake gateway mounted at /sandbox/mips, so the
# demo pays end to end with nobody charged. Here only: never in production.
run: $(STAMP)  ## install, migrate, seed the demo catalogue, serve on http://127.0.0.1:8000
	$(BIN)/freshroots migrate
	$(BIN)/freshroots seed-demo
	PAYMENTS_SANDBOX=on $(BIN)/freshroots serve --host 127.0.0.1 --port 8000

test: $(STAMP)  ## the whole suite, on the embedded default and on PostgreSQL + Redis
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)  ## wire-size and throughput figures for delta sync (needs wrk)
	$(BIN)/python loadtests/bench_sync.py

load: $(STAMP)  ## issue 18's acceptance profile: locust, 10,000 phones, one server (PostgreSQL + Redis), bounded
	$(BIN)/python loadtests/run_load.py

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

lock:  ## re-resolve dependencies from pyproject.toml into requirements.lock
	rm -rf /tmp/freshroots-lock && $(PYTHON) -m venv /tmp/freshroots-lock
	/tmp/freshroots-lock/bin/pip install --quiet '.[dev]'
	/tmp/freshroots-lock/bin/pip freeze --exclude-editable | grep -v '^freshroots-sync' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
