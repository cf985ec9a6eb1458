"""Operating the server: settings, the command line, logs, health and metrics."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sync_server.app import create_app
from sync_server.settings import ConfigError, Settings
from tests.conftest import Backend
from tests.support.api import Api, register
from tests.support.live_server import serve_in_thread


def freshroots(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sync_server.cli", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_the_embedded_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    first = Settings.from_environ({"DATABASE_URL": url})
    second = Settings.from_environ({"DATABASE_URL": url})
    secret_file = tmp_path / ".freshroots_jwt_secret"
    assert first.jwt_secret == second.jwt_secret and len(first.jwt_secret) >= 32
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert first.jwt_secret not in repr(first)


def test_production_settings_are_checked_and_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        Settings.from_environ({"DATABASE_URL": "postgresql://x@127.0.0.1/db"})
    with pytest.raises(ConfigError, match="REDIS_URL"):
        Settings.from_environ({"REDIS_URL": "memcached://x", "JWT_SECRET": "s" * 32})
    with pytest.raises(ConfigError, match="BCRYPT_ROUNDS"):
        Settings.from_environ({"BCRYPT_ROUNDS": "4", "JWT_SECRET": "s" * 32})
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_environ({"DATABASE_URL": "mysql://x/y"})


def test_serve_refuses_an_unmigrated_database_and_migrate_fixes_it(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}", "JWT_SECRET": "x" * 32}
    refused = freshroots("serve", "--port", "1", env=env, cwd=tmp_path)
    assert refused.returncode == 2 and "freshroots migrate" in refused.stderr
    migrated = freshroots("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0 and "schema migrated" in migrated.stdout
    again = freshroots("migrate", env=env, cwd=tmp_path)
    assert "already current" in again.stdout
    admin = freshroots(
        "create-admin", "--email", "ops@freshroots.mu", "--password", "short", env=env, cwd=tmp_path
    )
    assert admin.returncode == 2 and "password" in admin.stderr
    help_text = freshroots("--help", env=env, cwd=tmp_path).stdout
    for command in ("serve", "migrate", "seed-demo", "create-admin", "worker"):
        assert command in help_text
    # Several workers would each keep their own heads and pub/sub without Redis.
    workers = freshroots("serve", "--port", "1", "--workers", "2", env=env, cwd=tmp_path)
    assert workers.returncode == 2 and "REDIS_URL" in workers.stderr


def test_one_json_log_line_per_request_without_secrets(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="freshroots.access"):
        api = register(server, "logged", password="never in logs 1")
        api.get("/api/me", headers={"x-request-id": "trace-me-123"})
    records = [r for r in caplog.records if r.name == "freshroots.access"]
    me = [r for r in records if getattr(r, "path", "") == "/api/me"]
    assert me and me[-1].status == 200 and me[-1].request_id == "trace-me-123"  # type: ignore[attr-defined]
    assert me[-1].user_id == api.user["id"] and me[-1].route == "/api/me"  # type: ignore[attr-defined]
    text = "\n".join(str(vars(r)) for r in records)
    assert "never in logs 1" not in text and (api.token or "") not in text


def test_health_readiness_and_metrics(server: str) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz").json()
    assert ready["status"] == "ok" and ready["checks"]["database"] == "ok"
    httpx.get(f"{server}/api/listings")
    metrics = httpx.get(f"{server}/metrics").text
    for name in (
        "freshroots_outbox_lag_seconds",
        "freshroots_changelog_head",
        "freshroots_db_pool_in_use",
        "freshroots_live_sessions",
        'freshroots_request_seconds_bucket{le="0.005",method="GET",route="/api/listings"}',
    ):
        assert name in metrics, name


def test_metrics_behind_a_token_answer_only_the_scraper(backend: Backend) -> None:
    token = "scrape-" + "x" * 24
    with serve_in_thread(create_app(backend.settings(METRICS_TOKEN=token))) as base_url:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": token}):
            refused = httpx.get(f"{base_url}/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["code"] == "unauthorized"
            assert "freshroots_" not in refused.text
        scraped = httpx.get(f"{base_url}/metrics", headers={"authorization": f"Bearer {token}"})
        assert scraped.status_code == 200 and "freshroots_changelog_head" in scraped.text


def test_cors_is_an_allow_list(backend: object, tmp_path: Path) -> None:
    from sync_server.app import create_app
    from tests.conftest import Backend
    from tests.support.live_server import serve_in_thread

    assert isinstance(backend, Backend)
    app = create_app(backend.settings(CORS_ORIGINS="https://admin.freshroots.mu"))
    with serve_in_thread(app) as base_url:
        api = Api(base_url)
        allowed = api.request(
            "OPTIONS",
            "/api/listings",
            headers={
                "origin": "https://admin.freshroots.mu",
                "access-control-request-method": "GET",
            },
        )
        denied = api.request(
            "OPTIONS",
            "/api/listings",
            headers={"origin": "https://evil.example", "access-control-request-method": "GET"},
        )
    assert allowed.headers.get("access-control-allow-origin") == "https://admin.freshroots.mu"
    assert "access-control-allow-origin" not in denied.headers
