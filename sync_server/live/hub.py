"""The per-process hub: turns "something changed" signals into one read, shared by all.

Pub/sub only says that *something* changed; the change log stays the truth. On a signal the
hub reads the log window after the position it last dispatched — all scopes at once, in one
snapshot — and
- feeds it to the process's shared tail (storage/tail.py), from which HTTP pulls, WebSocket
  catch-ups and WatermelonDB pulls are answered without the database;
- hands every session that is current the part of it in its scope, encoded once per
  distinct view (see `WindowView`). A session that is behind (just connected, slow, or after
  a pub/sub gap) reads from its own cursor instead, from the tail or the database, page by
  page, until it is current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from protocol.cursor import LogCursor
from storage.feed import CHANGES_CHANNEL
from storage.pubsub import RESYNC
from storage.pull import WindowView, log_head, read_window
from storage.tail import ChangeTail, window_entries

if TYPE_CHECKING:
    from sync_server.live.session import Session
    from sync_server.services import Services

log = logging.getLogger("freshroots.live")

# Entries one shared read may carry; past it every session catches up on its own, paged.
WINDOW_LIMIT = 1000
# A backstop for lost signals (a publish that failed after commit, a task cancelled between
# commit and announce): the hub looks at the log this often even when nobody woke it.
POLL_SECONDS = 2.0
# Live catch-ups running at once in a process (the others wait their turn).
CONCURRENT_CATCH_UPS = 32
# How long phones starting a first sync share one starting position (and so its pages).
SNAPSHOT_ORIGIN_SECONDS = 5.0


class LiveHub:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.sessions: set[Session] = set()
        self.position = 0
        self._wake = asyncio.Event()
        self.ready = asyncio.Event()
        self.overflows = 0  # slow sockets that fell back to their cursor, since start
        self.tail = ChangeTail(services.settings.sync_tail_entries)
        self._snapshot_origin: tuple[int, float] | None = None
        self.catch_up_turns = asyncio.Semaphore(CONCURRENT_CATCH_UPS)
        self._caught_up = asyncio.Condition()

    def count_overflow(self) -> None:
        self.overflows += 1

    def add(self, session: Session) -> None:
        self.sessions.add(session)

    def discard(self, session: Session) -> None:
        self.sessions.discard(session)

    async def run(self) -> None:
        async with self.services.db.read() as conn:
            self.position = await log_head(conn)
        if self.tail.enabled:
            self.tail.start_at(self.position)
        async with self.services.pubsub.subscribe(CHANGES_CHANNEL) as inbox:
            listener = asyncio.create_task(self._listen(inbox))
            sweeper = asyncio.create_task(self.keep_alive())
            self.ready.set()
            try:
                while True:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(POLL_SECONDS):
                            await self._wake.wait()
                    self._wake.clear()
                    try:
                        await self.dispatch()
                    except Exception:
                        # Sessions re-read from their own cursors; nothing is lost.
                        log.exception("live dispatch failed; sessions will catch up")
                        self._everyone_behind()
                        await asyncio.sleep(0.5)
            finally:
                listener.cancel()
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper

    async def keep_alive(self) -> None:
        """One timer for every session: pings the ones that sent nothing for a while (a
        mobile carrier's NAT forgets a silent connection) and closes the ones whose token
        expired (4401: the client refreshes it and reconnects from its cursor)."""
        settings = self.services.settings
        every = settings.ws_ping_seconds
        while True:
            # Often enough that the sessions' own shares of the interval spread their pings.
            await asyncio.sleep(max(0.1, min(every / 10, 1.0)))
            now, wall = time.monotonic(), time.time()
            for session in list(self.sessions):
                if session.expires_at <= wall:
                    session.expire()
                else:
                    session.ping_if_idle(now, every)

    async def _listen(self, inbox: object) -> None:
        async for message in inbox:  # type: ignore[attr-defined]
            if message == RESYNC:
                self._everyone_behind()
            self._wake.set()

    def _everyone_behind(self) -> None:
        for session in self.sessions:
            session.fall_behind()

    async def dispatch(self) -> None:
        if not self.sessions and not self.tail.enabled:
            async with self.services.db.read() as conn:
                head = await log_head(conn)
            if not self.sessions:
                self.position = head
                return
            # A session joined while we read: it caught up to where we were, so the changes
            # after our old position must reach it as a window, not be jumped over.
        async with self.services.db.read() as conn:
            window = await read_window(conn, self.position, WINDOW_LIMIT)
        self.tail.raise_floor(window.floor)
        if window.end <= self.position:
            return
        if window.overflow:
            # More than one shared read carries: readers behind it use the database until the
            # tail has filled again from here.
            if self.tail.enabled:
                self.tail.start_at(window.end)
            self._everyone_behind()
            self.position = window.end
            await self._announce_position()
            return
        # The tail first: a session that falls behind below reads from it at once.
        self.tail.feed(window, window_entries(window))
        view = WindowView(window)
        # One frame per user (the devices of a household, or one phone's reinstall, get the
        # same bytes: changes and cursor), one encoding of the changes per distinct view.
        frames: dict[tuple[str, tuple[str, ...]], str | None] = {}
        cursors = self.services.cursors
        for session in list(self.sessions):
            if session.behind or session.position < window.start:
                session.fall_behind()
                continue
            if session.position >= window.end:
                # Its catch-up read past this window (it rejoined while we read): the window's
                # decisions are older than what it was sent, and must not carry its cursor.
                continue
            principal = session.principal
            whose = (principal.user_id, principal.scopes)
            if whose in frames:
                text = frames[whose]
            else:
                changes = view.changes_json(principal)
                text = frames[whose] = (
                    None
                    if changes is None
                    else '{"type":"changes","cursor":"'
                    + cursors.encode(LogCursor(window.end), principal.user_id)
                    + '","more":false,"reset":false,"changes":'
                    + changes
                    + "}"
                )
            session.advance(window.end, text)
        self.position = window.end
        await self._announce_position()

    def snapshot_origin(self) -> int | None:
        """Where first syncs start now: the tail's head, kept for a few seconds so phones
        starting together read the same catalogue pages (shared), and moved on so that what
        they replay from the log after the snapshot stays short. None without a tail."""
        tail = self.tail
        if not tail.enabled or tail.floor is None:
            return None
        now = time.monotonic()
        current = self._snapshot_origin
        if current is None or now - current[1] > SNAPSHOT_ORIGIN_SECONDS or current[0] < tail.floor:
            current = self._snapshot_origin = (tail.head, now)
        return current[0]

    async def _announce_position(self) -> None:
        async with self._caught_up:
            self._caught_up.notify_all()

    async def reach(self, position: int, wait_seconds: float) -> bool:
        """Wait (briefly) until the hub has read up to `position`: a pull that knows of a
        newer commit shares the hub's next read instead of making its own."""
        if self.position >= position:
            return True
        self._wake.set()
        try:
            async with asyncio.timeout(wait_seconds), self._caught_up:
                await self._caught_up.wait_for(lambda: self.position >= position)
        except TimeoutError:
            return False
        return True
