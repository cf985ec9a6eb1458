"""Every test runs twice: on the embedded default (SQLite, in-process cache and pub/sub) and on
PostgreSQL + Redis, each against a real server over real HTTP.

With REQUIRE_SERVICES=1 (CI) a missing PostgreSQL or Redis fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage.migrate import upgrade
from sync_server.app import create_app
from sync_server.cli import ensure_admin
from sync_server.settings import Settings
from tests.support import services as real
from tests.support.api import Api, login, register
from tests.support.live_server import serve_in_thread

ADMIN_PASSWORD = "admin password 1"


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


@pytest.fixture(scope="session", params=["embedded", "services"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    env = _base_env()
    if request.param == "embedded":
        directory = tmp_path_factory.mktemp("embedded")
        env["DATABASE_URL"] = f"sqlite:///{Path(directory) / 'freshroots.db'}"
        upgrade(env["DATABASE_URL"])
        yield Backend("embedded", env)
        return
    missing = [
        name
        for name, port in (("PostgreSQL", 5432), ("Redis", 6379))
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
def services_backend(backend: Backend) -> Backend:
    """For tests about production mode only (several instances, process kills)."""
    if not backend.is_services:
        pytest.skip("needs PostgreSQL + Redis: the embedded default is one process")
    return backend
