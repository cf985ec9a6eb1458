"""The live hub and a session, driven step by step in one process: the interleavings of a
dispatch, a catch-up and a slow socket that a real server only hits by chance.

Each test pauses the hub inside its database read (or the socket inside a send) at the
worst moment, commits meanwhile, and checks what the client was sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

import sync_server.live.hub as hub_module
from protocol.cursor import LogCursor
from storage.listings import create_listing, update_listing
from storage.pull import log_head
from storage.scopes import Principal
from sync_server.live.session import Session
from sync_server.services import Services, open_services
from tests.conftest import Backend
from tests.support.replica import Replica, apply_page

BUYER = Principal("live-hub-buyer", "user")


class RecordingSocket:
    """Stands in for the WebSocket: keeps what was sent; `stall()` blocks sends until
    `resume()`, like a phone that stopped reading."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._open = asyncio.Event()
        self._open.set()

    async def send_text(self, text: str) -> None:
        await self._open.wait()
        self.sent.append(orjson.loads(text))

    def stall(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()


def run(backend: Backend, scenario: Callable[[Services], Awaitable[None]], **settings: str) -> None:
    async def main() -> None:
        async with open_services(backend.settings(**settings)) as services:
            services.live = hub_module.LiveHub(services)
            await scenario(services)

    asyncio.run(main())


async def new_listing(services: Services, **values: Any) -> str:
    body = {"title": "Giraumon", "price": 4500, "unit": "kg", "stock": 5, "status": "published"}
    async with services.changelog.transaction() as tx:
        return str(await create_listing(tx, None, {**body, **values}))


async def edit(services: Services, listing_id: str, **values: Any) -> None:
    async with services.changelog.transaction() as tx:
        await update_listing(tx, None, listing_id, values)


async def head(services: Services) -> int:
    async with services.db.read() as conn:
        return await log_head(conn)


async def current_session(services: Services) -> tuple[Session, RecordingSocket]:
    socket = RecordingSocket()
    session = Session(socket, services, BUYER, time.time() + 3600)  # type: ignore[arg-type]
    services.live.position = await head(services)
    services.live.add(session)
    await session.catch_up(LogCursor(services.live.position), reset=False)
    socket.sent.clear()
    return session, socket


def replica_of(socket: RecordingSocket) -> Replica:
    replica: Replica = {}
    for frame in socket.sent:
        if frame.get("type") == "changes":
            apply_page(replica, frame)
    return replica


async def drain(session: Session) -> None:
    """Until the session's writer has sent everything queued (it runs by itself)."""
    for _ in range(500):
        if not session.frames and session.writer is None:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the session's writer never finished")


def test_a_window_read_before_a_catch_up_ended_is_not_sent_under_its_cursor(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(services: Services) -> None:
        listing = await new_listing(services, status="draft")
        session, socket = await current_session(services)
        session.behind = True  # e.g. it overflowed: it will catch up from its cursor
        paused, release = asyncio.Event(), asyncio.Event()
        read_window = hub_module.read_window

        loop = asyncio.get_running_loop()

        async def slow_read(*args: Any) -> Any:
            window = await read_window(*args)
            if asyncio.get_running_loop() is not loop:
                return window  # another server's hub in this process (the shared test server)
            paused.set()
            await release.wait()  # the hub holds a window in which the listing is published
            return window

        monkeypatch.setattr(hub_module, "read_window", slow_read)
        await edit(services, listing, status="published")
        dispatch = asyncio.create_task(services.live.dispatch())
        await paused.wait()
        await edit(services, listing, status="draft")  # hidden again
        await session.catch_up(LogCursor(session.sent_position), reset=False)
        release.set()
        await dispatch
        await drain(session)
        assert listing not in replica_of(socket).get("listings", {})

    run(backend, scenario)


def test_a_session_joining_while_an_idle_hub_reads_the_head_gets_the_next_change(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(services: Services) -> None:
        listing = await new_listing(services)
        hub = services.live
        hub.position = await head(services)
        paused, release = asyncio.Event(), asyncio.Event()
        real_head = hub_module.log_head

        loop = asyncio.get_running_loop()

        async def slow_head(conn: Any) -> int:
            if asyncio.get_running_loop() is not loop:
                return await real_head(conn)  # another server's hub in this process
            paused.set()
            await release.wait()
            return await real_head(conn)

        monkeypatch.setattr(hub_module, "log_head", slow_head)
        dispatch = asyncio.create_task(hub.dispatch())  # woken with nobody connected
        await paused.wait()
        socket = RecordingSocket()
        session = Session(socket, services, BUYER, time.time() + 3600)  # type: ignore[arg-type]
        hub.add(session)
        await session.catch_up(LogCursor(hub.position), reset=False)
        await edit(services, listing, price=5200)  # commits while the hub still reads
        release.set()
        await dispatch
        monkeypatch.setattr(hub_module, "log_head", real_head)
        await hub.dispatch()  # the commit's own signal
        await drain(session)
        patches = [
            patch
            for frame in socket.sent
            for patch in frame.get("changes", {}).get("listings", {}).get("patch", [])
        ]
        assert patches == [{"id": listing, "price": 5200, "updated_at": patches[0]["updated_at"]}]

    # Only a hub without a tail skips its window read when nobody is connected (with a tail
    # it reads every window, to feed it), so only that hub has this interleaving.
    run(backend, scenario, SYNC_TAIL_ENTRIES="0")


def test_a_session_behind_with_a_full_queue_still_catches_up(backend: Backend) -> None:
    async def scenario(services: Services) -> None:
        listing = await new_listing(services)
        session, socket = await current_session(services)
        socket.stall()
        try:
            for n in range(services.settings.ws_queue_frames + 1):
                await edit(services, listing, price=3000 + n)
                await services.live.dispatch()
            # One frame stuck in the stalled send, the bound's worth queued behind it.
            assert len(session.frames) == services.settings.ws_queue_frames
            services.live._everyone_behind()  # what a Redis reconnect (RESYNC) does
            socket.resume()
            await edit(services, listing, price=9900)
            await services.live.dispatch()
            for _ in range(100):
                if any("9900" in orjson.dumps(frame).decode() for frame in socket.sent):
                    break
                await asyncio.sleep(0.02)
            prices = [
                patch["price"]
                for frame in socket.sent
                for patch in frame.get("changes", {}).get("listings", {}).get("patch", [])
            ]
            # Frames queued before the catch-up are not sent after it (that would roll back).
            assert prices and prices[-1] == 9900
            assert not session.behind
        finally:
            session.stop()

    run(backend, scenario)


def test_an_overflow_keeps_the_push_results_it_had_queued(backend: Backend) -> None:
    async def scenario(services: Services) -> None:
        session, _socket = await current_session(services)
        result = '{"type":"push_result","results":[]}'
        session.reply(result)
        while session.overflows == 0:  # the hub's frames pile up until the bound is hit
            session.advance(session.position + 1, '{"type":"changes"}')
        assert [item.text for item in session.frames] == [result]
        session.stop()

    run(backend, scenario)
