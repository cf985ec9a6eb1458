"""Admission control for the database: a priority-aware gate sized to the connection pool.

Every transaction (`Database.read()` / `write()`) takes one of the gate's slots before it
checks a connection out, and the pool has exactly as many connections as the gate has slots
(`DB_POOL_SIZE`, no overflow). So the pool never opens a connection per request past its size
and never queues a request for its 10-30 s pool timeout: the gate does the queueing, briefly,
and sheds what it cannot serve soon with a 503 + `Retry-After`.

Two priorities:
- `LOW`: work a phone repeats anyway and that costs the user nothing to retry (pulls,
  WatermelonDB pulls, listing search and reads, live catch-up reads). It may use at most
  `low_slots` (the pool minus a reserve) and waits at most `low_wait` seconds. While NORMAL
  work holds a slot, LOW may hold only `low_slots_beside_normal` (a quarter of the pool): a
  slot is not the scarce thing, the database's CPU is, and eight first-sync reads at once
  made a five-mutation push take 0.5-1 s on a two-core box (it waits behind them on every
  statement); with two, 0.3-0.6 s (loadtests/overload.py).
- `NORMAL`: everything else (pushes, admin actions, auth, payment webhooks, background jobs).
  It may use every slot, is served before queued `LOW` work, and waits up to `wait`.

The priority comes from a context variable the HTTP edge sets per request from its method and
path (`sync_server.middleware`), so no call site passes it; a write is always `NORMAL`
(writing is what a push or an admin did, whatever connection it arrived on).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import time
from collections import deque
from collections.abc import Callable

from protocol.errors import ServiceUnavailable


class Priority(enum.IntEnum):
    LOW = 0
    NORMAL = 1


# Set by the HTTP edge for the request being served; background work (the live hub, pruning,
# the outbox worker, command-line tools) never sets it and runs as NORMAL.
request_priority: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "request_priority", default=Priority.NORMAL
)


# Set by work that waits for a database slot on behalf of a connection already open (a live
# socket's catch-up): LOW work may queue this long instead of the short request budget. The
# phone is waiting for frames, not for an HTTP answer, and shedding it would only make it
# reconnect and do its handshake and catch-up again.
low_priority_patience: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "low_priority_patience", default=None
)


class Overloaded(ServiceUnavailable):
    """Shed by admission control: nothing was done; retry after `Retry-After` seconds."""

    code = "overloaded"
    default_message = "The server is busy right now; nothing was changed. Retry shortly."


def beside_normal_slots(slots: int) -> int:
    """LOW slots while NORMAL work holds one: a quarter of the pool, at least one."""
    return max(1, slots // 4)


def reserved_slots(slots: int) -> int:
    """Slots only NORMAL work may take: a quarter of the pool, at least one (none for a pool
    of one, where LOW work must still be able to run at all)."""
    return 0 if slots < 2 else max(1, slots // 4)


class AdmissionGate:
    """A counting semaphore with two priorities and bounded, shedding waits.

    A released slot goes straight to the longest-waiting NORMAL waiter, else (if the LOW share
    allows) to the longest-waiting LOW one; newcomers never overtake queued waiters.
    """

    def __init__(
        self,
        slots: int,
        *,
        low_wait: float = 0.25,
        wait: float = 3.0,
        low_slots: int | None = None,
        reads_only: bool = False,
    ) -> None:
        """`reads_only`: a gate in front of a read replica. Nothing writes there, so no slot
        is kept back for writes and low-priority reads are not held to a quarter beside
        normal ones (that quarter leaves the primary's CPU to its writes)."""
        self.slots = max(1, slots)
        if reads_only:
            low_slots = self.slots
        self.low_slots = (
            self.slots - reserved_slots(self.slots)
            if low_slots is None
            else max(1, min(self.slots, low_slots))
        )
        self.low_slots_beside_normal = (
            self.low_slots if reads_only else min(self.low_slots, beside_normal_slots(self.slots))
        )
        self.low_wait = low_wait
        self.wait = wait
        self._in_use = [0, 0]  # by priority: LOW, NORMAL
        self._waiting: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (
            deque(),  # LOW
            deque(),  # NORMAL
        )
        # Hooks for metrics (storage does not know about Prometheus): called with the priority
        # of a shed request, and with the priority and seconds of every wait that was needed.
        self.on_shed: Callable[[Priority], None] | None = None
        self.on_wait: Callable[[Priority, float], None] | None = None

    @property
    def in_use(self) -> int:
        return self._in_use[Priority.LOW] + self._in_use[Priority.NORMAL]

    def configure(
        self,
        *,
        low_wait: float,
        wait: float,
        on_shed: Callable[[Priority], None] | None = None,
        on_wait: Callable[[Priority, float], None] | None = None,
    ) -> None:
        self.low_wait, self.wait = low_wait, wait
        self.on_shed, self.on_wait = on_shed, on_wait

    def waiting(self, priority: Priority) -> int:
        return sum(1 for future in self._waiting[priority] if not future.done())

    def _low_room(self) -> bool:
        cap = self.low_slots if not self._in_use[Priority.NORMAL] else self.low_slots_beside_normal
        # The reserve stays free for NORMAL work whatever the cap: LOW fills the pool only up
        # to `low_slots` in all.
        return self._in_use[Priority.LOW] < cap and self.in_use < self.low_slots

    def _may_enter(self, priority: Priority) -> bool:
        if self._waiting[Priority.NORMAL]:
            return False  # queued NORMAL work goes first, whoever arrives
        if priority is Priority.NORMAL:
            return self.in_use < self.slots
        return self._low_room() and not self._waiting[Priority.LOW]

    async def acquire(self, priority: Priority) -> None:
        if self._may_enter(priority):
            self._in_use[priority] += 1
            return
        wait = self.wait
        if priority is Priority.LOW:
            patience = low_priority_patience.get()
            wait = self.low_wait if patience is None else patience
        if wait <= 0:
            self._shed(priority)
        queue = self._waiting[priority]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(future)
        started = time.monotonic()
        try:
            async with asyncio.timeout(wait):
                await future
        except TimeoutError:
            if not (future.done() and not future.cancelled()):
                _discard(queue, future)
                self._shed(priority)
            # else: the slot was handed over just as the wait ran out; keep it.
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(priority)  # handed over, but our caller is gone: pass it on
            else:
                _discard(queue, future)
            raise
        if self.on_wait is not None:
            self.on_wait(priority, time.monotonic() - started)

    def release(self, priority: Priority) -> None:
        """Give back a slot taken at `priority`: to the longest-waiting NORMAL waiter, else
        to as many LOW waiters as now have room (the last NORMAL slot given back lifts the
        LOW cap from `low_slots_beside_normal` to `low_slots`)."""
        self._in_use[priority] -= 1
        normal, low = self._waiting[Priority.NORMAL], self._waiting[Priority.LOW]
        while normal:
            future = normal.popleft()
            if not future.done():
                # Counted as taken before the waiter runs, so nobody can barge in between.
                self._in_use[Priority.NORMAL] += 1
                future.set_result(None)
                return
        while low and self._low_room():
            future = low.popleft()
            if not future.done():
                self._in_use[Priority.LOW] += 1
                future.set_result(None)

    def _shed(self, priority: Priority) -> None:
        if self.on_shed is not None:
            self.on_shed(priority)
        raise Overloaded(retry_after=1)


def _discard(queue: deque[asyncio.Future[None]], future: asyncio.Future[None]) -> None:
    with contextlib.suppress(ValueError):
        queue.remove(future)
