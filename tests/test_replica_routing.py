"""How a failed replica read is judged, and how lag is measured: the decisions behind
`storage.replicas.ReadRouter`, one by one (the real replica is in tests/test_replicas.py)."""

from __future__ import annotations

import math
from pathlib import Path

import psycopg.errors
import pytest
from sqlalchemy import exc

from protocol.errors import ServiceUnavailable
from storage.db import Database
from storage.replicas import OURS, REPLICA_DOWN, THIS_READ, ReadRouter, _judge


def dbapi(error_class: type[psycopg.Error], wrapper: type[exc.DBAPIError]) -> exc.DBAPIError:
    return wrapper("SELECT 1", {}, error_class("message"))


def translated(error: exc.DBAPIError) -> ServiceUnavailable:
    """What storage.db does with connection-level trouble: a 503 raised from it."""
    try:
        raise ServiceUnavailable("The database is unavailable") from error
    except ServiceUnavailable as raised:
        return raised


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        # The replica went away: out of rotation, the read runs on the primary.
        (translated(dbapi(psycopg.errors.AdminShutdown, exc.OperationalError)), REPLICA_DOWN),
        (translated(dbapi(psycopg.OperationalError, exc.OperationalError)), REPLICA_DOWN),
        (TimeoutError(), REPLICA_DOWN),
        # One read could not run there (a replay conflict, a migration not replayed yet):
        # it runs on the primary, the replica stays.
        (dbapi(psycopg.errors.SerializationFailure, exc.OperationalError), THIS_READ),
        (dbapi(psycopg.errors.UndefinedTable, exc.ProgrammingError), THIS_READ),
        (dbapi(psycopg.errors.UndefinedColumn, exc.ProgrammingError), THIS_READ),
        # The read's own fault: as bad on the primary; the error stands.
        (translated(dbapi(psycopg.errors.QueryCanceled, exc.OperationalError)), OURS),
        (dbapi(psycopg.errors.SyntaxError, exc.ProgrammingError), OURS),
    ],
)
def test_a_failed_replica_read_is_judged(error: BaseException, verdict: str) -> None:
    assert _judge(error) == verdict


def test_lag_is_how_long_ago_the_primary_first_held_what_the_replica_lacks(
    tmp_path: Path,
) -> None:
    now = [100.0]
    primary = Database(f"sqlite:///{tmp_path / 'unused.db'}")
    router = ReadRouter(primary, max_lag_seconds=10, clock=lambda: now[0])
    router._primary_heads.extend([(100.0, 50), (101.0, 60), (103.0, 70)])
    now[0] = 104.0
    assert router.lag_of(70, now[0]) == 0.0  # holds everything seen
    assert router.lag_of(65, now[0]) == 1.0  # lacks what the primary had at 103
    assert router.lag_of(55, now[0]) == 3.0  # ... and at 101
    assert router.lag_of(50, now[0]) == 3.0
    # Behind even the first position seen (at start-up, or long ago): not known how far,
    # so too far until it reaches a position this process saw.
    assert router.lag_of(49, now[0]) == math.inf
