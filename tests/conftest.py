"""Every test runs twice: on the embedded default (SQLite, in-process cache and pub/sub) and on
PostgreSQL + Redis, each against a real server over real HTTP.

With REQUIRE_SERVICES=1 (CI) a missing PostgreSQL or Redis fails the run instead of skipping,
and so does every other skip whose reason is not in `ALLOWED_SKIPS` below: in CI a skipped test
is a test that did not run, and a green build must mean every guarantee was checked.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from storage.migrate import upgrade
from sync_server.app import create_app
from sync_server.cli import ensure_admin
from sync_server.settings import Settings
from tests.support import services as real
from tests.support.api import Api, login, register
from tests.support.live_server import serve_in_thread
from tests.support.processes import server_processes

ADMIN_PASSWORD = "admin password 1"
SERVICES_ONLY = "needs PostgreSQL + Redis: the embedded default is one process"

# The only skips REQUIRE_SERVICES=1 lets through, by exact reason: a combination with nothing
# to run, or an input the project documents as optional. Never a missing tool or service
# (chromium, node, openssl, PostgreSQL, Redis): in CI those must fail.
ALLOWED_SKIPS = {
    # Tests about production mode (several server processes sharing PostgreSQL and Redis,
    # process kills) are parametrised over both backends like every test; their embedded
    # variant has nothing to run, and the services variant runs in the same session.
    SERVICES_ONLY,
    # tests/test_refresh_grace.py runs each refresh-token store on each backend; on SQLite
    # the backend's own store already is the database store, so "database-store" would run
    # the same test twice.
    "embedded already runs the database store (on SQLite)",
    # tests/test_refresh_grace.py: a test about the Redis store's old spent marker; the
    # database store never wrote one.
    "the Redis store's spent marker only",
    # tests/integrations/test_facebook.py: the shared Facebook sample lives beside the project
    # in ../shared/data, not in it, and its README asks tests to skip when a fresh clone has no
    # such folder; the parser is still checked on the posts in tests/fixtures/facebook.
    "../shared/data is not beside this clone",
}


@dataclass
class Backend:
    name: str
    env: dict[str, str]

    @property
    def is_services(self) -> bool:
        return self.name == "services"

    def settings(self, **overrides: str) -> Settings:
        return Settings.from_environ({**self.env, **overrides})


def _base_env() -> dict[str, str]:
    return {
        "JWT_SECRET": "test-secret-" + secrets.token_hex(16),
        "BCRYPT_ROUNDS": "10",
        "RATE_REQUESTS_PER_USER_PER_MINUTE": "1000000",
        "RATE_LOGIN_FAILURES_PER_IP": "100000",
        "RATE_REGISTRATIONS_PER_IP": "100000",
        "LOG_LEVEL": "WARNING",
        # No outside network here: point Expo at a closed local port so pushes fail fast.
        "EXPO_PUSH_URL": "http://127.0.0.1:9",
        # Tests that deliver notifications start their own worker; a stray one in the shared
        # server would claim their items and back off against the closed port above.
        "OUTBOX_WORKER": "off",
    }


@contextmanager
def fresh_backend(name: str, directory: Path) -> Iterator[Backend]:
    """A migrated, empty backend: "embedded" is a new SQLite file in `directory`; "services" a
    new PostgreSQL database and Redis key prefix, both removed on exit."""
    env = _base_env()
    if name == "embedded":
        env["DATABASE_URL"] = f"sqlite:///{Path(directory) / 'freshroots.db'}"
        upgrade(env["DATABASE_URL"])
        yield Backend("embedded", env)
        return
    missing = [
        service
        for service, port in (("PostgreSQL", 5432), ("Redis", 6379))
        if not real.port_open("127.0.0.1", port)
    ]
    if missing:
        message = f"{' and '.join(missing)} not reachable on 127.0.0.1"
        if real.services_required():
            pytest.fail(f"REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)
    database_url = real.create_database()
    prefix = f"frtest:{secrets.token_hex(4)}:"
    env.update(DATABASE_URL=database_url, REDIS_URL=real.REDIS_URL, REDIS_PREFIX=prefix)
    try:
        upgrade(database_url)
        yield Backend("services", env)
    finally:
        real.drop_database(database_url)
        real.clear_redis_prefix(prefix)


@pytest.fixture(scope="session", params=["embedded", "services"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    with fresh_backend(request.param, tmp_path_factory.mktemp(request.param)) as made:
        yield made


@pytest.fixture(scope="session")
def server(backend: Backend) -> Iterator[str]:
    with serve_in_thread(create_app(backend.settings())) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def admin_email(backend: Backend) -> str:
    email = f"admin-{secrets.token_hex(4)}@freshroots.test"
    asyncio.run(ensure_admin(backend.settings(), email, ADMIN_PASSWORD, "Test admin"))
    return email


@pytest.fixture
def admin(server: str, admin_email: str) -> Api:
    return login(server, admin_email, ADMIN_PASSWORD)


@pytest.fixture
def buyer(server: str) -> Api:
    return register(server, "buyer")


@pytest.fixture
def instances(backend: Backend, server: str) -> Iterator[list[str]]:
    """Two instances in production mode (two server processes sharing PostgreSQL and Redis);
    the one embedded server twice otherwise."""
    if not backend.is_services:
        yield [server, server]
        return
    with server_processes(backend.env, 2) as processes:
        yield [process.base_url for process in processes]


@pytest.fixture
def services_backend(backend: Backend) -> Backend:
    """For tests about production mode only (several instances, process kills)."""
    if not backend.is_services:
        pytest.skip(SERVICES_ONLY)
    return backend


def _skip_reason(report: Any) -> str:
    """The reason pytest.skip was given (a skip report's longrepr is (path, line, reason))."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return str(reason).removeprefix("Skipped: ")


def _fail_unallowed_skip(report: Any) -> None:
    if not (report.skipped and real.services_required()) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if reason not in ALLOWED_SKIPS:
        report.outcome = "failed"
        report.longrepr = (
            f"REQUIRE_SERVICES=1: skipped ({reason!r}), and that reason is not in "
            "ALLOWED_SKIPS in tests/conftest.py; in CI every test must run"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    report = yield
    _fail_unallowed_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, Any]:
    report = yield  # a module that skips itself (pytest.skip(..., allow_module_level=True))
    _fail_unallowed_skip(report)
    return report
