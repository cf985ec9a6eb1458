"""One WebSocket client: hello, catch-up, live frames, pushes, pings, bounded memory.

A socket that is waiting costs as little as we can make it: thousands of phones hold one
open and most of the time nothing happens. While idle a session is one coroutine (the ASGI
task, waiting for the client's next message) and a few attributes: no writer task, no queue
object, no timer of its own. Frames wait in a small bounded deque; the first frame queued
starts a writer task that sends until the deque is empty and ends. Pings and token expiry
are the hub's job (`LiveHub.keep_alive`: one timer for every session, not one each).

A client that stops reading fills the deque; we then drop the queued frames and fall back to
reading from the position the client was last *sent*, so memory stays bounded and nothing is
lost. A send that blocks for `send_timeout` closes the socket (4429): the client reconnects
and resumes from its cursor.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec
import orjson
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol.cursor import LogCursor
from protocol.errors import FreshRootsError, MalformedCursor
from storage.admission import Priority, low_priority_patience, request_priority
from storage.push import Mutation, check_batch, push
from storage.scopes import Principal
from sync_server.http import refuse_nul
from sync_server.services import Services
from sync_server.syncing import decode_cursor, page_body, read_page

log = logging.getLogger("freshroots.live")

CLOSE_MALFORMED, CLOSE_UNAUTHORIZED, CLOSE_NO_HELLO, CLOSE_TOO_SLOW = 4400, 4401, 4408, 4429
# RFC 6455: "Try Again Later" (a catch-up read was shed) and "Internal Error".
CLOSE_TRY_AGAIN_LATER, CLOSE_SERVER_ERROR = 1013, 1011
PING = '{"type":"ping"}'
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


class TextSocket(Protocol):
    async def send_text(self, data: str) -> None: ...


class _Frame:
    __slots__ = ("position", "text")

    def __init__(self, text: str, position: int | None) -> None:
        self.text = text
        self.position = position  # None: not a change frame (push results, pings)


def message_text(message: Mapping[str, Any]) -> str:
    """A received message as text; a binary frame holding UTF-8 JSON is accepted too."""
    text = message.get("text")
    if text is not None:
        return str(text)
    try:
        return bytes(message.get("bytes") or b"").decode()
    except UnicodeDecodeError:
        return ""


class Session:
    __slots__ = (
        "behind",
        "catch_up_due",
        "catch_ups",
        "closing",
        "expires_at",
        "frames",
        "last_sent",
        "on_failure",
        "overflows",
        "ping_share",
        "position",
        "principal",
        "queued_bytes",
        "sent_position",
        "services",
        "websocket",
        "writer",
    )

    def __init__(
        self, websocket: TextSocket, services: Services, principal: Principal, expires_at: float
    ) -> None:
        self.websocket = websocket
        self.services = services
        self.principal = principal
        self.expires_at = expires_at
        self.frames: collections.deque[_Frame] = collections.deque()
        self.queued_bytes = 0  # change frames' text waiting in `frames`
        self.position = 0  # the newest position handed to the queue
        self.sent_position = 0  # the newest position actually written to the socket
        self.behind = True
        self.catch_up_due = False
        self.overflows = 0  # how often this client was too slow and fell back to its cursor
        self.catch_ups = 0  # rounds read from its own cursor instead of the shared stream
        self.writer: asyncio.Task[None] | None = None  # only while there is something to send
        self.last_sent = time.monotonic()
        # Pinged after 80-100 % of the ping interval of silence, its own share: a commit sent
        # to every socket at once must not make every socket due for a ping at once.
        self.ping_share = 0.8 + 0.2 * random.random()
        self.closing: tuple[int, str] | None = None
        # Called when the writer gives up on the socket (closed it): ends the session.
        self.on_failure: Any = None

    # -- called by the hub (synchronously, between its awaits) ------------------------------

    def fall_behind(self) -> None:
        if self.behind:
            return
        self._request_catch_up()

    def advance(self, position: int, frame_text: str | None) -> None:
        """The hub's frame for this session (cursor included), or None: nothing in scope."""
        if frame_text is None:
            self.position = position  # nothing in scope; the next frame carries the cursor
            return
        settings = self.services.settings
        if (
            self.queued_bytes + len(frame_text) > settings.ws_queue_bytes
            or len(self.frames) >= settings.ws_queue_frames
        ):
            self._overflow()
            return
        self.frames.append(_Frame(frame_text, position))
        self.queued_bytes += len(frame_text)
        self.position = position
        self._wake()

    def ping_if_idle(self, now: float, every: float) -> None:
        if (
            self.writer is None
            and not self.behind
            and now - self.last_sent >= every * self.ping_share
        ):
            self.frames.append(_Frame(PING, None))
            self._wake()

    def expire(self) -> None:
        """Its token expired (seen by the hub's sweep): close after what is being sent."""
        if self.closing is None:
            self.closing = (CLOSE_UNAUTHORIZED, "token expired")
            self._wake()

    def reply(self, text: str) -> None:
        """Queue a push result. Never dropped: it exists nowhere else (the read loop waits
        for the writer before reading more, so a client cannot pile them up)."""
        self.frames.append(_Frame(text, None))
        self._wake()

    def _overflow(self) -> None:
        self.overflows += 1
        self.services.live.count_overflow()
        self._drop_queued_changes()
        self.position = self.sent_position
        self._request_catch_up()

    def _drop_queued_changes(self) -> None:
        """Before a catch-up: it re-reads these changes from the log, and sending them after
        it would roll the client back. Push results stay: they exist nowhere else."""
        self.frames = collections.deque(item for item in self.frames if item.position is None)
        self.queued_bytes = 0

    def _request_catch_up(self) -> None:
        # A flag the writer checks before each frame: queued change frames are dropped then
        # (the catch-up re-reads them), push results stay.
        self.behind = True
        self.catch_up_due = True
        self._wake()

    def _wake(self) -> None:
        if self.writer is None:
            self.writer = asyncio.create_task(self._write())

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.cancel()

    # -- the socket -------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        # asyncio.timeout, not wait_for: wait_for wraps the send in a new task, and this
        # runs once per frame per socket — thousands of times per committed change.
        async with asyncio.timeout(self.services.settings.ws_send_timeout_seconds):
            await self.websocket.send_text(text)
        self.last_sent = time.monotonic()

    async def _write(self) -> None:
        """Send until nothing is queued, then end (the next frame starts another writer)."""
        try:
            await self._write_queued()
        except TimeoutError:
            await self._give_up(CLOSE_TOO_SLOW, "too slow; resume from your cursor")
        except (WebSocketDisconnect, OSError, RuntimeError):
            await self._give_up(None, "")  # gone already: nothing to send
        except FreshRootsError as error:  # a catch-up read shed: the client retries later
            await self._give_up(*close_for(error))
        except Exception:
            log.exception("live session failed")
            await self._give_up(CLOSE_SERVER_ERROR, "server error")
        finally:
            self.writer = None

    async def _write_queued(self) -> None:
        frames = self.frames
        while True:
            if self.catch_up_due:
                self.catch_up_due = False
                if self.behind:
                    self._drop_queued_changes()
                    frames = self.frames
                    await self.catch_up(LogCursor(self.sent_position), reset=False)
                continue
            if not frames:
                if self.closing is not None:
                    await self._give_up(*self.closing)
                return
            item = frames.popleft()
            if item.position is not None:
                self.queued_bytes -= len(item.text)
            await self.send(item.text)
            if item.position is not None and item.position > self.sent_position:
                self.sent_position = item.position
            frames = self.frames  # replaced by a drop meanwhile

    async def _give_up(self, code: int | None, reason: str) -> None:
        self.frames.clear()
        self.queued_bytes = 0
        if code is not None:
            await self._close(code, reason)
        if self.on_failure is not None:
            self.on_failure()

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

    async def handle(self, raw: str) -> bool:
        """One message from the client; False when the session must end (closed)."""
        try:
            message = orjson.loads(raw)
            kind = message.get("type") if isinstance(message, dict) else None
        except orjson.JSONDecodeError:
            kind = None
        if kind == "pong":
            return True
        if kind != "push":
            await self._close(CLOSE_MALFORMED, "expected pong or push")
            return False
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
        self.reply(orjson.dumps(reply).decode())
        if len(self.frames) > self.services.settings.ws_queue_frames and self.writer is not None:
            # A client pushing faster than it reads its results waits for them to go out.
            await asyncio.wait({self.writer})
        return True

    async def _close(self, code: int, reason: str) -> None:
        if isinstance(self.websocket, WebSocket):
            with contextlib.suppress(Exception):  # the client may be gone already
                await self.websocket.close(code, reason)


async def run_session(websocket: WebSocket, services: Services) -> None:
    await websocket.accept()
    settings = services.settings
    try:
        async with asyncio.timeout(settings.ws_hello_seconds):
            message = await websocket.receive()
    except TimeoutError:
        await websocket.close(CLOSE_NO_HELLO, "no hello in time")
        return
    if message["type"] == "websocket.disconnect":
        return
    try:
        hello = msgspec.json.decode(message_text(message), type=Hello)
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
    reading = asyncio.current_task()
    assert reading is not None
    given_up = waiting_for_client = False

    def end_reading() -> None:
        # Only while it waits for the client: a push being applied finishes (and its result
        # is lost with the socket; the client's resend gets the replay).
        nonlocal given_up
        given_up = True
        if waiting_for_client:
            reading.cancel()

    session.on_failure = end_reading
    # Join the hub before reading the backlog: a change committed meanwhile is either in
    # the catch-up read or makes the hub mark us behind; it cannot fall between the two.
    services.live.add(session)
    try:
        await session.catch_up(state, reset)
        while not given_up:
            waiting_for_client = True
            message = await websocket.receive()
            waiting_for_client = False
            if message["type"] == "websocket.disconnect":
                return
            if not await session.handle(message_text(message)):
                return
    except asyncio.CancelledError:
        if not given_up:
            raise
        reading.uncancel()  # the writer closed the socket: this session is over
    except TimeoutError:
        await session._close(CLOSE_TOO_SLOW, "too slow; resume from your cursor")
    except (WebSocketDisconnect, OSError, RuntimeError):
        pass
    finally:
        services.live.discard(session)
        session.on_failure = None
        session.stop()


def close_for(error: FreshRootsError | None) -> tuple[int, str]:
    """A failure after the handshake, as a close code: busy (shed) or our fault."""
    if error is not None and error.status_code in (429, 503):
        return CLOSE_TRY_AGAIN_LATER, "busy; resume from your cursor later"
    return CLOSE_SERVER_ERROR, "server error"


async def live_socket(scope: Scope, receive: Receive, send: Send) -> None:
    """`/api/sync/ws`, taken before the middleware stack: an HTTP middleware layer is a
    coroutine frame held for as long as the socket is open, thousands of times over, and
    none of them does anything for a socket. What they would do is done here: the socket's
    reads run at low priority (catch-ups are pulls), a shed read closes with 1013 (the
    client resumes from its cursor later), a crash is logged (and so reported to Sentry by
    its logging integration) and closes with 1011."""
    websocket = WebSocket(scope, receive, send)
    priority = request_priority.set(Priority.LOW)
    try:
        await run_session(websocket, scope["app"].state.services)
    except FreshRootsError as error:
        with contextlib.suppress(Exception):  # the client may be gone already
            await websocket.close(*close_for(error))
    except Exception:
        log.exception("live socket failed", extra={"path": scope.get("path")})
        with contextlib.suppress(Exception):
            await websocket.close(*close_for(None))
    finally:
        request_priority.reset(priority)
