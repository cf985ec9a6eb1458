"""Really racing: calls released together from threads, their raw answers kept."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import psycopg

T = TypeVar("T")


def at_once(*calls: Callable[[], T]) -> list[T]:
    """Run the calls in threads released together by a barrier; results in call order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def deadlocks(database_url: str) -> int:
    """How many deadlocks PostgreSQL has detected (and broken) in this database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


@contextmanager
def no_new_deadlocks(database_url: str | None) -> Iterator[None]:
    """Fails if the block made PostgreSQL detect a deadlock: every writer keeps the one lock
    order (storage/orders.py), and each deadlock would cost a client `deadlock_timeout`
    (a second) and a retry. None (SQLite, one writer): nothing to check."""
    if database_url is None:
        yield
        return
    before = deadlocks(database_url)
    yield
    time.sleep(1.5)  # backends flush their statistics at most once a second
    assert deadlocks(database_url) == before, "PostgreSQL detected a deadlock"
