"""The database handle: one async engine chosen by URL scheme, and its transactions.

`sqlite:///file.db` is the embedded default (WAL, one writer at a time);
`postgresql://user@host:port/db` is production. Both run the same code above this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from protocol.errors import ServiceUnavailable
from storage.admission import AdmissionGate, Priority, request_priority

log = logging.getLogger("freshroots.db")
T = TypeVar("T")

# PostgreSQL answers these when two transactions collide; the loser is rolled back whole and
# can simply run again.
RETRYABLE_SQLSTATES = {"40001", "40P01"}

# (gate, task) while a task holds a slot of that gate: see `Database._admit`.
_holding: contextvars.ContextVar[tuple[object, object] | None] = contextvars.ContextVar(
    "db_slot_holder", default=None
)


# libpq settings for replica connections (`Database(replica=True)`).
REPLICA_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def async_url(url: str) -> str:
    """Pick the asyncio driver for a plain `sqlite://` or `postgresql://` URL."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def sync_url(url: str) -> str:
    """The blocking-driver URL, for Alembic."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """A random id for server-made rows: 12 url-safe characters, 72 bits.

    Ids are the least compressible bytes of a sync payload (an initial sync is a third ids),
    so they are as short as safety allows: 72 random bits make a collision among even a
    billion rows a one-in-ten-thousand event, and the primary key would refuse it anyway.
    """
    return secrets.token_urlsafe(9)


def insert_for(dialect: str) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_nothing` on both databases."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def is_retryable(error: BaseException) -> bool:
    orig = getattr(error, "orig", None)
    return getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def is_unavailable(error: BaseException) -> bool:
    """Connection-level trouble (the database down, unreachable or busy), not a bug of ours."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.TimeoutError | exc.InterfaceError | ConnectionError | OSError):
        return True
    if isinstance(error, exc.OperationalError):
        sqlstate = getattr(error.orig, "sqlstate", None) or ""
        if sqlstate[:2] in {"08", "53", "57"} or sqlstate == "55P03":
            return True  # connection, resources, operator intervention, lock timeout
        message = str(error.orig).lower()
        return any(
            sign in message
            for sign in (
                "database is locked",
                "disk i/o",
                "connection",
                "server closed",
                "could not connect",
            )
        )
    return False


class Database:
    """The engine plus admission control: every transaction holds one of `pool_size` slots
    (`storage.admission`), and the pool holds exactly that many connections, no overflow."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        echo: bool = False,
        low_priority_wait: float = 0.25,
        wait: float = 3.0,
        replica: bool = False,
    ) -> None:
        """`replica`: a read replica's handle (`storage.replicas`): only reads come here."""
        self.url = url
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        options: dict[str, Any] = {"echo": echo}
        # No overflow: past `pool_size`, an overflow pool opens and closes a connection per
        # request, which is slowest exactly when the database is busiest. The gate below
        # queues and sheds instead, so the pool itself never makes anyone wait; its timeout
        # only bounds a transaction opened inside another one by the same task.
        if self.dialect == "postgresql":
            options.update(
                pool_size=pool_size,
                max_overflow=0,
                pool_pre_ping=True,
                pool_timeout=10,
                # Bound every wait: a request stuck behind a lock answers 503, it never hangs.
                connect_args={
                    "options": "-c lock_timeout=5000 -c statement_timeout=30000",
                    # A replica host that vanishes (no reset, packets dropped) must fail its
                    # reads in seconds, so they run again on the primary, not wait on TCP.
                    **(REPLICA_CONNECT_ARGS if replica else {}),
                },
            )
        else:
            options.update(pool_size=pool_size, max_overflow=0, pool_timeout=10)
        self.engine: AsyncEngine = create_async_engine(async_url(url), **options)
        self.gate = AdmissionGate(
            pool_size, low_wait=low_priority_wait, wait=wait, reads_only=replica
        )
        # SQLite has one writer; serialising writers in-process avoids busy-waiting on the
        # file lock, and BEGIN IMMEDIATE takes that lock up front across processes.
        self._sqlite_writer = asyncio.Lock() if self.dialect == "sqlite" else None
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def _admit(self, priority: Priority) -> tuple[contextvars.Token[Any], Priority] | None:
        """Take a gate slot (None: this task already holds one of ours, and a transaction
        opened inside another must not wait for the slot its own caller is holding)."""
        task = asyncio.current_task()
        if _holding.get() == (self.gate, task):
            return None
        await self.gate.acquire(priority)
        return _holding.set((self.gate, task)), priority

    def _leave(self, held: tuple[contextvars.Token[Any], Priority] | None) -> None:
        if held is not None:
            token, priority = held
            self.gate.release(priority)
            with contextlib.suppress(ValueError):  # closed from another context: nothing held
                _holding.reset(token)

    @asynccontextmanager
    async def read(self, priority: Priority | None = None) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction over one consistent snapshot (REPEATABLE READ on PostgreSQL).

        `priority`: by default the request's (`storage.admission.request_priority`), so a
        pull's read is shed before a push's; a shed read raises `Overloaded` (503)."""
        token = await self._admit(request_priority.get() if priority is None else priority)
        try:
            async with self.engine.connect() as conn:
                if self.dialect == "postgresql":
                    await conn.execution_options(
                        isolation_level="REPEATABLE READ", postgresql_readonly=True
                    )
                async with conn.begin():
                    yield conn
        except exc.SQLAlchemyError as error:
            translated = _translate(error)
            if translated is error:
                raise
            raise translated from error
        finally:
            self._leave(token)

    @asynccontextmanager
    async def write(self, priority: Priority = Priority.NORMAL) -> AsyncIterator[AsyncConnection]:
        """One write transaction; commits when the block ends without an exception.

        NORMAL priority whatever the request: a write is what a person or a job did."""
        lock = self._sqlite_writer
        try:
            if lock is not None:
                # The writer lock first, then the slot: writers queued behind the one SQLite
                # writer hold no connection that readers could use meanwhile.
                await lock.acquire()
            try:
                token = await self._admit(priority)
                try:
                    async with self.engine.connect() as conn:
                        if self.dialect == "sqlite":
                            await conn.execution_options(sqlite_immediate=True)
                        async with conn.begin():
                            yield conn
                finally:
                    self._leave(token)
            finally:
                if lock is not None:
                    lock.release()
        except exc.SQLAlchemyError as error:
            translated = _translate(error)
            if translated is error:
                raise
            raise translated from error

    async def retrying(self, work: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
        """Run a whole transaction again when PostgreSQL reports a serialisation conflict."""
        for attempt in range(attempts):
            try:
                return await work()
            except exc.DBAPIError as error:
                if not is_retryable(error):
                    raise
                if attempt == attempts - 1:
                    raise ServiceUnavailable(
                        "Too much contention right now; nothing was changed.", retry_after=1
                    ) from error
                await asyncio.sleep(0.005 * (2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.exec_driver_sql("SELECT 1")


def _translate(error: exc.SQLAlchemyError) -> BaseException:
    if is_unavailable(error) and not is_retryable(error):
        log.warning("database unavailable: %s", error.__class__.__name__)
        return ServiceUnavailable("The database is unavailable; nothing was changed.")
    return error


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL for concurrent readers, foreign keys on, and explicit BEGIN handling.

    pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINT; the documented
    SQLAlchemy recipe is to turn it off and emit BEGIN ourselves.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
