"""One WebSocket client: hello, catch-up, live frames, pushes, pings, bounded memory.

Frames wait in a small bounded queue. A client that stops reading fills it; we then drop
the queued frames and fall back to reading from the position the client was last *sent*,
so memory stays bounded and nothing is lost. A send that blocks for `send_timeout` closes
the socket (4429): the client reconnects and resumes from its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol.cursor import LogCursor
from storage.admission import low_priority_patience
from storage.push import Mutation, check_batch, push
from storage.scopes import Principal
from sync_server.errors import FreshRootsError, MalformedCursor
from sync_server.http import refuse_nul
from sync_server.services import Services
from sync_server.syncing import decode_cursor, page_body, read_page

log = logging.getLogger("freshroots.live")

CLOSE_MALFORMED, CLOSE_UNAUTHORIZED, CLOSE_NO_HELLO, CLOSE_TOO_SLOW = 4400, 4401, 4408, 4429
_CATCH_UP = object()
# Catch-up frames are smaller than HTTP pages: a phone parses each frame whole, in memory.
CATCH_UP_PAGE_ROWS = 100
# How long a catch-up read may queue for a database slot when the server is busy (a storm of
# sockets connecting at once): the socket is open already, so it waits its turn instead of
# being closed with 1013 and reconnecting, which would only repeat the work.
CATCH_UP_PATIENCE_SECONDS = 20.0


class Hello(msgspec.Struct):
    type: str
    token: str
    cursor: str | None = None


class PushFrame(msgspec.Struct):
    type: str
    client_id: str
    mutations: list[Mutation]


@dataclass
class _Frame:
    text: str
    position: int | None  # None: not a change frame (push results, pings)


async def receive_text(websocket: WebSocket) -> str:
    """The next message as text; a binary frame holding UTF-8 JSON is accepted too."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is not None:
        return str(text)
    try:
        return bytes(message.get("bytes") or b"").decode()
    except UnicodeDecodeError:
        return ""


class Session:
    def __init__(
        self, websocket: WebSocket, services: Services, principal: Principal, expires_at: float
    ) -> None:
        self.websocket = websocket
        self.services = services
        self.principal = principal
        self.expires_at = expires_at
        settings = services.settings
        self.queue: asyncio.Queue[_Frame | object] = asyncio.Queue(settings.ws_queue_frames)
        self.queued_bytes = 0
        self.position = 0  # the newest position handed to the queue
        self.sent_position = 0  # the newest position actually written to the socket
        self.behind = True
        self.catch_up_due = False
        self.overflows = 0  # how often this client was too slow and fell back to its cursor
        self.catch_ups = 0  # rounds read from its own cursor instead of the shared stream

    # -- called by the hub (synchronously, between its awaits) ------------------------------

    def fall_behind(self) -> None:
        if self.behind:
            return
        self._request_catch_up()

    def advance(self, position: int, changes_json: str | None) -> None:
        if changes_json is None:
            self.position = position  # nothing in scope; the next frame carries the cursor
            return
        cursor = self.services.cursors.encode(LogCursor(position), self.principal.user_id)
        text = (
            '{"type":"changes","cursor":"' + cursor + '","more":false,"reset":false,'
            '"changes":' + changes_json + "}"
        )
        if self.queued_bytes + len(text) > self.services.settings.ws_queue_bytes:
            self._overflow()
            return
        if not self._offer(_Frame(text, position)):
            self._overflow()
            return
        self.queued_bytes += len(text)
        self.position = position

    def _offer(self, item: _Frame | object) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            return False

    def _overflow(self) -> None:
        self.overflows += 1
        self.services.live.overflows += 1
        self._drop_queued_changes()
        self.position = self.sent_position
        self._request_catch_up()

    def _drop_queued_changes(self) -> None:
        """Before a catch-up: it re-reads these changes from the log, and sending them after
        it would roll the client back. Push results stay: they exist nowhere else."""
        kept = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if isinstance(item, _Frame) and item.position is None:
                kept.append(item)
        for item in kept:
            self.queue.put_nowait(item)
        self.queued_bytes = 0

    def _request_catch_up(self) -> None:
        # A flag, not only a queue item: the queue may be full (that is often why we are
        # here), and a request that failed to enqueue would leave the session behind forever.
        # The sentinel only wakes an idle writer; a busy one checks the flag after each frame.
        self.behind = True
        self.catch_up_due = True
        self._offer(_CATCH_UP)

    # -- the socket -------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        # asyncio.timeout, not wait_for: wait_for wraps the send in a new task, and this
        # runs once per frame per socket — thousands of times per committed change.
        async with asyncio.timeout(self.services.settings.ws_send_timeout_seconds):
            await self.websocket.send_text(text)

    async def catch_up(self, state: Any, reset: bool) -> None:
        """Page from `state` until current; ends with a `more: false` frame."""
        patience = low_priority_patience.set(CATCH_UP_PATIENCE_SECONDS)
        try:
            # A bounded number at a time: a storm of new sockets then catches up in turn, and
            # the event loop keeps time for handshakes, pushes and pulls in between.
            async with self.services.live.catch_up_turns:
                await self._catch_up(state, reset)
        finally:
            low_priority_patience.reset(patience)

    async def _catch_up(self, state: Any, reset: bool) -> None:
        self.catch_ups += 1
        limit = min(CATCH_UP_PAGE_ROWS, self.services.settings.pull_default_limit)
        while True:
            page, shared = await read_page(self.services, self.principal, state, reset, limit)
            if shared is not None:
                # A page every phone at this place gets: its bytes are built once, only the
                # cursor is this phone's.
                cursor = self.services.cursors.encode(shared.next_state, self.principal.user_id)
                await self.send(shared.frame(cursor))
            else:
                body = page_body(self.services, self.principal, page)
                body["type"] = "changes"
                await self.send(orjson.dumps(body).decode())
            more, state = page.more, page.next_state
            reset = False
            assert isinstance(state, LogCursor) or more
            if more:
                continue
            assert isinstance(state, LogCursor)
            self.sent_position = self.position = state.position
            # Compare with where the hub is *now*, not where it was when this round began:
            # windows it dispatched while we were reading or blocked in send skipped us (we
            # were behind), and nothing else would bring them until the next commit.
            # No await between this check and `behind = False`, so no window slips between.
            if state.position >= self.services.live.position:
                self.behind = False
                return

    async def write_forever(self) -> None:
        ping_every = self.services.settings.ws_ping_seconds
        while True:
            wait = ping_every * (0.8 + 0.2 * random.random())  # jitter: no ping stampedes
            try:
                async with asyncio.timeout(wait):
                    item = await self.queue.get()
            except TimeoutError:
                await self.send('{"type":"ping"}')
                continue
            if isinstance(item, _Frame):
                if item.position is not None:
                    self.queued_bytes -= len(item.text)
                await self.send(item.text)
                if item.position is not None:
                    self.sent_position = max(self.sent_position, item.position)
            if self.catch_up_due:
                self.catch_up_due = False
                if self.behind:
                    self._drop_queued_changes()
                    await self.catch_up(LogCursor(self.sent_position), reset=False)

    async def read_forever(self) -> None:
        while True:
            remaining = self.expires_at - time.time()
            if remaining <= 0:
                await self.websocket.close(CLOSE_UNAUTHORIZED, "token expired")
                return
            try:
                async with asyncio.timeout(remaining):
                    raw = await receive_text(self.websocket)
            except TimeoutError:
                continue
            try:
                message = orjson.loads(raw)
                kind = message.get("type") if isinstance(message, dict) else None
            except orjson.JSONDecodeError:
                kind = None
            if kind == "pong":
                continue
            if kind != "push":
                await self.websocket.close(CLOSE_MALFORMED, "expected pong or push")
                return
            try:
                refuse_nul(raw.encode())
                frame = msgspec.convert(message, PushFrame)
                check_batch(frame.client_id, frame.mutations)
                results = await push(
                    self.services.changelog, self.principal, frame.client_id, frame.mutations
                )
                reply: dict[str, Any] = {"type": "push_result", "results": results}
            except msgspec.ValidationError as error:
                reply = {
                    "type": "push_result",
                    "error": {"code": "validation_failed", "message": str(error)},
                }
            except FreshRootsError as error:
                reply = {"type": "push_result", **error.envelope()}
            await self.queue.put(_Frame(orjson.dumps(reply).decode(), None))


async def run_session(websocket: WebSocket, services: Services) -> None:
    await websocket.accept()
    settings = services.settings
    try:
        raw = await asyncio.wait_for(receive_text(websocket), settings.ws_hello_seconds)
    except TimeoutError:
        await websocket.close(CLOSE_NO_HELLO, "no hello in time")
        return
    except WebSocketDisconnect:
        return
    try:
        hello = msgspec.json.decode(raw, type=Hello)
        if hello.type != "hello":
            raise msgspec.ValidationError("expected hello")
    except (msgspec.ValidationError, msgspec.DecodeError):
        await websocket.close(CLOSE_MALFORMED, "expected a hello message")
        return
    try:
        principal = services.access_tokens.verify(hello.token)
        expires_at = services.access_tokens.expires_at(hello.token)
        state, reset = decode_cursor(services, principal, hello.cursor)
    except MalformedCursor:
        await websocket.close(CLOSE_MALFORMED, "malformed cursor")
        return
    except FreshRootsError:
        await websocket.close(CLOSE_UNAUTHORIZED, "bad or expired token")
        return

    session = Session(websocket, services, principal, expires_at)
    # Join the hub before reading the backlog: a change committed meanwhile is either in
    # the catch-up read or makes the hub mark us behind; it cannot fall between the two.
    services.live.add(session)
    writer: asyncio.Task[None] | None = None
    try:
        await session.catch_up(state, reset)
        writer = asyncio.create_task(session.write_forever())
        reader = asyncio.create_task(session.read_forever())
        done, _ = await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if isinstance(error, TimeoutError):
                with contextlib.suppress(Exception):
                    await websocket.close(CLOSE_TOO_SLOW, "too slow; resume from your cursor")
            elif error is not None and not isinstance(error, WebSocketDisconnect):
                raise error
        reader.cancel()
    except (WebSocketDisconnect, RuntimeError):
        pass
    except TimeoutError:
        with contextlib.suppress(Exception):
            await websocket.close(CLOSE_TOO_SLOW, "too slow; resume from your cursor")
    finally:
        services.live.discard(session)
        if writer is not None:
            writer.cancel()
