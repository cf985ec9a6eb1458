# Fresh Roots sync server image: `freshroots serve` by default; the same image runs
# `freshroots migrate`, `freshroots create-admin …` and `freshroots worker` (docker-compose.yml).
#
#   docker build -t freshroots-sync .
#
# Two stages: the builder makes a virtualenv at /opt/venv; the runtime stage copies only that
# venv onto a clean python:3.11-slim, so no pip cache, build tooling or source tree ships.
# Both stages MUST use the same base image: the venv's interpreter is a symlink to the base's
# /usr/local/bin/python3.11 and its scripts' shebangs name /opt/venv/bin/python.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies: a RUNTIME SUBSET of requirements.lock, at the lock's exact versions.
#
# requirements.lock is `pip freeze` of `.[dev]`: it also pins pytest, hypothesis, ruff, mypy,
# locust (with Flask, gevent, pyzmq, …) and aiosmtpd. None of them is imported by the server,
# and together they roughly double the image and its CVE surface, so the image does not
# install them. Instead of a hand-kept list (which would drift), the runtime set is derived:
#   1. [project].dependencies is read from pyproject.toml (tomllib, stdlib in 3.11);
#   2. pip resolves them with requirements.lock as CONSTRAINTS (-c): every package it installs
#      gets the lock's version, and nothing outside that dependency tree is installed;
#   3. the build FAILS if any installed package is not pinned, at that version, by the lock
#      (pyproject gained a dependency and `make lock` was not re-run) — so the image never
#      contains an unpinned version;
#   4. the project itself is then installed with `pip install --no-deps .`, and `pip check`
#      proves the dependency set is complete.
# This layer depends only on pyproject.toml and requirements.lock, so code edits rebuild fast.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/runtime.in \
 && pip install -c requirements.lock -r /tmp/runtime.in \
 && pip freeze | LC_ALL=C sort > /tmp/installed.txt \
 && LC_ALL=C sort requirements.lock > /tmp/lock.txt \
 && LC_ALL=C comm -23 /tmp/installed.txt /tmp/lock.txt > /tmp/unpinned.txt \
 && if [ -s /tmp/unpinned.txt ]; then \
        echo "installed but not pinned by requirements.lock (run make lock):" >&2; \
        cat /tmp/unpinned.txt >&2; exit 1; \
    fi

# The project (README.md is pyproject's `readme`, so setuptools needs it).
COPY README.md ./
COPY sync_server ./sync_server
COPY protocol ./protocol
COPY storage ./storage
COPY integrations ./integrations
RUN pip install --no-deps . \
 && pip check \
 && freshroots --help > /dev/null

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="freshroots-sync" \
      org.opencontainers.image.description="Fresh Roots offline-first sync server"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed, unprivileged uid/gid (10001), so volume ownership and Kubernetes' runAsNonRoot work.
RUN groupadd --system --gid 10001 freshroots \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin freshroots \
 && mkdir /app && chown 10001:10001 /app

COPY --from=builder /opt/venv /opt/venv

# /app is writable by the service user only so that a container started WITHOUT configuration
# can fall back to the embedded default (SQLite file + generated JWT secret in the working
# directory) for a quick look. The compose stack always sets PostgreSQL + Redis + JWT_SECRET.
WORKDIR /app
USER 10001:10001

EXPOSE 8000

# Liveness only (/healthz: the process answers). /readyz (database + Redis) is for load
# balancers: a database outage must not make the orchestrator kill every replica at once.
# slim has no curl, hence python's urllib. Containers of this image that do not serve HTTP
# (migrate, worker) disable this check in docker-compose.yml.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]

# One uvicorn process per container: scale with replicas (docker compose --scale app=N),
# not --workers, so the orchestrator sees and restarts each process.
# --forwarded-allow-ips "*": the container port is reachable only on the private compose
# network, where nginx is the only client. nginx OVERWRITES X-Forwarded-For with the peer
# address (uvicorn, trusting "*", takes the left-most entry). Never publish port 8000 directly.
CMD ["freshroots", "serve", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--forwarded-allow-ips", "*"]
