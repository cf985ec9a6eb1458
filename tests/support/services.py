"""The real services behind the `services` backend: a fresh PostgreSQL database and a
private Redis key prefix per test session, both removed at the end."""

from __future__ import annotations

import os
import secrets
import socket

import psycopg
import redis

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def services_required() -> bool:
    return os.environ.get("REQUIRE_SERVICES", "") not in ("", "0", "false")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def pg_user() -> str:
    for user in ("postgres", "root"):
        try:
            with psycopg.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", connect_timeout=3
            ):
                return user
        except psycopg.Error:
            continue
    raise RuntimeError("PostgreSQL refuses both users postgres and root")


def create_database() -> str:
    user = pg_user()
    name = f"freshroots_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"


def drop_database(url: str) -> None:
    user, name = url.split("//", 1)[1].split("@")[0], url.rsplit("/", 1)[1]
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clear_redis_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()
