"""Pure ASGI middleware: request ids and logs, body limits and gzip bodies, compression,
security headers. Pure ASGI (not BaseHTTPMiddleware) so WebSockets and streaming pass through
untouched and nothing is buffered that need not be."""

from __future__ import annotations

import gzip
import itertools
import logging
import secrets
import time
import zlib
from typing import Any

import brotli
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sync_server.errors import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_response,
)
from sync_server.metrics import Metrics

access_log = logging.getLogger("freshroots.access")

COMPRESSIBLE = ("application/json", "text/", "application/javascript", "image/svg+xml")
MIN_COMPRESS_BYTES = 512


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
NO_STORE = (b"cache-control", b"no-store")


class RequestEdgeMiddleware:
    """Per request: an id, security headers, and one structured access-log line
    (method, route, status, duration, request id, user id)."""

    def __init__(
        self,
        app: ASGIApp,
        dashboard_csp: str = "default-src 'self'",
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
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
        started = time.perf_counter()
        status = 500
        api = scope["path"].startswith("/api")
        dashboard = scope["path"].startswith("/admin")

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [pair for pair in SECURITY_HEADERS if pair[0] not in present]
                if api and b"cache-control" not in present:
                    headers.append(NO_STORE)
                if dashboard:
                    headers.append(self.dashboard_csp)
                headers.append((b"x-request-id", state["request_id"].encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            if self.metrics is not None:
                # The route template, never the raw path: ids would explode label cardinality.
                self.metrics.observe(
                    scope["method"],
                    getattr(route, "path", "unmatched"),
                    status,
                    time.perf_counter() - started,
                )
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": getattr(route, "path", None),
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        "request_id": state["request_id"],
                        "user_id": state.get("user_id"),
                    },
                )


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
        if b"%00" in scope.get("query_string", b""):  # no database text may hold NUL
            await error_response(
                BadRequest("Parameters must not contain NUL characters.", code="invalid_parameter")
            )(scope, receive, send)
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
            # Small or streamed bodies (most pulls are empty) pass without parsing headers.
            eligible = not message.get("more_body", False) and len(body) >= MIN_COMPRESS_BYTES
            headers = MutableHeaders(scope=start) if eligible else None
            if headers is not None and (
                "content-encoding" not in headers
                and headers.get("content-type", "").startswith(COMPRESSIBLE)
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
