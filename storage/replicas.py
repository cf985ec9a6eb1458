"""Read-only work on PostgreSQL streaming replicas (`DATABASE_REPLICA_URLS`).

The replicas are PostgreSQL's own physical standbys (`pg_basebackup -R`): they replay the
primary's WAL in commit order, so what a replica shows is the primary as it was a moment ago,
whole. The change log's positions are made visible strictly in order on the primary
(`storage.changelog`), so a replica whose newest position is `h` holds every entry up to `h`
and nothing after it: the log on a replica is a prefix of the primary's.

That gives the one rule every routed read follows. The caller says which position the read
must include (`at_least`: the cursor the phone sent, and the newest change in the user's own
scopes, so their own push is in their next pull). The read runs on a replica in rotation; its
first statement reads that replica's head in the same REPEATABLE READ snapshot as the rest of
the work, and when the head is below `at_least` the transaction is dropped and the work runs on
the primary. So a pull never skips a change and never answers a cursor older than the one it
was given, however far a replica lags: a lagging replica only sends more reads to the primary.
We go to the primary rather than wait for the replica: the wait would hold a connection and a
phone's request for a lag we cannot bound, and the primary can answer now.

A replica that fails (down, restarting, a query cancelled by recovery) is taken out of rotation
at once and its work runs again on the primary, so a stopped replica fails no request. The
watcher (`watch`) checks every replica every `REPLICA_CHECK_SECONDS`: one that is reachable
again and within `REPLICA_MAX_LAG_SECONDS` of the primary comes back; one that lags past it
goes out. Lag is measured in our own terms: how long ago the primary first held a position the
replica still lacks (not `pg_last_xact_replay_timestamp()`, which grows on an idle primary).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.errors import ServiceUnavailable
from storage.admission import Overloaded, Priority
from storage.db import Database, is_retryable
from storage.pull import log_head

log = logging.getLogger("freshroots.replicas")
T = TypeVar("T")

# A check waits this long at most, admission included (a replica that does not answer is down).
CHECK_TIMEOUT_SECONDS = 5.0

# What a routed read's outcome is counted as (`ReadRouter.counts`, the /metrics counter).
ON_REPLICA = "replica"
NO_REPLICA = "no_replica"  # none configured, or none in rotation
BEHIND = "behind"  # the replica had not replayed the position the read must include
FAILED = "replica_failed"  # the replica failed the read; it ran again on the primary
BUSY = "replica_busy"  # the replica's connections were all in use (admission control)
PRIMARY_ONLY = "primary_only"  # the caller needs the primary (it could not say what to include)
NOT_CHECKED = "not checked yet"


def describe(url: str) -> str:
    """A replica's name for logs and metrics: host:port/database, never a password."""
    parsed = make_url(url)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


@dataclass
class Replica:
    name: str
    db: Database
    in_rotation: bool = False  # until the first check finds it reachable and current
    head: int | None = None  # the newest log position it had replayed, last we looked
    lag_seconds: float = 0.0
    why_out: str = NOT_CHECKED
    retry_at: float = 0.0


@dataclass
class ReadRouter:
    """Runs read-only work on a replica when one can answer it correctly, else on the primary."""

    primary: Database
    replicas: Sequence[Replica] = ()
    max_lag_seconds: float = 10.0
    check_seconds: float = 1.0
    # How long a replica that failed stays out before the watcher tries it again.
    retry_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    counts: dict[str, int] = field(default_factory=dict)
    _turn: itertools.count[int] = field(default_factory=itertools.count)
    # (when, primary head) as the watcher saw them, oldest first: the lag measure.
    _primary_heads: deque[tuple[float, int]] = field(default_factory=deque)

    @classmethod
    def connect(
        cls,
        primary: Database,
        urls: Sequence[str],
        *,
        pool_size: int,
        max_lag_seconds: float,
        check_seconds: float,
    ) -> ReadRouter:
        replicas = [
            Replica(describe(url), Database(url, pool_size=pool_size, replica=True)) for url in urls
        ]
        return cls(primary, replicas, max_lag_seconds=max_lag_seconds, check_seconds=check_seconds)

    @property
    def databases(self) -> list[Database]:
        return [self.primary, *(replica.db for replica in self.replicas)]

    async def dispose(self) -> None:
        for replica in self.replicas:
            await replica.db.dispose()

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def _choose(self, at_least: int) -> Replica | str:
        """A replica in rotation that, as far as we know, has replayed `at_least` (in turns, so
        reads spread over several), or why there is none."""
        in_rotation = [replica for replica in self.replicas if replica.in_rotation]
        candidates = [
            replica for replica in in_rotation if replica.head is None or replica.head >= at_least
        ]
        if not candidates:
            return BEHIND if in_rotation else NO_REPLICA
        return candidates[next(self._turn) % len(candidates)]

    async def run(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        at_least: int | None = 0,
        priority: Priority | None = None,
    ) -> T:
        """`work(conn)` in a read-only transaction that holds every log entry up to `at_least`
        (None: the primary only). `work` may run twice (on a replica that then failed, and
        on the primary), so it must only read and return what it read."""
        replica = PRIMARY_ONLY if at_least is None else self._choose(at_least)
        if isinstance(replica, str):
            self._count(replica)
        else:
            assert at_least is not None  # a replica is chosen only for a position
            try:
                async with replica.db.read(priority) as conn:
                    head = await log_head(conn)
                    replica.head = head
                    if head >= at_least:
                        result = await work(conn)
                        self._count(ON_REPLICA)
                        return result
                self._count(BEHIND)
            except Overloaded:
                # Its connections are all busy: the primary may have room; the replica is fine.
                self._count(BUSY)
            except (ServiceUnavailable, exc.DBAPIError, TimeoutError) as error:
                verdict = _judge(error)
                if verdict == OURS:
                    raise  # it would fail on the primary too (a bug, a statement timeout)
                self._count(FAILED)
                if verdict == REPLICA_DOWN:
                    self._take_out(replica, f"a read failed ({_short(error)})")
        async with self.primary.read(priority) as conn:
            return await work(conn)

    def _take_out(self, replica: Replica, why: str) -> None:
        replica.retry_at = self.clock() + self.retry_seconds
        if replica.in_rotation:
            replica.in_rotation = False
            log.warning("read replica %s out of rotation: %s", replica.name, why)
        replica.why_out = why

    async def watch(self) -> None:
        """Check every replica every `check_seconds`, for the app's life."""
        if not self.replicas:
            return
        while True:
            await self.check()
            await asyncio.sleep(self.check_seconds)

    async def check(self) -> None:
        """One round: where the primary stands, then each replica's head and lag."""
        now = self.clock()
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                async with self.primary.read(Priority.NORMAL) as conn:
                    primary_head = await log_head(conn)
        except Exception as error:
            # The primary's trouble is reported where it is used. The replicas are still
            # checked against what we saw of it: a replica that stopped replaying keeps
            # falling behind by the clock, so it leaves rotation while the primary is busy.
            log.debug("replica check: primary unreadable (%s)", _short(error))
        else:
            history = self._primary_heads
            if not history or history[-1][1] != primary_head:
                history.append((now, primary_head))
            # Keep one observation older than the lag limit: the lag is then known past it.
            while len(history) > 1 and history[1][0] < now - self.max_lag_seconds * 2:
                history.popleft()
        if not self._primary_heads:
            return  # nothing to measure a replica against yet
        for replica in self.replicas:
            if not replica.in_rotation and now < replica.retry_at:
                continue
            await self._check_one(replica, now)

    async def _check_one(self, replica: Replica, now: float) -> None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                async with replica.db.read(Priority.NORMAL) as conn:
                    head = await log_head(conn)
        except Overloaded:
            return  # every connection busy with reads: a working replica, as it stands
        except Exception as error:
            self._take_out(replica, f"unreachable ({_short(error)})")
            return
        replica.head = head
        replica.lag_seconds = self.lag_of(head, now)
        if replica.lag_seconds > self.max_lag_seconds:
            behind = (
                f"{replica.lag_seconds:.1f} s behind the primary"
                if replica.lag_seconds != math.inf
                else "behind every position this process has seen on the primary"
            )
            self._take_out(replica, f"{behind} (REPLICA_MAX_LAG_SECONDS={self.max_lag_seconds:g})")
        elif not replica.in_rotation:
            # A return is worth a warning (it was out, and said so); the first check is news.
            report = log.info if replica.why_out == NOT_CHECKED else log.warning
            replica.in_rotation = True
            replica.why_out = ""
            report(
                "read replica %s in rotation (%.1f s behind the primary)",
                replica.name,
                replica.lag_seconds,
            )

    def lag_of(self, head: int, now: float) -> float:
        """How long ago the primary first held a position past `head` (0: it holds nothing
        the replica lacks, as of the newest observation). Behind even the oldest position
        we kept (seen at start-up, or more than twice the lag limit ago): how far behind is
        unknown, and counts as too far (inf) until the replica reaches a position we saw."""
        history = self._primary_heads
        if history and head < history[0][1]:
            return math.inf
        for seen_at, primary_head in history:
            if primary_head > head:
                return max(0.0, now - seen_at)
        return 0.0


# What a failed replica read says (`_judge`).
OURS = "ours"  # the work itself failed: it would on the primary too; the error stands
REPLICA_DOWN = "down"  # the replica is gone or unreachable: out of rotation, read elsewhere
THIS_READ = "this read"  # only this read could not run there: read elsewhere, keep the replica

# SQLSTATEs a replica gives for one read while it is fine: a query cancelled for a conflict
# with WAL replay (40001, 40P01), and a table or column a migration has not replayed yet.
ONE_READ_SQLSTATES = {"40001", "40P01", "42P01", "42703"}
# A statement that ran into statement_timeout: as slow on the primary; not the replica's fault.
STATEMENT_TIMEOUT = "57014"


def _judge(error: BaseException) -> str:
    cause = error.__cause__ if isinstance(error, ServiceUnavailable) else error
    if isinstance(error, TimeoutError) or isinstance(cause, TimeoutError):
        return REPLICA_DOWN  # no answer within the bound: a hung connection or host
    if not isinstance(cause, exc.DBAPIError):
        return REPLICA_DOWN  # translated connection trouble (storage.db._translate)
    sqlstate = getattr(cause.orig, "sqlstate", None) or ""
    if sqlstate == STATEMENT_TIMEOUT:
        return OURS
    if sqlstate in ONE_READ_SQLSTATES or is_retryable(cause):
        return THIS_READ
    if cause.connection_invalidated or isinstance(cause, exc.OperationalError | exc.InterfaceError):
        return REPLICA_DOWN
    return OURS


def _short(error: BaseException) -> str:
    return error.__class__.__name__
