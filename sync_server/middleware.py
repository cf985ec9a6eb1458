"""Pure ASGI middleware: request ids and logs, admission, body limits and gzip bodies,
compression, security headers. Pure ASGI (not BaseHTTPMiddleware) so WebSockets and streaming
pass through untouched and nothing is buffered that need not be."""

from __future__ import annotations

import asyncio
import collections
import gzip
import itertools
import logging
import secrets
import time
import zlib
from dataclasses import dataclass
from typing import Any

import brotli
import orjson
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from storage.admission import Overloaded, Priority, request_priority
from sync_server.errors import error_response
from sync_server.logs import AccessLog
from sync_server.metrics import Metrics

access_log = AccessLog("freshroots.access")
log = logging.getLogger("freshroots.admission")

COMPRESSIBLE = ("application/json", "text/", "application/javascript", "image/svg+xml")
MIN_COMPRESS_BYTES = 512


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
SECURITY_HEADER_NAMES = frozenset(name for name, _ in SECURITY_HEADERS)
NO_STORE = (b"cache-control", b"no-store")

# Low priority: reads a phone repeats anyway, shed before pushes, admin actions, auth and
# webhooks (see storage/admission.py). By method and path, so no route has to declare it.
PULL_PATH = "/api/sync/pull"
LOW_PRIORITY_PATHS = frozenset(
    {PULL_PATH, "/api/sync/watermelon", "/api/sync/snapshot", "/api/listings"}
)
LOW_PRIORITY_PREFIX = "/api/listings/"
# The end of a pull that changed nothing (`changes` is the last key; see routes/sync.py).
EMPTY_PULL_TAIL = b'"more":false,"reset":false,"changes":{}}'
SHED_BODY = orjson.dumps(
    {"error": {"code": Overloaded.code, "message": Overloaded.default_message}}
)
SHED_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(SHED_BODY)).encode()),
    (b"retry-after", b"1"),
    NO_STORE,
    *SECURITY_HEADERS,
]
SHED_LOG_SECONDS = 10.0
# Loop-lag shedding (EdgeAdmission): how often the lag is measured, and how many requests
# must be in flight before a lagging loop sheds (with fewer, they are not what slows it).
LAG_TICK_SECONDS = 0.02
LAG_TICKS_SUSTAINED = 3
LAGGING_MIN_IN_FLIGHT = 8


# No database text may hold NUL: a query parameter carrying one is refused at the edge.
NUL_PARAMETER = BadRequest("Parameters must not contain NUL characters.", code="invalid_parameter")


def has_nul_parameter(scope: Scope) -> bool:
    return b"%00" in scope.get("query_string", b"")


def is_low_priority(method: str, path: str) -> bool:
    return (method == "GET" or method == "HEAD") and (
        path in LOW_PRIORITY_PATHS or path.startswith(LOW_PRIORITY_PREFIX)
    )


@dataclass
class EdgeAdmission:
    """The edge's share of admission control: which low-priority HTTP requests are answered
    503 at once, before any work.

    Pulls that need no database (the cached-heads fast path, the shared tail) are bounded
    here and nowhere else: 1,500 phones pulling back to back would otherwise keep the event
    loop busy enough to starve admin edits and pushes of it. A count alone cannot tell that
    apart from a harmless burst (sixty phones whose timers fired in the same 20 ms are sixty
    requests in flight and 10 ms of work), so the signal is the event loop's lag — how late
    a timer fires, i.e. how long work waits for the loop (`watch_loop`) — as CoDel sheds on
    how long packets wait, not on how many there are. A request is shed when the loop lags
    past `lag_limit` with more than a few in flight, or when `max_in_flight` are (0 = no
    cap), which bounds memory whatever the lag says."""

    max_in_flight: int = 0
    lag_limit: float = 0.05
    in_flight: int = 0
    lag: float = 0.0
    shed_unlogged: int = 0
    log_after: float = 0.0

    def full(self) -> bool:
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            return True
        return self.lag > self.lag_limit and self.in_flight >= LAGGING_MIN_IN_FLIGHT

    async def watch_loop(self, every: float = LAG_TICK_SECONDS) -> None:
        """Measure the loop's lag forever: the least of the last few ticks' delays. A loop
        that is behind is late on every tick; one long pause (a garbage collection, a big
        page) makes one tick late and is not overload, so it sheds nothing."""
        loop = asyncio.get_running_loop()
        recent = collections.deque([0.0] * LAG_TICKS_SUSTAINED, maxlen=LAG_TICKS_SUSTAINED)
        while True:
            planned = loop.time() + every
            await asyncio.sleep(every)
            recent.append(max(0.0, loop.time() - planned))
            self.lag = min(recent)


class RequestEdgeMiddleware:
    """Per request: an id, security headers, admission (priority, low-priority in-flight cap)
    and one structured access-log line (method, route, status, duration, request id, user id).

    Polls that changed nothing (any 304, and a 200 pull with no changes) are logged at DEBUG:
    at phone scale they are most requests, say nothing the metrics do not count
    (`freshroots_responses_total` by route and status), and a line each would cost the
    cheapest request a sizeable share of its time; nginx setups drop 304s the same way. Every
    other request is logged at INFO, written cheaply (`sync_server.logs.AccessLog`)."""

    def __init__(
        self,
        app: ASGIApp,
        dashboard_csp: str = "default-src 'self'",
        metrics: Metrics | None = None,
        admission: EdgeAdmission | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.admission = admission or EdgeAdmission()
        self.dashboard_csp = (b"content-security-policy", dashboard_csp.encode())
        # Unique across instances (random per process) and cheap per request (a counter, not
        # a urandom call on every empty pull).
        self._id_prefix = secrets.token_hex(4)
        self._id_counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:64]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id or f"{self._id_prefix}{next(self._id_counter):08x}"
        path = scope["path"]
        low = is_low_priority(scope["method"], path)
        if low:
            admission = self.admission
            if admission.full():
                await self._shed(send, state["request_id"])
                return
            admission.in_flight += 1
            priority = request_priority.set(Priority.LOW)
        started = time.perf_counter()
        status = 500
        quiet = False  # a poll that changed nothing
        counted = low  # in the edge's in-flight count until its answer is handed over
        api = path.startswith("/api")
        dashboard = path.startswith("/admin")

        async def send_with_headers(message: Message) -> None:
            nonlocal status, quiet, counted
            if (
                counted
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                # Out of the count before the last write: the client's next request on this
                # connection can arrive while this task is still unwinding, and must not find
                # its own previous request counted (32 clients would then shed at a cap of 32).
                counted = False
                self.admission.in_flight -= 1
            if message["type"] == "http.response.start":
                status = message["status"]
                quiet = status == 304
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                if present.isdisjoint(SECURITY_HEADER_NAMES):  # nearly always: all at once
                    headers += SECURITY_HEADERS
                else:
                    headers += [pair for pair in SECURITY_HEADERS if pair[0] not in present]
                if api and b"cache-control" not in present:
                    headers.append(NO_STORE)
                if dashboard:
                    headers.append(self.dashboard_csp)
                headers.append((b"x-request-id", state["request_id"].encode("latin-1")))
                message = {**message, "headers": headers}
            elif status == 200 and path == PULL_PATH and message["type"] == "http.response.body":
                quiet = message.get("body", b"").endswith(EMPTY_PULL_TAIL)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if counted:
                self.admission.in_flight -= 1
            if low:
                request_priority.reset(priority)
            route = scope.get("route")
            if self.metrics is not None:
                # The route template, never the raw path: ids would explode label cardinality.
                self.metrics.observe(
                    scope["method"],
                    getattr(route, "path", "unmatched"),
                    status,
                    time.perf_counter() - started,
                )
            level = logging.DEBUG if quiet else logging.INFO
            if access_log.enabled(level):
                access_log.write(
                    level,
                    {
                        "method": scope["method"],
                        "path": path,
                        "route": getattr(route, "path", None),
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        "request_id": state["request_id"],
                        "user_id": state.get("user_id"),
                    },
                )

    async def _shed(self, send: Send, request_id: str) -> None:
        """503 before any work: no routing, no authentication, no access line (under overload
        a line per refusal would add to it); counted, and summarised in a warning at most
        every SHED_LOG_SECONDS."""
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [*SHED_HEADERS, (b"x-request-id", request_id.encode("latin-1"))],
            }
        )
        await send({"type": "http.response.body", "body": SHED_BODY})
        if self.metrics is not None:
            self.metrics.count_shed("edge", "low")
        admission = self.admission
        admission.shed_unlogged += 1
        now = time.monotonic()
        if now >= admission.log_after:
            log.warning(
                "overloaded: answering low-priority requests 503",
                extra={
                    "shed": admission.shed_unlogged,
                    "in_flight": admission.in_flight,
                    "loop_lag_ms": round(admission.lag * 1000, 1),
                },
            )
            admission.shed_unlogged = 0
            admission.log_after = now + SHED_LOG_SECONDS


class BodyMiddleware:
    """Cap request bodies (413) and inflate `Content-Encoding: gzip` ones, also capped."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, encoding = None, "identity"
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value.decode("latin-1")
            elif name == b"content-encoding":
                encoding = value.decode("latin-1").strip().lower()
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(PayloadTooLarge())(scope, receive, send)
            return
        if has_nul_parameter(scope):
            await error_response(NUL_PARAMETER)(scope, receive, send)
            return
        if encoding not in ("identity", "gzip"):
            await error_response(UnsupportedMediaType("Content-Encoding must be gzip."))(
                scope, receive, send
            )
            return

        if encoding == "identity":
            await self.app(scope, self._capped(receive), send)
            return
        raw = bytearray()
        async for chunk in _chunks(receive):
            raw += chunk
            if len(raw) > self.max_bytes:
                await error_response(PayloadTooLarge())(scope, receive, send)
                return
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(bytes(raw), self.max_bytes + 1)
            if inflater.unconsumed_tail or len(body) > self.max_bytes:
                await error_response(PayloadTooLarge("The inflated body is too large."))(
                    scope, receive, send
                )
                return
        except zlib.error:
            await error_response(
                UnsupportedMediaType("The body is not valid gzip.", code="invalid_gzip")
            )(scope, receive, send)
            return
        scope = dict(scope)
        scope["headers"] = [
            (name, value)
            for name, value in scope["headers"]
            if name not in (b"content-encoding", b"content-length")
        ] + [(b"content-length", str(len(body)).encode())]
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _capped(self, receive: Receive) -> Receive:
        received = 0

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge()
            return message

        return capped


async def _chunks(receive: Receive) -> Any:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


class CompressionMiddleware:
    """br or gzip for whole (non-streamed) responses above a few hundred bytes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accepted = ""
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                accepted = value.decode("latin-1").lower()
        encoding = "br" if "br" in accepted else "gzip" if "gzip" in accepted else None
        if encoding is None:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        passthrough = False

        async def compressing_send(message: Message) -> None:
            nonlocal start, passthrough
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or passthrough:
                await send(message)
                return
            assert start is not None
            body = message.get("body", b"")
            # Small or streamed bodies (most pulls are empty) pass without parsing headers, and
            # so do bodies compressed already (shared pull pages are, once for every phone).
            eligible = (
                not message.get("more_body", False)
                and len(body) >= MIN_COMPRESS_BYTES
                and not any(name == b"content-encoding" for name, _ in start.get("headers", ()))
            )
            headers = MutableHeaders(scope=start) if eligible else None
            if headers is not None and (
                "content-encoding" not in headers
                and headers.get("content-type", "").startswith(COMPRESSIBLE)
                # A range is a slice of one representation; no-transform asks for the bytes
                # as they are (the catalogue snapshot's identity variant).
                and "content-range" not in headers
                and "no-transform" not in headers.get("cache-control", "")
            ):
                body = (
                    brotli.compress(body, quality=5)
                    if encoding == "br"
                    else gzip.compress(body, compresslevel=6, mtime=0)
                )
                headers["content-encoding"] = encoding
                headers["content-length"] = str(len(body))
                headers.append("vary", "Accept-Encoding")
                message = {**message, "body": body}
            else:
                passthrough = True
            await send(start)
            await send(message)

        await self.app(scope, receive, compressing_send)
