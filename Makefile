# Fresh Roots sync server. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Root needs no sudo (this machine's CI); GitHub's runner user does.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q
CHROMIUM := /usr/bin/chromium
IMAGE ?= freshroots-sync:ci

.PHONY: run test lint typecheck check lock bench load clean install test-tools audit image \
	compose-config

# PAYMENTS_SANDBOX=on: online payments go to the fake gateway mounted at /sandbox/mips, so the
# demo pays end to end with nobody charged. Here only: never in production.
run: $(STAMP)  ## install, migrate, seed the demo catalogue, serve on http://127.0.0.1:8000
	$(BIN)/freshroots migrate
	$(BIN)/freshroots seed-demo
	PAYMENTS_SANDBOX=on $(BIN)/freshroots serve --host 127.0.0.1 --port 8000

test: $(STAMP)  ## the whole suite, on the embedded default and on PostgreSQL + Redis
	$(BIN)/pytest

install: $(STAMP)  ## only the virtualenv, from requirements.lock

# actionlint checks .github/workflows/ (with shellcheck on their `run:` scripts); both binaries
# come from the lock, so this machine and GitHub run the same versions.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/actionlint -shellcheck=$(BIN)/shellcheck
	$(BIN)/shellcheck .ci/run deploy/compose/*.sh

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

# What the suite drives besides Python and the PostgreSQL + Redis servers; under
# REQUIRE_SERVICES=1 a test whose tool is missing fails. Debian/Ubuntu; installs only what is
# missing: nginx (tests/test_nginx_snapshot.py), redis-server (tests/test_live.py restarts a
# private one; the service the package starts is stopped again, 6379 is the suite's),
# openssl, node + npm and the WatermelonDB driver's packages (tests/test_watermelon.py), and
# Chromium at /usr/bin/chromium (tests/test_dashboard.py): Debian's package on Debian;
# elsewhere (GitHub's Ubuntu runner) Playwright's own build for the Playwright in the lock,
# linked there.
test-tools: export PLAYWRIGHT_CHROMIUM := from playwright.sync_api import sync_playwright; \
	pw = sync_playwright().start(); print(pw.chromium.executable_path); pw.stop()
test-tools: $(STAMP)
	@missing=""; debian=""; grep -qx 'ID=debian' /etc/os-release && debian=1; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	{ command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; } || \
	  missing="$$missing nodejs npm"; \
	if [ -n "$$debian" ] && ! [ -x $(CHROMIUM) ]; then missing="$$missing chromium"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  { $(SUDO) apt-get update -q && $(APT_INSTALL) $$missing; } || exit 1; \
	  case "$$missing" in *redis-server*) \
	    if [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now redis-server || true; fi;; \
	  esac; \
	fi
	@if ! grep -qx 'ID=debian' /etc/os-release; then \
	  chrome="$$($(BIN)/python -c "$$PLAYWRIGHT_CHROMIUM")" || exit 1; \
	  if ! [ -x "$$chrome" ] || [ "$$(readlink -f $(CHROMIUM))" != "$$(readlink -f "$$chrome")" ]; then \
	    echo "installing Playwright's Chromium as $(CHROMIUM)"; \
	    { $(BIN)/playwright install --with-deps chromium && $(SUDO) ln -sf "$$chrome" $(CHROMIUM); } \
	      || exit 1; \
	  fi; \
	fi
	$(CHROMIUM) --version
	nginx -v 2>&1 || /usr/sbin/nginx -v
	redis-server --version
	node --version
	cd tests/watermelon && { [ -d node_modules/@nozbe/watermelondb ] || npm ci --no-audit --no-fund; }

# Known vulnerabilities (PyPI's advisory data) in every pinned package. --strict: a package
# that could not be checked fails the audit instead of passing unchecked.
audit: $(STAMP)
	$(BIN)/pip-audit --strict --no-deps --disable-pip --progress-spinner off -r requirements.lock

# The server image (Dockerfile), and a smoke run of its runtime stage.
image:
	docker build --pull -t $(IMAGE) .
	docker run --rm $(IMAGE) freshroots --help > /dev/null

# docker-compose.yml as `docker compose up` reads it, with deploy/env.example's settings
# (a throwaway .env from it when there is none, since every Fresh Roots service reads .env).
compose-config:
	@made=""; if [ ! -e .env ]; then cp deploy/env.example .env; made=1; fi; \
	status=0; docker compose --env-file deploy/env.example config -q || status=$$?; \
	if [ -n "$$made" ]; then rm -f .env; fi; \
	if [ $$status = 0 ]; then echo "docker-compose.yml: valid"; fi; \
	exit $$status

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
