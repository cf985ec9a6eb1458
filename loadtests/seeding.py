"""How the benchmarks set a server up: through storage's public functions and the
`freshroots` command line, as an operator would; never through the server's own modules
(pyproject.toml's import contract keeps `loadtests` off `sync_server`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import bcrypt

from storage.changelog import ChangeLog
from storage.standalone import open_changelog

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """The database and Redis a benchmark's server runs on, read from the environment it is
    started with (the same variables, the same defaults as the server's settings)."""

    database_url: str
    redis_url: str | None
    redis_prefix: str
    jwt_secret: str
    bcrypt_rounds: int

    @classmethod
    def of(cls, env: Mapping[str, str]) -> Target:
        return cls(
            database_url=env["DATABASE_URL"],
            redis_url=env.get("REDIS_URL") or None,
            redis_prefix=env.get("REDIS_PREFIX", "fr:"),
            jwt_secret=env["JWT_SECRET"],
            bcrypt_rounds=int(env.get("BCRYPT_ROUNDS", "12")),
        )


async def with_changelog(target: Target, work: Callable[[ChangeLog], Awaitable[T]]) -> T:
    """Run `work` on a change log of the target's database (writes reach running servers)."""
    async with open_changelog(
        target.database_url, target.redis_url, redis_prefix=target.redis_prefix
    ) as changelog:
        return await work(changelog)


def password_hash(target: Target, password: str) -> str:
    """A bcrypt hash a server of this target accepts at login."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(target.bcrypt_rounds)).decode()


def create_admin(env: Mapping[str, str], email: str, password: str, name: str) -> None:
    """`freshroots create-admin`, with the server's environment."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sync_server.cli",
            "create-admin",
            "--email",
            email,
            "--password",
            password,
            "--name",
            name,
        ],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=120,
    )
